// Encoding and decoding for HfTokenizer; loading is in tokenizer_hf_parse.cc. The order of
// operations follows tokenizers' TokenizerImpl::encode_single_sequence: split at added tokens,
// normalize, split at normalized added tokens, pre-tokenize, BPE each pre-token, post-process.
#include <queue>

#include "engine/tokenizer/bytes_unicode.h"
#include "common/str_util.h"
#include "engine/tokenizer/tokenizer_hf.h"
#include "engine/tokenizer/unicode_props.h"

namespace quantd::model {
namespace {

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

void ReplaceAll(std::string* s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::string out;
  size_t pos = 0;
  for (size_t hit = s->find(from); hit != std::string::npos; hit = s->find(from, pos)) {
    out.append(*s, pos, hit - pos);
    out.append(to);
    pos = hit + from.size();
  }
  out.append(*s, pos, std::string::npos);
  s->swap(out);
}

// Word characters for single_word added tokens (regex \w): letters, numbers, '_'.
bool IsWordChar(char32_t c) { return c == '_' || IsUnicodeLetter(c) || IsUnicodeNumber(c); }

// Byte offset of the start of the code point that ends at `end`.
size_t PrevCharStart(std::string_view s, size_t end) {
  size_t b = end - 1;
  while (b > 0 && end - b < 4 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  size_t len;
  DecodeUtf8(s, b, &len);
  return b + len == end ? b : end - 1;
}

}  // namespace

std::vector<HfTokenizer::Segment> HfTokenizer::SplitAdded(std::string_view text,
                                                          bool normalized) const {
  std::vector<Segment> out;
  size_t start_offset = 0;
  // Leftmost-longest, non-overlapping, like the aho-corasick matcher tokenizers uses.
  for (size_t pos = 0; pos < text.size();) {
    const AddedToken* best = nullptr;
    for (int k : added_by_byte_[normalized][static_cast<unsigned char>(text[pos])]) {
      const AddedToken& t = added_[k];
      const std::string& c = normalized ? t.normalized_content : t.content;
      if (c.empty() || c.size() > text.size() - pos) continue;
      if (best != nullptr &&
          c.size() <= (normalized ? best->normalized_content : best->content).size()) {
        continue;
      }
      if (text.compare(pos, c.size(), c) == 0) best = &t;
    }
    if (best == nullptr) {
      ++pos;
      continue;
    }
    size_t start = pos;
    size_t stop = pos + (normalized ? best->normalized_content : best->content).size();
    const size_t match_end = stop;
    bool take = true;
    if (best->single_word) {
      size_t len;
      const bool word_before = start > 0 && IsWordChar(DecodeUtf8(text, PrevCharStart(text, start), &len));
      const bool word_after = stop < text.size() && IsWordChar(DecodeUtf8(text, stop, &len));
      take = !word_before && !word_after;
    }
    if (!take) {
      ++pos;
      continue;
    }
    if (best->lstrip) {
      size_t b = start;
      while (b > start_offset) {
        const size_t p = PrevCharStart(text, b);
        size_t len;
        if (!IsUnicodeWhitespace(DecodeUtf8(text, p, &len))) break;
        b = p;
      }
      start = b;
    }
    if (best->rstrip) {
      while (stop < text.size()) {
        size_t len;
        if (!IsUnicodeWhitespace(DecodeUtf8(text, stop, &len))) break;
        stop += len;
      }
    }
    if (start_offset < start) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, best->id});
    start_offset = stop;
    pos = std::max(stop, match_end);
  }
  if (start_offset < text.size()) out.push_back({start_offset, text.size(), -1});
  return out;
}

std::string HfTokenizer::Normalize(std::string_view text) const {
  std::string s(text);
  for (const NormStep& n : normalizer_) {
    if (n.prepend) {
      if (!s.empty()) s.insert(0, n.a);
    } else {
      ReplaceAll(&s, n.a, n.b);
    }
  }
  return s;
}

