// Reading GGUF files (llama.cpp's single-file model container, docs/formats/gguf.md): header,
// typed metadata, tensor directory, and dequantization of F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0/Q5_1
// tensors
// to fp32.
//
// GgufFile validates the whole file before exposing anything: magic, version (2 or 3), every
// length against the bytes that remain, tensor ranks, dims and types, alignment, and that every
// tensor's bytes lie inside the data section without overlapping another. Hostile input gets
// INVALID_ARGUMENT naming the file and the field; memory use is bounded by a small multiple of
// the input size.
// Thread-safety: a GgufFile is immutable after Open()/Parse() and safe to share between threads.
#ifndef QUANTD_ENGINE_FORMAT_GGUF_H_
#define QUANTD_ENGINE_FORMAT_GGUF_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace quantd::model {

// Metadata value types, numbered as on disk.
enum class GgufValueType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};
std::string_view GgufValueTypeName(GgufValueType t);  // "u32", "string", ...; "?" if unknown

// One metadata value. Scalars are arrays of length 1 with is_array == false. Integer types and
// bool are widened into `ints` (u64 keeps its bit pattern), f32/f64 into `floats`, strings
// into `strings`; exactly one of the three is filled. Arrays of arrays are rejected.
struct GgufValue {
  GgufValueType type = GgufValueType::kU8;  // element type (never kArray)
  bool is_array = false;
  std::vector<int64_t> ints;
  std::vector<double> floats;
  std::vector<std::string> strings;

  size_t size() const;  // number of elements
};

// Tensor element types (ggml_type numbering). Only these are accepted.
enum class GgmlType : uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kBF16 = 30
};
// Name of any ggml type id, e.g. 12 -> "Q4_K"; "unknown" for ids ggml never defined.
std::string_view GgmlTypeName(uint32_t type);

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // ne[0] varies fastest: ne = [in, out] is the row-major [out][in]
  GgmlType type;
  uint64_t offset = 0;  // relative to the data section, a multiple of the alignment
  uint64_t nbytes = 0;
  int64_t nelements = 0;
};

class GgufFile {
 public:
  // Maps and validates `path`. NOT_FOUND if absent; INVALID_ARGUMENT (naming the file and the
  // field) for anything malformed or unsupported.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Validates a GGUF image in memory (for fuzzing and tests). `bytes` is not copied and must
  // outlive the returned object; `label` stands for the file name in error messages.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Parse(std::string_view bytes,
                                                         std::string label = "<memory>");
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::string& label() const { return label_; }

  // All key/value pairs, sorted by key.
  const std::map<std::string, GgufValue, std::less<>>& metadata() const { return metadata_; }
  const GgufValue* Find(std::string_view key) const;  // nullptr if absent
  // Typed scalar getters: NOT_FOUND if absent, INVALID_ARGUMENT naming the key if the value is
  // an array, has another type, or (GetInt) a u64 above INT64_MAX.
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;      // any integer type
  absl::StatusOr<double> GetFloat(std::string_view key) const;     // f32, f64 or integer
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<bool> GetBool(std::string_view key) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }  // file order
  const GgufTensorInfo* FindTensor(std::string_view name) const;           // nullptr if absent
  // Raw bytes of a tensor (a view into the file).
  std::string_view TensorData(const GgufTensorInfo& t) const;
  // All elements as fp32 in file order (ne[0] fastest). Never fails for a validated file;
  // RESOURCE_EXHAUSTED above 2^31 elements.
  absl::StatusOr<std::vector<float>> Dequantize(const GgufTensorInfo& t) const;

 private:
  GgufFile() = default;
  absl::Status ParseAll();

  std::string label_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::string_view bytes_;
  uint64_t data_start_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::map<std::string, GgufValue, std::less<>> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

// Elements per block and bytes per block of a supported type (F32: 1 and 4; Q4_1: 32 and 20).
int64_t GgmlBlockSize(GgmlType t);
int64_t GgmlBlockBytes(GgmlType t);
// Dequantizes `n` elements (a multiple of the block size) from `src` into `dst`.
// `src` must hold n / block_size * block_bytes bytes.
void DequantizeGgml(GgmlType t, const char* src, int64_t n, float* dst);

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_FORMAT_GGUF_H_
