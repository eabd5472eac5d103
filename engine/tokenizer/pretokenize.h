// Splitting text the way Hugging Face `tokenizers` pre-tokenizers do, without a regex engine:
// hand-written scanners equivalent to the few Split regexes real tokenizer.json files use
// (GPT-2, Llama 3 / Qwen2, digit patterns), plus the split behaviours (Isolated, Removed, ...).
// std::regex has no \p{L}/\p{N}; the scanners use unicode_props.h.
// Thread-safety: stateless functions, thread-safe.
#ifndef QUANTD_ENGINE_TOKENIZER_PRETOKENIZE_H_
#define QUANTD_ENGINE_TOKENIZER_PRETOKENIZE_H_

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace quantd::model {

enum class SplitPattern {
  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kGpt2,
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
  // \s*[\r\n]+|\s+(?!\S)|\s+   (Llama 3; Qwen2 is the same with \p{N} instead of \p{N}{1,3})
  kLlama3,
  kQwen2,
  kDigit,      // \p{N}
  kDigitRun,   // \p{N}+
  kDigits1to3, // \p{N}{1,3}
  kLiteral,    // a plain string (tokenizer.json {"String": ...})
};

// Maps a tokenizer.json Split regex to its scanner; false if the pattern is not one of the
// supported ones (exact string match).
bool ParseSplitRegex(std::string_view regex, SplitPattern* out);

// Non-overlapping [begin, end) byte ranges of the matches of `p` in `text`, left to right, as
// Rust/Oniguruma find_iter would report them. `literal` is used only for kLiteral (an empty
// literal matches nothing). Bytes that are not valid UTF-8 count as one non-letter,
// non-number, non-space character each.
std::vector<std::pair<size_t, size_t>> FindMatches(SplitPattern p, std::string_view literal,
                                                   std::string_view text);

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Splits `text` at `matches` (from FindMatches) like tokenizers' NormalizedString::split:
// returns the non-empty pieces as [begin, end) byte ranges. `invert` swaps matches and gaps.
std::vector<std::pair<size_t, size_t>> SplitAt(std::string_view text,
                                               const std::vector<std::pair<size_t, size_t>>& matches,
                                               SplitBehavior behavior, bool invert);

// Pieces of `text` at runs of numeric characters (\p{N}); each numeric character alone when
// `individual` (tokenizers' Digits pre-tokenizer). Non-empty [begin, end) ranges.
std::vector<std::pair<size_t, size_t>> SplitDigits(std::string_view text, bool individual);

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_TOKENIZER_PRETOKENIZE_H_