std::vector<HfTokenizer::Piece> HfTokenizer::PreTokenize(std::string text, bool at_start) const {
  std::vector<Piece> pieces;
  if (!text.empty()) pieces.push_back({std::move(text), at_start});
  for (const PreStep& step : pre_) {
    std::vector<Piece> next;
    for (Piece& p : pieces) {
      std::vector<std::pair<size_t, size_t>> ranges;
      switch (step.type) {
        case PreStep::kByteLevel: {
          if (step.add_prefix_space && (p.text.empty() || p.text[0] != ' ')) p.text.insert(0, " ");
          if (step.use_regex) {
            ranges = SplitAt(p.text, FindMatches(SplitPattern::kGpt2, "", p.text),
                             SplitBehavior::kIsolated, false);
          } else {
            ranges.emplace_back(0, p.text.size());
          }
          for (const auto& [b, e] : ranges) {
            std::string mapped;
            for (size_t k = b; k < e; ++k) mapped += ByteToUnicode(static_cast<unsigned char>(p.text[k]));
            next.push_back({std::move(mapped), p.at_start && b == 0});
          }
          continue;
        }
        case PreStep::kSplit:
          ranges = SplitAt(p.text, FindMatches(step.pattern, step.literal, p.text), step.behavior,
                           step.invert);
          break;
        case PreStep::kDigits:
          ranges = SplitDigits(p.text, step.individual_digits);
          break;
        case PreStep::kMetaspace: {
          ReplaceAll(&p.text, " ", step.replacement);
          const bool starts = p.text.compare(0, step.replacement.size(), step.replacement) == 0;
          if (!starts && (step.prepend == PreStep::kAlways ||
                          (step.prepend == PreStep::kFirst && p.at_start))) {
            p.text.insert(0, step.replacement);
          }
          if (step.split) {
            ranges = SplitAt(p.text, FindMatches(SplitPattern::kLiteral, step.replacement, p.text),
                             SplitBehavior::kMergedWithNext, false);
          } else {
            ranges.emplace_back(0, p.text.size());
          }
          break;
        }
      }
      for (const auto& [b, e] : ranges) {
        if (e > b) next.push_back({p.text.substr(b, e - b), p.at_start && b == 0});
      }
    }
    pieces.swap(next);
  }
  return pieces;
}

void HfTokenizer::Bpe(std::string_view word, std::vector<int32_t>* out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto it = vocab_.find(std::string(word)); it != vocab_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  // Initial symbols, as tokenizers' BPE::merge_word (including where a pending unk lands).
  std::vector<int32_t> sym;
  sym.reserve(word.size());
  bool unk_pending = false;
  std::string ch;
  for (size_t pos = 0; pos < word.size();) {
    size_t len;
    DecodeUtf8(word, pos, &len);
    ch.assign(word.data() + pos, len);
    pos += len;
    if (auto it = vocab_.find(ch); it != vocab_.end()) {
      if (unk_pending) sym.push_back(unk_id_);
      unk_pending = false;
      sym.push_back(it->second);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char b : ch) all = all && byte_ids_[b] >= 0;
      if (all) {
        for (unsigned char b : ch) sym.push_back(byte_ids_[b]);
        continue;
      }
    }
    if (unk_id_ >= 0) {
      if (unk_pending && !fuse_unk_) sym.push_back(unk_id_);
      unk_pending = true;
    }
  }
  if (unk_pending) sym.push_back(unk_id_);

  // merge_all: lowest rank first, leftmost on ties; stale entries are skipped on pop.
  const int n = static_cast<int>(sym.size());
  std::vector<int> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Merge {
    int32_t rank;
    int pos;
    int32_t new_id;
  };
  auto later = [](const Merge& a, const Merge& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::priority_queue<Merge, std::vector<Merge>, decltype(later)> heap(later);
  auto push = [&](int l) {
    if (l < 0 || next[l] < 0) return;
    auto it = merges_.find(PairKey(sym[l], sym[next[l]]));
    if (it != merges_.end()) heap.push({it->second.first, l, it->second.second});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Merge m = heap.top();
    heap.pop();
    if (!alive[m.pos] || next[m.pos] < 0) continue;
    const int r = next[m.pos];
    auto it = merges_.find(PairKey(sym[m.pos], sym[r]));
    if (it == merges_.end() || it->second.second != m.new_id) continue;
    sym[m.pos] = m.new_id;
    alive[r] = false;
    next[m.pos] = next[r];
    if (next[r] >= 0) prev[next[r]] = m.pos;
    push(prev[m.pos]);
    push(m.pos);
  }
  for (int i = 0; i < n; ++i) {
    if (alive[i]) out->push_back(sym[i]);
  }
}

