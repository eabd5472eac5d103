// Test-only GGUF writer: builds GGUF v3 images byte by byte so tests control every field,
// including invalid ones (offset overrides, wrong counts). Not a production writer.
// Thread-safety: not thread-safe (test-only).
#ifndef QUANTD_ENGINE_FORMAT_GGUF_TEST_UTIL_H_
#define QUANTD_ENGINE_FORMAT_GGUF_TEST_UTIL_H_

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "engine/format/gguf.h"

namespace quantd::model::testing {

class GgufBuilder {
 public:
  template <typename T>
  static void Put(std::string* s, T v) {
    char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    s->append(b, sizeof(T));
  }
  static void PutStr(std::string* s, const std::string& v) {
    Put<uint64_t>(s, v.size());
    s->append(v);
  }

  // Scalar of a fixed-size type T written as type tag `t` (T must match the tag's width).
  template <typename T>
  GgufBuilder& Scalar(const std::string& key, GgufValueType t, T v) {
    Key(key, t);
    Put(&kv_, v);
    return *this;
  }
  GgufBuilder& String(const std::string& key, const std::string& v) {
    Key(key, GgufValueType::kString);
    PutStr(&kv_, v);
    return *this;
  }
  template <typename T>
  GgufBuilder& Array(const std::string& key, GgufValueType t, const std::vector<T>& v) {
    Key(key, GgufValueType::kArray);
    Put<uint32_t>(&kv_, static_cast<uint32_t>(t));
    Put<uint64_t>(&kv_, v.size());
    for (const T& x : v) Put(&kv_, x);
    return *this;
  }
  GgufBuilder& StringArray(const std::string& key, const std::vector<std::string>& v) {
    Key(key, GgufValueType::kArray);
    Put<uint32_t>(&kv_, static_cast<uint32_t>(GgufValueType::kString));
    Put<uint64_t>(&kv_, v.size());
    for (const std::string& x : v) PutStr(&kv_, x);
    return *this;
  }
  // Appends raw bytes to the key/value section (for malformed entries); counts as one pair.
  GgufBuilder& RawKv(const std::string& bytes) {
    kv_ += bytes;
    ++n_kv_;
    return *this;
  }

  // `ne` in GGUF order (ne[0] fastest); `data` the raw bytes. `offset` overrides the computed
  // (aligned, packed) offset.
  GgufBuilder& Tensor(const std::string& name, std::vector<int64_t> ne, uint32_t type,
                      std::string data, std::optional<uint64_t> offset = std::nullopt) {
    tensors_.push_back({name, std::move(ne), type, std::move(data), offset});
    return *this;
  }

  std::string Build(uint64_t alignment = 32, uint32_t version = 3) const {
    std::string out;
    Put<uint32_t>(&out, 0x46554747);
    Put<uint32_t>(&out, version);
    Put<uint64_t>(&out, tensors_.size());
    Put<uint64_t>(&out, n_kv_);
    out += kv_;
    std::string data;
    for (const T& t : tensors_) {
      data.append((alignment - data.size() % alignment) % alignment, '\0');
      PutStr(&out, t.name);
      Put<uint32_t>(&out, static_cast<uint32_t>(t.ne.size()));
      for (int64_t n : t.ne) Put<int64_t>(&out, n);
      Put<uint32_t>(&out, t.type);
      Put<uint64_t>(&out, t.offset.value_or(data.size()));
      data += t.data;
    }
    out.append((alignment - out.size() % alignment) % alignment, '\0');
    return out + data;
  }

 private:
  struct T {
    std::string name;
    std::vector<int64_t> ne;
    uint32_t type;
    std::string data;
    std::optional<uint64_t> offset;
  };
  void Key(const std::string& key, GgufValueType t) {
    PutStr(&kv_, key);
    Put<uint32_t>(&kv_, static_cast<uint32_t>(t));
    ++n_kv_;
  }
  std::string kv_;
  uint64_t n_kv_ = 0;
  std::vector<T> tensors_;
};

// Raw little-endian bytes of a float vector (for F32 tensors).
inline std::string F32Bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

}  // namespace quantd::model::testing

#endif  // QUANTD_ENGINE_FORMAT_GGUF_TEST_UTIL_H_
