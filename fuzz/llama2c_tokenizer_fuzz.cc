// Fuzzes the llama2.c tokenizer.bin loader, then encodes and decodes with what it accepted.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/tokenizer/tokenizer_llama2c.h"
#include "fuzz/tokenizer_invariants.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto t = quantd::model::Llama2cTokenizer::Parse(
      std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.bin");
  if (!t.ok()) return 0;
  for (std::string_view text : {"", "Once upon a time, \xE6\x97\xA5 \xF0\x9F\x98\x80!", "\xFF\xC3 x"}) {
    quantd::fuzz::CheckEncodeDecode(**t, text, true);
  }
  return 0;
}
