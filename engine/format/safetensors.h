// Reading and writing the safetensors tensor container (docs/formats/safetensors.md).
//
// SafetensorsFile memory-maps a file and validates its JSON header strictly before exposing
// any tensor: every entry must have a known dtype, non-negative dims, a byte range that equals
// shape x dtype size, lies inside the data section and overlaps no other tensor.
// Thread-safety: a SafetensorsFile is immutable after Open() and safe to share between threads.
// TensorViews point into the mapping and are valid while the file object lives.
#ifndef QUANTD_ENGINE_FORMAT_SAFETENSORS_H_
#define QUANTD_ENGINE_FORMAT_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/format/tensor_index.h"

namespace quantd::model {

enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU64, kU32, kU16, kU8, kBool };

// "F32" -> kF32 etc. (safetensors spelling). INVALID_ARGUMENT naming the string otherwise.
absl::StatusOr<DType> ParseDType(std::string_view s);
std::string_view DTypeName(DType d);  // "F32", ...
size_t DTypeSize(DType d);            // bytes per element

// One tensor inside a file. `data` is the raw little-endian bytes, row-major.
struct TensorView {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::string_view data;
};

class SafetensorsFile {
 public:
  // Maps and validates `path`. NOT_FOUND if absent; INVALID_ARGUMENT (naming the file, the
  // tensor and the bad value) for any malformed header.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // Validates a safetensors image in memory (fuzzing, tests). `bytes` is not copied and must
  // outlive the returned object; `label` stands for the file name in error messages.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Parse(std::string_view bytes,
                                                                std::string label = "<memory>");
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  std::vector<std::string> Names() const;                        // sorted
  absl::StatusOr<TensorView> Get(std::string_view name) const;  // NOT_FOUND if absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

 private:
  struct Entry {
    DType dtype;
    std::vector<int64_t> shape;
    uint64_t begin, end;  // relative to the data section
  };
  SafetensorsFile() = default;
  // Validates the header of the image at `base` (map_size_ bytes) and fills the entries.
  absl::Status Validate(const char* base);

  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const char* data_ = nullptr;  // start of the data section
  TensorIndex<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Drops this process's resident pages of a memory-mapped range (whole pages inside it; the file
// stays in the page cache and later reads fault them back in). For streaming readers of large
// files, so that RSS holds what is being worked on, not everything read so far.
void ReleasePages(std::string_view mapped_bytes);

struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::string data;  // raw little-endian bytes; size must equal prod(shape) * DTypeSize(dtype)
};

// Writes atomically (temp + fsync + rename), header sorted by name and space-padded to 8 bytes,
// metadata gets "format":"pt". INVALID_ARGUMENT for duplicate names, negative dims or a data
// size that does not match the shape.
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// A tensor's name, dtype and shape, without its bytes.
struct TensorDecl {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
};

// Writes a safetensors file whose tensors are declared up front and whose bytes arrive one
// tensor at a time, so that a writer holds one tensor, not the file (per-layer Hessian shards,
// streamed artifacts). The header is WriteSafetensors' (keys sorted, space-padded to 8 bytes,
// "format":"pt"); the data section is in declaration order. The file appears at `path` only on
// Finish() (temp + fsync + rename + directory fsync); a writer destroyed before that removes
// its temp file.
// Thread-safety: not thread-safe.
class SafetensorsWriter {
 public:
  // INVALID_ARGUMENT for a bad or duplicate name or a bad shape; INTERNAL/RESOURCE_EXHAUSTED
  // when the temp file cannot be written.
  static absl::StatusOr<std::unique_ptr<SafetensorsWriter>> Create(
      const std::string& path, std::vector<TensorDecl> decls,
      const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // The bytes of the next declared tensor. FAILED_PRECONDITION for another name,
  // INVALID_ARGUMENT for a size that does not match its shape.
  absl::Status Append(std::string_view name, std::string_view bytes);
  // A piece of the next declared tensor's bytes; the tensor is done when its pieces add up to
  // its size (a writer of a multi-GB embedding holds a block of rows, not the tensor).
  // FAILED_PRECONDITION for another name, INVALID_ARGUMENT when the pieces would exceed it.
  absl::Status AppendPart(std::string_view name, std::string_view bytes);
  // FAILED_PRECONDITION when declared tensors are missing.
  absl::Status Finish();

 private:
  SafetensorsWriter() = default;
  absl::Status Write(std::string_view bytes);
  // Append (`whole`: the bytes are all of the tensor) or AppendPart.
  absl::Status Put(std::string_view name, std::string_view bytes, bool whole);

  std::string path_, tmp_;
  int fd_ = -1;
  bool done_ = false;
  std::vector<TensorDecl> decls_;
  std::vector<uint64_t> sizes_;
  size_t next_ = 0;
  uint64_t partial_ = 0;  // bytes of decls_[next_] written by AppendPart so far
};

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_FORMAT_SAFETENSORS_H_
