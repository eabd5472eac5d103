#include "engine/quant/byte_io.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace quantd::quant {
namespace {

std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    t[i] = c;
  }
  return t;
}

// The value whose bit pattern is `bits` (same size: float/uint32_t, double/uint64_t, both ways).
template <typename To, typename From>
To BitCast(From bits) {
  static_assert(sizeof(To) == sizeof(From));
  To v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

template <typename To, typename From>
absl::StatusOr<To> BitCast(absl::StatusOr<From> bits) {
  if (!bits.ok()) return bits.status();
  return BitCast<To>(*bits);
}

}  // namespace

uint32_t Crc32(std::string_view data, uint32_t crc) {
  static const std::array<uint32_t, 256> table = MakeCrcTable();
  crc = ~crc;
  for (unsigned char ch : data) crc = table[(crc ^ ch) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

absl::StatusOr<std::string_view> ChecksummedBody(std::string_view bytes, std::string_view magic,
                                                 size_t min_size, std::string_view what) {
  if (bytes.substr(0, magic.size()) != magic) {
    return absl::InvalidArgumentError(absl::StrCat("not a quantd ", std::string(what), " (bad magic)"));
  }
  if (bytes.size() < std::max(min_size, magic.size() + 4)) {
    return absl::DataLossError(absl::StrCat(std::string(what), " truncated in its header"));
  }
  ByteReader tail(bytes.substr(bytes.size() - 4));
  const absl::StatusOr<uint32_t> stored = tail.U32("checksum");
  if (!stored.ok()) return stored.status();
  const uint32_t crc = Crc32(bytes.substr(0, bytes.size() - 4));
  if (crc != *stored) {
    return absl::DataLossError(absl::StrCat(std::string(what), " checksum mismatch (", bytes.size(),
                                            " bytes, stored ", *stored, ", computed ", crc,
                                            "): truncated or corrupted"));
  }
  return bytes.substr(magic.size(), bytes.size() - magic.size() - 4);
}

void ByteWriter::U16(uint16_t v) {
  for (int i = 0; i < 2; ++i) U8(static_cast<uint8_t>(v >> (8 * i)));
}
void ByteWriter::U32(uint32_t v) {
  for (int i = 0; i < 4; ++i) U8(static_cast<uint8_t>(v >> (8 * i)));
}
void ByteWriter::U64(uint64_t v) {
  for (int i = 0; i < 8; ++i) U8(static_cast<uint8_t>(v >> (8 * i)));
}
void ByteWriter::F32(float v) { U32(BitCast<uint32_t>(v)); }
void ByteWriter::F64(double v) { U64(BitCast<uint64_t>(v)); }

absl::Status ByteReader::Need(size_t n, std::string_view what) const {
  if (in_.size() - pos_ < n) {
    return absl::DataLossError(absl::StrCat("truncated input: need ", n, " bytes for ", std::string(what),
                                            " at offset ", pos_, ", have ", in_.size() - pos_));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint8_t> ByteReader::U8(std::string_view what) {
  absl::Status s = Need(1, what);
  if (!s.ok()) return s;
  return static_cast<uint8_t>(in_[pos_++]);
}

#define QUANTD_READ_LE_(T, N)                                                        \
  absl::Status s = Need(N, what);                                                    \
  if (!s.ok()) return s;                                                             \
  T v = 0;                                                                           \
  for (int i = 0; i < N; ++i) v |= static_cast<T>(static_cast<uint8_t>(in_[pos_ + i])) << (8 * i); \
  pos_ += N;                                                                         \
  return v;

absl::StatusOr<uint16_t> ByteReader::U16(std::string_view what) { QUANTD_READ_LE_(uint16_t, 2) }
absl::StatusOr<uint32_t> ByteReader::U32(std::string_view what) { QUANTD_READ_LE_(uint32_t, 4) }
absl::StatusOr<uint64_t> ByteReader::U64(std::string_view what) { QUANTD_READ_LE_(uint64_t, 8) }
#undef QUANTD_READ_LE_

absl::StatusOr<float> ByteReader::F32(std::string_view what) {
  return BitCast<float>(U32(what));
}

absl::StatusOr<double> ByteReader::F64(std::string_view what) {
  return BitCast<double>(U64(what));
}

absl::StatusOr<std::string_view> ByteReader::Bytes(size_t n, std::string_view what) {
  absl::Status s = Need(n, what);
  if (!s.ok()) return s;
  std::string_view out = in_.substr(pos_, n);
  pos_ += n;
  return out;
}

void BitWriter::Put(uint32_t value, int bits) {
  uint64_t mask = bits >= 32 ? 0xFFFFFFFFull : ((uint64_t{1} << bits) - 1);
  acc_ |= (static_cast<uint64_t>(value) & mask) << nacc_;
  nacc_ += bits;
  while (nacc_ >= 8) {
    bytes_.push_back(static_cast<char>(acc_ & 0xFF));
    acc_ >>= 8;
    nacc_ -= 8;
  }
}

std::string BitWriter::Finish() {
  if (nacc_ > 0) bytes_.push_back(static_cast<char>(acc_ & 0xFF));
  acc_ = 0;
  nacc_ = 0;
  return std::move(bytes_);
}

uint32_t BitReader::Get(int bits) {
  while (nacc_ < bits) {
    uint64_t b = byte_pos_ < bytes_.size() ? static_cast<uint8_t>(bytes_[byte_pos_]) : 0;
    ++byte_pos_;
    acc_ |= b << nacc_;
    nacc_ += 8;
  }
  uint64_t mask = bits >= 32 ? 0xFFFFFFFFull : ((uint64_t{1} << bits) - 1);
  uint32_t v = static_cast<uint32_t>(acc_ & mask);
  acc_ >>= bits;
  nacc_ -= bits;
  return v;
}

}  // namespace quantd::quant
