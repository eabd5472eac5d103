#include "engine/tokenizer/bytes_unicode.h"

#include <array>

#include "engine/tokenizer/unicode_props.h"

namespace quantd::model {
namespace {

struct Tables {
  std::array<std::string, 256> to_unicode;
  std::array<int, 512> to_byte;  // every mapped code point is < 0x144
};

Tables Build() {
  Tables t;
  t.to_byte.fill(-1);
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    const char32_t c = printable ? b : 256 + n++;
    AppendUtf8(c, &t.to_unicode[b]);
    t.to_byte[c] = b;
  }
  return t;
}

const Tables& Get() {
  static const Tables* t = new Tables(Build());
  return *t;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

const std::string& ByteToUnicode(unsigned char b) { return Get().to_unicode[b]; }

int UnicodeToByte(char32_t c) { return c < 512 ? Get().to_byte[c] : -1; }

std::string ByteTokenName(unsigned char b) {
  const char* hex = "0123456789ABCDEF";
  return std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
}

int ParseByteToken(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  // Rust's u8::from_str_radix also accepts a leading '+'.
  if (t[3] == '+') return HexDigit(t[4]);
  const int hi = HexDigit(t[3]), lo = HexDigit(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

}  // namespace quantd::model
