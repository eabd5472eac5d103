#include "engine/format/gguf_writer.h"

#include <cstring>

#include "common/file_util.h"
#include "common/status_macros.h"
#include "common/str_util.h"

namespace quantd::model {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr uint32_t kVersion = 3;
constexpr uint64_t kAlignment = 32;      // GGUF_DEFAULT_ALIGNMENT

template <typename T>
void Put(std::string* s, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  s->append(b, sizeof(T));
}
void PutStr(std::string* s, const std::string& v) {
  Put<uint64_t>(s, v.size());
  s->append(v);
}
template <typename T>
void PutArray(std::string* s, GgufValueType t, const std::vector<T>& v) {
  Put<uint32_t>(s, static_cast<uint32_t>(t));
  Put<uint64_t>(s, v.size());
  for (const T& x : v) Put(s, x);
}
uint64_t AlignUp(uint64_t x) { return (x + kAlignment - 1) / kAlignment * kAlignment; }

}  // namespace

void GgufWriter::Key(const std::string& key, GgufValueType t) {
  PutStr(&kv_, key);
  Put<uint32_t>(&kv_, static_cast<uint32_t>(t));
  ++n_kv_;
}

void GgufWriter::SetU32(const std::string& key, uint32_t v) { Key(key, GgufValueType::kU32); Put(&kv_, v); }
void GgufWriter::SetI32(const std::string& key, int32_t v) { Key(key, GgufValueType::kI32); Put(&kv_, v); }
void GgufWriter::SetF32(const std::string& key, float v) { Key(key, GgufValueType::kF32); Put(&kv_, v); }
void GgufWriter::SetBool(const std::string& key, bool v) {
  Key(key, GgufValueType::kBool);
  Put<uint8_t>(&kv_, v ? 1 : 0);
}
void GgufWriter::SetString(const std::string& key, const std::string& v) {
  Key(key, GgufValueType::kString);
  PutStr(&kv_, v);
}
void GgufWriter::SetStringArray(const std::string& key, const std::vector<std::string>& v) {
  Key(key, GgufValueType::kArray);
  Put<uint32_t>(&kv_, static_cast<uint32_t>(GgufValueType::kString));
  Put<uint64_t>(&kv_, v.size());
  for (const std::string& x : v) PutStr(&kv_, x);
}
void GgufWriter::SetF32Array(const std::string& key, const std::vector<float>& v) {
  Key(key, GgufValueType::kArray);
  PutArray(&kv_, GgufValueType::kF32, v);
}
void GgufWriter::SetI32Array(const std::string& key, const std::vector<int32_t>& v) {
  Key(key, GgufValueType::kArray);
  PutArray(&kv_, GgufValueType::kI32, v);
}

void GgufWriter::AddTensor(const std::string& name, std::vector<int64_t> ne, GgmlType type,
                           std::string data) {
  tensors_.push_back({name, std::move(ne), type, std::move(data)});
}

absl::StatusOr<std::string> GgufWriter::Build() const {
  std::string out;
  Put<uint32_t>(&out, kMagic);
  Put<uint32_t>(&out, kVersion);
  Put<uint64_t>(&out, tensors_.size());
  Put<uint64_t>(&out, n_kv_);
  out += kv_;
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    int64_t n = 1;
    for (int64_t d : t.ne) n *= d;
    const int64_t bs = GgmlBlockSize(t.type);
    if (t.ne.empty() || t.ne[0] % bs != 0 ||
        static_cast<uint64_t>(n / bs * GgmlBlockBytes(t.type)) != t.data.size()) {
      return absl::InvalidArgumentError(internal::Cat(
          "GGUF tensor ", t.name, ": ", t.data.size(), " bytes do not encode ", n, " elements of ",
          GgmlTypeName(static_cast<uint32_t>(t.type)), " (rows of ", t.ne.empty() ? 0 : t.ne[0], ")"));
    }
    PutStr(&out, t.name);
    Put<uint32_t>(&out, static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) Put<uint64_t>(&out, static_cast<uint64_t>(d));
    Put<uint32_t>(&out, static_cast<uint32_t>(t.type));
    Put<uint64_t>(&out, offset);
    offset = AlignUp(offset + t.data.size());
  }
  out.resize(AlignUp(out.size()), '\0');
  const size_t data_start = out.size();
  for (const Tensor& t : tensors_) {
    out += t.data;
    out.resize(data_start + AlignUp(out.size() - data_start), '\0');
  }
  return out;
}

absl::Status GgufWriter::WriteFile(const std::string& path) const {
  QUANTD_ASSIGN_OR_RETURN(std::string bytes, Build());
  return WriteFileAtomic(path, bytes);
}

}  // namespace quantd::model
