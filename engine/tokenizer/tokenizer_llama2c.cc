#include "engine/tokenizer/tokenizer_llama2c.h"

#include <cmath>
#include <cstring>
#include <queue>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/bytes_unicode.h"
#include "common/str_util.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace quantd::model {
namespace {

constexpr int kBos = 1;
constexpr int kByteFallbackBase = 3;

template <typename T>
bool ReadPod(std::string_view data, size_t* pos, T* out) {
  if (data.size() - *pos < sizeof(T)) return false;
  std::memcpy(out, data.data() + *pos, sizeof(T));
  *pos += sizeof(T);
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> Llama2cTokenizer::Load(const std::string& path) {
  QUANTD_ASSIGN_OR_RETURN(std::string data, ReadFile(path, 1 << 28));
  return Parse(data, path);
}

absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> Llama2cTokenizer::Parse(std::string_view data,
                                                                          const std::string& path) {
  auto bad = [&path](absl::string_view what) {
    return absl::InvalidArgumentError(internal::Cat(path, ": ", what));
  };
  std::unique_ptr<Llama2cTokenizer> t(new Llama2cTokenizer());
  size_t pos = 0;
  int32_t max_len;
  if (!ReadPod(data, &pos, &max_len) || max_len <= 0 || max_len > 4096) {
    return bad("bad or missing max_token_length header");
  }
  while (pos < data.size()) {
    const size_t id = t->pieces_.size();
    float score;
    int32_t len;
    if (!ReadPod(data, &pos, &score) || !ReadPod(data, &pos, &len)) {
      return bad(internal::Cat("truncated at token ", id));
    }
    if (len < 0 || len > max_len || static_cast<size_t>(len) > data.size() - pos) {
      return bad(internal::Cat("token ", id, " has bad length ", len));
    }
    if (!std::isfinite(score)) return bad(internal::Cat("token ", id, " has non-finite score"));
    t->pieces_.emplace_back(data.data() + pos, len);
    t->scores_.push_back(score);
    pos += len;
  }
  if (t->pieces_.size() < 259) {
    return bad(internal::Cat("only ", t->pieces_.size(), " tokens; need >= 259 (byte fallback)"));
  }
  for (size_t i = 0; i < t->pieces_.size(); ++i) t->index_.emplace(t->pieces_[i], i);
  return t;
}

int Llama2cTokenizer::Lookup(std::string_view s) const {
  auto it = index_.find(s);
  return it == index_.end() ? -1 : it->second;
}

absl::StatusOr<std::vector<int32_t>> Llama2cTokenizer::Encode(std::string_view text,
                                                              bool bos) const {
  std::vector<int32_t> out;
  if (bos) out.push_back(kBos);
  if (text.empty()) return out;

  // Initial symbols: dummy prefix, then one per code point or per byte.
  std::vector<int32_t> sym;
  sym.reserve(text.size() + 1);
  const int space = Lookup(" ");
  if (space >= 0) sym.push_back(space);
  for (size_t i = 0; i < text.size();) {
    size_t j = i + 1;
    while (j < text.size() && j - i < 4 && (static_cast<unsigned char>(text[j]) & 0xC0) == 0x80) ++j;
    const int id = Lookup(text.substr(i, j - i));
    if (id >= 0) {
      sym.push_back(id);
    } else {
      for (size_t k = i; k < j; ++k)
        sym.push_back(static_cast<unsigned char>(text[k]) + kByteFallbackBase);
    }
    i = j;
  }

  // Merge loop as a heap over adjacent pairs: highest score first, leftmost on ties, which is
  // the order run.c's repeated linear scan produces. Stale entries are skipped on pop.
  const int n = static_cast<int>(sym.size());
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Pair {
    float score;
    int left, right, left_id, right_id, merged;
  };
  auto worse = [](const Pair& a, const Pair& b) {
    return a.score != b.score ? a.score < b.score : a.left > b.left;
  };
  std::priority_queue<Pair, std::vector<Pair>, decltype(worse)> heap(worse);
  std::string buf;
  auto push = [&](int l, int r) {
    if (l < 0 || r < 0) return;
    buf = pieces_[sym[l]];
    buf += pieces_[sym[r]];
    const int id = Lookup(buf);
    if (id >= 0) heap.push({scores_[id], l, r, sym[l], sym[r], id});
  };
  for (int i = 0; i + 1 < n; ++i) push(i, i + 1);
  std::vector<bool> alive(n, true);
  while (!heap.empty()) {
    const Pair p = heap.top();
    heap.pop();
    if (!alive[p.left] || !alive[p.right] || next[p.left] != p.right ||
        sym[p.left] != p.left_id || sym[p.right] != p.right_id) {
      continue;
    }
    sym[p.left] = p.merged;
    alive[p.right] = false;
    next[p.left] = next[p.right];
    if (next[p.right] >= 0) prev[next[p.right]] = p.left;
    push(prev[p.left], p.left);
    push(p.left, next[p.left]);
  }
  for (int i = 0; i >= 0 && i < n; i = next[i]) out.push_back(sym[i]);
  return out;
}

absl::StatusOr<std::string> Llama2cTokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= vocab_size()) {
      return absl::InvalidArgumentError(internal::Cat("decode: id ", id, " at position ", i,
                                                      " is outside [0, ", vocab_size(), ")"));
    }
    std::string_view piece = pieces_[id];
    if ((i == 0 || ids[i - 1] == kBos) && !piece.empty() && piece[0] == ' ') piece.remove_prefix(1);
    const int byte = ParseByteToken(piece);
    if (byte >= 0) {
      out.push_back(static_cast<char>(byte));
    } else {
      out.append(piece.data(), piece.size());
    }
  }
  return out;
}

}  // namespace quantd::model
