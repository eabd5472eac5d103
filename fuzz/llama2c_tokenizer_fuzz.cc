// Fuzzes the llama2.c tokenizer.bin loader, then encodes and decodes with what it accepted.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/tokenizer/tokenizer_llama2c.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto t = quantd::model::Llama2cTokenizer::Parse(
      std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.bin");
  if (!t.ok()) return 0;
  for (std::string_view text : {"", "Once upon a time, \xE6\x97\xA5 \xF0\x9F\x98\x80!", "\xFF\xC3 x"}) {
    auto ids = (*t)->Encode(text, true);
    if (!ids.ok()) __builtin_trap();
    for (int32_t id : *ids) {
      if (id < 0 || id >= (*t)->vocab_size()) __builtin_trap();
    }
    if (!(*t)->Decode(*ids).ok()) __builtin_trap();
  }
  return 0;
}
