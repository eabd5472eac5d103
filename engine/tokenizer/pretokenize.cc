#include "engine/tokenizer/pretokenize.h"

#include <algorithm>

#include "engine/tokenizer/unicode_props.h"

namespace quantd::model {
namespace {

constexpr std::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// The text as code points with their byte offsets (off has one extra entry: text.size()).
struct CodePoints {
  std::vector<char32_t> c;
  std::vector<size_t> off;
};

CodePoints Decode(std::string_view text) {
  CodePoints cp;
  cp.c.reserve(text.size());
  cp.off.reserve(text.size() + 1);
  for (size_t pos = 0; pos < text.size();) {
    size_t len;
    cp.off.push_back(pos);
    cp.c.push_back(DecodeUtf8(text, pos, &len));
    pos += len;
  }
  cp.off.push_back(text.size());
  return cp;
}

bool IsL(char32_t c) { return IsUnicodeLetter(c); }
bool IsN(char32_t c) { return IsUnicodeNumber(c); }
bool IsS(char32_t c) { return IsUnicodeWhitespace(c); }
bool IsOther(char32_t c) { return !IsS(c) && !IsL(c) && !IsN(c); }  // [^\s\p{L}\p{N}]

// Length (in code points) of the contraction at i: 's 't 're 've 'm 'll 'd, or 0.
size_t Contraction(const std::vector<char32_t>& c, size_t i, bool ignore_case) {
  if (c[i] != '\'' || i + 1 >= c.size()) return 0;
  auto lower = [&](size_t k) -> char32_t {
    if (k >= c.size()) return 0;
    char32_t x = c[k];
    if (!ignore_case) return x;
    if (x >= 'A' && x <= 'Z') return x + 32;
    if (x == 0x17F) return 's';  // LATIN SMALL LETTER LONG S case-folds to s
    return x;
  };
  const char32_t a = lower(i + 1), b = lower(i + 2);
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  return 0;
}

// End of the run of code points satisfying `pred` starting at i.
template <typename Pred>
size_t RunEnd(const std::vector<char32_t>& c, size_t i, Pred pred) {
  while (i < c.size() && pred(c[i])) ++i;
  return i;
}

// \s+(?!\S)|\s+ at a whitespace character i: the whole run if it ends the text or is a single
// character, else the run minus its last character (which then leads the next token).
size_t WhitespaceTail(const std::vector<char32_t>& c, size_t i) {
  const size_t e = RunEnd(c, i, IsS);
  if (e == c.size() || e - i == 1) return e;
  return e - 1;
}

size_t MatchGpt2(const std::vector<char32_t>& c, size_t i) {
  if (size_t n = Contraction(c, i, false)) return i + n;
  // ' ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+': the optional space binds to the run after it.
  const size_t j = c[i] == ' ' && i + 1 < c.size() && !IsS(c[i + 1]) ? i + 1 : i;
  if (IsL(c[j])) return RunEnd(c, j, IsL);
  if (IsN(c[j])) return RunEnd(c, j, IsN);
  if (IsOther(c[j])) return RunEnd(c, j, IsOther);
  return WhitespaceTail(c, i);  // c[i] is whitespace here
}

size_t MatchLlama3(const std::vector<char32_t>& c, size_t i, size_t max_digits) {
  if (size_t n = Contraction(c, i, true)) return i + n;
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (IsL(c[i])) return RunEnd(c, i, IsL);
  if (c[i] != '\r' && c[i] != '\n' && !IsN(c[i]) && i + 1 < c.size() && IsL(c[i + 1])) {
    return RunEnd(c, i + 1, IsL);
  }
  // \p{N}{1,max}
  if (IsN(c[i])) {
    size_t e = i;
    while (e < c.size() && e - i < max_digits && IsN(c[e])) ++e;
    return e;
  }
  // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
  const size_t j = c[i] == ' ' && i + 1 < c.size() && IsOther(c[i + 1]) ? i + 1 : i;
  if (IsOther(c[j])) {
    return RunEnd(c, RunEnd(c, j, IsOther), [](char32_t x) { return x == '\r' || x == '\n'; });
  }
  // \s*[\r\n]+ : up to and including the last \r or \n of the whitespace run.
  const size_t e = RunEnd(c, i, IsS);
  for (size_t k = e; k > i; --k) {
    if (c[k - 1] == '\r' || c[k - 1] == '\n') return k;
  }
  return WhitespaceTail(c, i);
}

}  // namespace

bool ParseSplitRegex(std::string_view regex, SplitPattern* out) {
  if (regex == kGpt2Regex) {
    *out = SplitPattern::kGpt2;
  } else if (regex == kLlama3Regex) {
    *out = SplitPattern::kLlama3;
  } else if (regex == kQwen2Regex) {
    *out = SplitPattern::kQwen2;
  } else if (regex == R"(\p{N})") {
    *out = SplitPattern::kDigit;
  } else if (regex == R"(\p{N}+)") {
    *out = SplitPattern::kDigitRun;
  } else if (regex == R"(\p{N}{1,3})") {
    *out = SplitPattern::kDigits1to3;
  } else {
    return false;
  }
  return true;
}

std::vector<std::pair<size_t, size_t>> FindMatches(SplitPattern p, std::string_view literal,
                                                   std::string_view text) {
  std::vector<std::pair<size_t, size_t>> out;
  if (p == SplitPattern::kLiteral) {
    if (literal.empty()) return out;
    for (size_t pos = text.find(literal); pos != std::string_view::npos;
         pos = text.find(literal, pos + literal.size())) {
      out.emplace_back(pos, pos + literal.size());
    }
    return out;
  }
  const CodePoints cp = Decode(text);
  const std::vector<char32_t>& c = cp.c;
  for (size_t i = 0; i < c.size();) {
    size_t e = i;  // e == i: no match starts at i
    switch (p) {
      case SplitPattern::kGpt2:
        e = MatchGpt2(c, i);
        break;
      case SplitPattern::kLlama3:
        e = MatchLlama3(c, i, 3);
        break;
      case SplitPattern::kQwen2:
        e = MatchLlama3(c, i, 1);
        break;
      case SplitPattern::kDigit:
        e = IsN(c[i]) ? i + 1 : i;
        break;
      case SplitPattern::kDigitRun:
        e = RunEnd(c, i, IsN);
        break;
      case SplitPattern::kDigits1to3:
        while (e < c.size() && e - i < 3 && IsN(c[e])) ++e;
        break;
      case SplitPattern::kLiteral:
        break;
    }
    if (e > i) {
      out.emplace_back(cp.off[i], cp.off[e]);
      i = e;
    } else {
      ++i;
    }
  }
  return out;
}

std::vector<std::pair<size_t, size_t>> SplitAt(std::string_view text,
                                               const std::vector<std::pair<size_t, size_t>>& matches,
                                               SplitBehavior behavior, bool invert) {
  struct Entry {
    size_t begin, end;
    bool is_match;
  };
  std::vector<Entry> entries;
  size_t last = 0;
  for (const auto& [b, e] : matches) {
    if (b < last || e < b || e > text.size()) continue;  // defensive: ignore malformed input
    if (last < b) entries.push_back({last, b, invert});
    entries.push_back({b, e, !invert});
    last = e;
  }
  if (last < text.size()) entries.push_back({last, text.size(), invert});

  // Same folds as tokenizers' NormalizedString::split; `removed` marks pieces to drop.
  struct Piece {
    size_t begin, end;
    bool removed;
  };
  std::vector<Piece> pieces;
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Entry& e : entries) pieces.push_back({e.begin, e.end, false});
      break;
    case SplitBehavior::kRemoved:
      for (const Entry& e : entries) pieces.push_back({e.begin, e.end, e.is_match});
      break;
    case SplitBehavior::kContiguous:
    case SplitBehavior::kMergedWithPrevious:
    case SplitBehavior::kMergedWithNext: {
      // Forward (backward for kMergedWithNext): an entry joins the piece before (after) it when
      // it continues a run (kContiguous) or is a match following a non-match (the merges).
      const bool backward = behavior == SplitBehavior::kMergedWithNext;
      for (size_t i = 0; i < entries.size(); ++i) {
        const Entry& e = entries[backward ? entries.size() - 1 - i : i];
        const bool join = behavior == SplitBehavior::kContiguous ? e.is_match == previous_match
                                                                 : e.is_match && !previous_match;
        if (!join || pieces.empty()) {
          pieces.push_back({e.begin, e.end, false});
        } else if (backward) {
          pieces.back().begin = e.begin;
        } else {
          pieces.back().end = e.end;
        }
        previous_match = e.is_match;
      }
      if (backward) std::reverse(pieces.begin(), pieces.end());
      break;
    }
  }
  std::vector<std::pair<size_t, size_t>> out;
  for (const Piece& p : pieces) {
    if (!p.removed && p.end > p.begin) out.emplace_back(p.begin, p.end);
  }
  return out;
}

std::vector<std::pair<size_t, size_t>> SplitDigits(std::string_view text, bool individual) {
  const CodePoints cp = Decode(text);
  std::vector<std::pair<size_t, size_t>> matches;
  for (size_t i = 0; i < cp.c.size(); ++i) {
    if (IsN(cp.c[i])) matches.emplace_back(cp.off[i], cp.off[i + 1]);
  }
  return SplitAt(text, matches,
                 individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, false);
}

}  // namespace quantd::model
