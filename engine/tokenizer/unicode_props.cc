#include "engine/tokenizer/unicode_props.h"

namespace quantd::model {
namespace {

// Length of the well-formed sequence at s[pos] (> 0, *cp set), or minus the length of its
// maximal ill-formed subpart (Unicode 3.9 "best practice", as Rust's from_utf8_lossy).
int Scan(std::string_view s, size_t pos, char32_t* cp) {
  const unsigned char b0 = static_cast<unsigned char>(s[pos]);
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  int need;
  unsigned char lo = 0x80, hi = 0xBF;
  char32_t v;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
    v = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    v = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    v = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  for (int k = 1; k <= need; ++k) {
    if (pos + k >= s.size()) return -k;
    const unsigned char b = static_cast<unsigned char>(s[pos + k]);
    if (b < lo || b > hi) return -k;
    lo = 0x80;
    hi = 0xBF;
    v = (v << 6) | (b & 0x3F);
  }
  *cp = v;
  return need + 1;
}

}  // namespace

char32_t DecodeUtf8(std::string_view s, size_t pos, size_t* len) {
  char32_t cp = 0;
  const int n = Scan(s, pos, &cp);
  if (n < 0) {
    *len = 1;
    return kInvalidUtf8;
  }
  *len = static_cast<size_t>(n);
  return cp;
}

void AppendUtf8(char32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string Utf8Lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t pos = 0; pos < s.size();) {
    char32_t cp;
    const int n = Scan(s, pos, &cp);
    if (n > 0) {
      out.append(s.data() + pos, n);
      pos += n;
    } else {
      out += "\xEF\xBF\xBD";
      pos += -n;
    }
  }
  return out;
}

}  // namespace quantd::model
