// Writing GGUF v3 files (docs/formats/gguf.md): typed metadata, then a tensor directory, then the
// tensor data, each tensor at a multiple of general.alignment (32). The writer stores tensor
// bytes as given; ggml block encodings are the caller's (engine/artifact/export_gguf.h).
// Thread-safety: a GgufWriter is a value; not thread-safe.
#ifndef QUANTD_ENGINE_FORMAT_GGUF_WRITER_H_
#define QUANTD_ENGINE_FORMAT_GGUF_WRITER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/format/gguf.h"

namespace quantd::model {

class GgufWriter {
 public:
  // Metadata, written in call order. A key set twice is written twice (GgufFile rejects that):
  // callers set each key once.
  void SetU32(const std::string& key, uint32_t v);
  void SetI32(const std::string& key, int32_t v);
  void SetF32(const std::string& key, float v);
  void SetBool(const std::string& key, bool v);
  void SetString(const std::string& key, const std::string& v);
  void SetStringArray(const std::string& key, const std::vector<std::string>& v);
  void SetF32Array(const std::string& key, const std::vector<float>& v);
  void SetI32Array(const std::string& key, const std::vector<int32_t>& v);

  // `ne` in GGUF order (ne[0] fastest: [in, out] for a row-major [out][in] matrix); `data` is
  // the encoded tensor (GgmlBlockBytes per GgmlBlockSize elements).
  void AddTensor(const std::string& name, std::vector<int64_t> ne, GgmlType type, std::string data);

  // The whole file. INVALID_ARGUMENT when a tensor's byte count does not match its shape and type
  // or ne[0] is not a multiple of the type's block size.
  absl::StatusOr<std::string> Build() const;
  // Build() written to `path` atomically (temp file, fsync, rename).
  absl::Status WriteFile(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    std::vector<int64_t> ne;
    GgmlType type;
    std::string data;
  };
  void Key(const std::string& key, GgufValueType t);

  std::string kv_;
  uint64_t n_kv_ = 0;
  std::vector<Tensor> tensors_;
};

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_FORMAT_GGUF_WRITER_H_
