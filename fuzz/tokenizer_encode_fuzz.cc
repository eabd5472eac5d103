// Fuzzes HfTokenizer::Encode / Decode on arbitrary text with the five fixture tokenizers
// (engine/tokenizer/testdata/tokenizers). Byte-level ones must round-trip valid UTF-8 exactly
// (encoded without special tokens).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/tokenizer/tokenizer_hf.h"
#include "engine/tokenizer/unicode_props.h"
#include "fuzz/tokenizer_invariants.h"

namespace {

struct Loaded {
  std::unique_ptr<quantd::model::HfTokenizer> tok;
  bool byte_level;
};

std::vector<Loaded>* Tokenizers() {
  static auto* v = [] {
    auto* out = new std::vector<Loaded>();
    const std::string dir = std::string(QUANTD_SOURCE_DIR) + "/engine/tokenizer/testdata/tokenizers/";
    for (const char* name : {"gpt2_bytelevel", "smollm2_digits", "llama3_split", "llama_sp_bpe",
                             "mistral_metaspace"}) {
      auto t = quantd::model::HfTokenizer::Load(dir + name + ".tokenizer.json");
      if (!t.ok()) __builtin_trap();
      out->push_back({std::move(*t), std::string_view(name).find("llama_sp") == 0 ||
                                             std::string_view(name).find("mistral") == 0
                                         ? false
                                         : true});
    }
    return out;
  }();
  return v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const bool valid_utf8 = quantd::model::Utf8Lossy(text) == text;
  for (const Loaded& l : *Tokenizers()) {
    quantd::fuzz::CheckEncodeDecode(*l.tok, text, true);
    // Without special tokens, byte-level BPE is lossless, except that the lstrip added token
    // <|user|> of llama3_split absorbs the whitespace before it.
    if (l.byte_level && valid_utf8 && text.find("<|user|>") == std::string_view::npos) {
      auto plain = l.tok->Encode(text, false);
      if (!plain.ok()) __builtin_trap();
      auto back = l.tok->Decode(*plain);
      if (!back.ok() || *back != text) __builtin_trap();
    }
  }
  return 0;
}
