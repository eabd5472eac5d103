// Fuzzes the safetensors header parser (SafetensorsFile::Parse) and every tensor view it yields.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/format/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto f = quantd::model::SafetensorsFile::Parse(bytes);
  if (!f.ok()) return 0;
  size_t sum = 0;
  for (const std::string& name : (*f)->Names()) {
    auto t = (*f)->Get(name);
    if (!t.ok()) __builtin_trap();  // listed names must resolve
    // Touch the first and last byte: the view must lie inside the input.
    if (!t->data.empty()) sum += static_cast<unsigned char>(t->data.front()) + t->data.back();
  }
  return sum == 0xFFFFFFFF ? 1 : 0;
}
