// Fuzzes the tokenizer.json loader (HfTokenizer::Parse); an accepted tokenizer then encodes and
// decodes a fixed text and must return only ids inside its vocabulary.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/tokenizer/tokenizer_hf.h"
#include "fuzz/tokenizer_invariants.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto t = quantd::model::HfTokenizer::Parse(
      std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.json");
  if (!t.ok()) return 0;
  for (std::string_view text :
       {"", " Hello  world's 123 <s>\n\n\t", "caf\xC3\xA9 \xE6\x97\xA5\xF0\x9F\x98\x80 \xFF"}) {
    for (bool bos : {false, true}) quantd::fuzz::CheckEncodeDecode(**t, text, bos);
  }
  return 0;
}
