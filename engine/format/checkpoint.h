// A Hugging Face model directory's weights: either one model.safetensors or shards listed in
// model.safetensors.index.json ("weight_map": tensor name -> shard file in the same directory).
// Thread-safety: immutable after Open(); safe to share between threads. TensorViews point into
// the memory-mapped shards and live as long as the Checkpoint.
#ifndef QUANTD_ENGINE_FORMAT_CHECKPOINT_H_
#define QUANTD_ENGINE_FORMAT_CHECKPOINT_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/matrix.h"
#include "engine/format/safetensors.h"

namespace quantd::model {

// Converts `count` elements of a F64/F32/F16/BF16 tensor starting at element `first` to fp32.
// INVALID_ARGUMENT for other dtypes or a range outside the tensor's bytes.
absl::Status ConvertToF32(const TensorView& t, int64_t first, int64_t count, float* out);

class Checkpoint {
 public:
  // Opens `dir` (or a single .safetensors file path). NOT_FOUND if neither file exists;
  // INVALID_ARGUMENT for a malformed index (shard names with '/', tensors missing from the
  // named shard) or malformed shards.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  std::vector<std::string> Names() const;                        // sorted
  absl::StatusOr<TensorView> Get(std::string_view name) const;  // NOT_FOUND if absent

  // Converts a F64/F32/F16/BF16 tensor to fp32: 2-D [r,c] -> r x c, 1-D [n] -> 1 x n.
  // INVALID_ARGUMENT for other dtypes or ranks.
  absl::StatusOr<MatrixF> ReadMatrix(std::string_view name) const;

  // Rows [begin, begin + count) of a 2-D F64/F32/F16/BF16 tensor as fp32, into `out`
  // (resized to count x cols). INVALID_ARGUMENT for another rank or dtype or a range outside
  // the tensor; NOT_FOUND if absent.
  absl::Status ReadRows(std::string_view name, int64_t begin, int64_t count, MatrixF* out) const;

  // Drops this process's resident pages of `name`'s bytes (the file stays in the page cache):
  // a layer-streamed reader calls it after converting a tensor so that its RSS holds about one
  // layer of the mapped checkpoint, not all of it. Later reads fault the pages back in.
  void ReleasePages(std::string_view name) const;

 private:
  Checkpoint() = default;
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  TensorIndex<const SafetensorsFile*> where_;
};

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_FORMAT_CHECKPOINT_H_
