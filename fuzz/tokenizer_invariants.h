// What every tokenizer fuzzer checks on the texts it encodes: Encode succeeds, every id lies in
// [0, vocab_size()), and Decode of those ids succeeds. A violation traps (the fuzzer's crash).
// Thread-safety: as the tokenizer's const methods.
#ifndef QUANTD_FUZZ_TOKENIZER_INVARIANTS_H_
#define QUANTD_FUZZ_TOKENIZER_INVARIANTS_H_

#include <cstdint>
#include <string_view>

#include "engine/tokenizer/tokenizer.h"

namespace quantd::fuzz {

inline void CheckEncodeDecode(const model::Tokenizer& t, std::string_view text, bool bos) {
  auto ids = t.Encode(text, bos);
  if (!ids.ok()) __builtin_trap();
  for (int32_t id : *ids) {
    if (id < 0 || id >= t.vocab_size()) __builtin_trap();
  }
  if (!t.Decode(*ids).ok()) __builtin_trap();
}

}  // namespace quantd::fuzz

#endif  // QUANTD_FUZZ_TOKENIZER_INVARIANTS_H_