void HfTokenizer::EncodePlain(std::string_view text, bool at_start,
                              std::vector<int32_t>* out) const {
  const std::string norm = Normalize(text);
  for (const Segment& seg : SplitAdded(norm, /*normalized=*/true)) {
    if (seg.id >= 0) {
      out->push_back(seg.id);
      continue;
    }
    for (const Piece& p : PreTokenize(norm.substr(seg.begin, seg.end - seg.begin),
                                      at_start && seg.begin == 0)) {
      Bpe(p.text, out);
    }
  }
}

absl::StatusOr<std::vector<int32_t>> HfTokenizer::Encode(std::string_view text, bool bos) const {
  std::vector<int32_t> out;
  if (bos) out = prefix_ids_;
  for (const Segment& seg : SplitAdded(text, /*normalized=*/false)) {
    if (seg.id >= 0) {
      out.push_back(seg.id);
    } else {
      EncodePlain(text.substr(seg.begin, seg.end - seg.begin), seg.begin == 0, &out);
    }
  }
  if (bos) out.insert(out.end(), suffix_ids_.begin(), suffix_ids_.end());
  return out;
}

absl::StatusOr<std::string> HfTokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= vocab_size() || !has_token_[id]) {
      return absl::InvalidArgumentError(
          internal::Cat("decode: id ", id, " at position ", i, " is not in the vocabulary"));
    }
    tokens.push_back(id_to_token_[id]);
  }
  if (!has_decoder_) {
    std::string joined;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) joined += ' ';
      joined += tokens[i];
    }
    return joined;
  }
  for (const DecodeStep& d : decoder_) {
    switch (d.type) {
      case DecodeStep::kByteLevel: {
        std::string bytes;
        for (const std::string& t : tokens) {
          std::string mapped;
          bool ok = true;
          for (size_t pos = 0; pos < t.size() && ok;) {
            size_t len;
            const int b = UnicodeToByte(DecodeUtf8(t, pos, &len));
            ok = b >= 0;
            mapped.push_back(static_cast<char>(b));
            pos += len;
          }
          bytes += ok ? mapped : t;
        }
        tokens.assign(1, Utf8Lossy(bytes));
        break;
      }
      case DecodeStep::kMetaspace:
        for (size_t i = 0; i < tokens.size(); ++i) {
          ReplaceAll(&tokens[i], d.a, i == 0 && d.metaspace_prepend ? "" : " ");
        }
        break;
      case DecodeStep::kReplace:
        for (std::string& t : tokens) ReplaceAll(&t, d.a, d.b);
        break;
      case DecodeStep::kByteFallback: {
        std::vector<std::string> fused;
        std::string pending;
        size_t pending_n = 0;
        auto flush = [&] {
          if (pending_n == 0) return;
          if (Utf8Lossy(pending) == pending) {
            fused.push_back(pending);
          } else {
            for (size_t k = 0; k < pending_n; ++k) fused.push_back("\xEF\xBF\xBD");
          }
          pending.clear();
          pending_n = 0;
        };
        for (std::string& t : tokens) {
          const int b = ParseByteToken(t);
          if (b >= 0) {
            pending.push_back(static_cast<char>(b));
            ++pending_n;
          } else {
            flush();
            fused.push_back(std::move(t));
          }
        }
        flush();
        tokens.swap(fused);
        break;
      }
      case DecodeStep::kFuse: {
        std::string all;
        for (const std::string& t : tokens) all += t;
        tokens.assign(1, all);
        break;
      }
      case DecodeStep::kStrip:
        for (std::string& t : tokens) {
          // Strip up to `start` leading and `stop` trailing copies of the content character.
          std::vector<size_t> starts;  // byte offset of each code point
          for (size_t pos = 0, len; pos < t.size(); pos += len) {
            starts.push_back(pos);
            DecodeUtf8(t, pos, &len);
          }
          starts.push_back(t.size());
          const size_t nchars = starts.size() - 1;
          auto is_content = [&](size_t k) {
            return t.compare(starts[k], starts[k + 1] - starts[k], d.a) == 0;
          };
          size_t lo = 0, hi = nchars;
          while (lo < nchars && lo < static_cast<size_t>(d.start) && is_content(lo)) ++lo;
          for (int k = 0; k < d.stop && hi > 0 && is_content(hi - 1); ++k) --hi;
          t = hi > lo ? t.substr(starts[lo], starts[hi] - starts[lo]) : std::string();
        }
        break;
    }
  }
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

}  // namespace quantd::model
