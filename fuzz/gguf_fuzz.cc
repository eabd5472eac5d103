// Fuzzes the GGUF reader (GgufFile::Parse): header, metadata, tensor infos.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/format/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto f = quantd::model::GgufFile::Parse(
      std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.gguf");
  if (!f.ok()) return 0;
  size_t n = 0;
  for (const auto& kv : (*f)->metadata()) n += kv.first.size();
  // Small tensors are dequantized too: their byte ranges must lie inside the image.
  for (const auto& t : (*f)->tensors()) {
    if ((*f)->FindTensor(t.name) == nullptr) __builtin_trap();
    if (t.nelements > (1 << 16)) continue;
    auto v = (*f)->Dequantize(t);
    if (!v.ok() || v->size() != static_cast<size_t>(t.nelements)) __builtin_trap();
    n += v->size();
  }
  return n == 0xFFFFFFFF ? 1 : 0;
}
