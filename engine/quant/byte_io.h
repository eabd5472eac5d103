// Little-endian byte and bit serialization helpers for quantd's binary formats (packed matrices,
// Hessian files), plus CRC-32 (IEEE 802.3 polynomial, as zlib's crc32()).
// Thread-safety: ByteWriter/ByteReader/BitWriter/BitReader are not thread-safe; Crc32 is pure.
#ifndef QUANTD_ENGINE_QUANT_BYTE_IO_H_
#define QUANTD_ENGINE_QUANT_BYTE_IO_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace quantd::quant {

// CRC-32 of `data`, continuing from `crc` (0 for a fresh checksum). Same values as zlib.
uint32_t Crc32(std::string_view data, uint32_t crc = 0);

// The body of one of quantd's checksummed files (a packed matrix, a Hessian file): `magic`, the
// body, then the little-endian CRC-32 of everything before it. INVALID_ARGUMENT "not a quantd
// WHAT (bad magic)" when `bytes` starts otherwise; DATA_LOSS when it is shorter than `min_size`
// or its checksum does not match (a truncated or corrupted file).
absl::StatusOr<std::string_view> ChecksummedBody(std::string_view bytes, std::string_view magic,
                                                 size_t min_size, std::string_view what);

// Appends little-endian fields to a string it does not own.
class ByteWriter {
 public:
  explicit ByteWriter(std::string* out) : out_(out) {}
  void U8(uint8_t v) { out_->push_back(static_cast<char>(v)); }
  void U16(uint16_t v);
  void U32(uint32_t v);
  void U64(uint64_t v);
  void F32(float v);
  void F64(double v);
  void Bytes(std::string_view b) { out_->append(b.data(), b.size()); }

 private:
  std::string* out_;
};

// Reads little-endian fields from a view; every read fails with DATA_LOSS naming `what` when
// the input is too short.
class ByteReader {
 public:
  explicit ByteReader(std::string_view in) : in_(in) {}
  absl::StatusOr<uint8_t> U8(std::string_view what);
  absl::StatusOr<uint16_t> U16(std::string_view what);
  absl::StatusOr<uint32_t> U32(std::string_view what);
  absl::StatusOr<uint64_t> U64(std::string_view what);
  absl::StatusOr<float> F32(std::string_view what);
  absl::StatusOr<double> F64(std::string_view what);
  absl::StatusOr<std::string_view> Bytes(size_t n, std::string_view what);
  size_t remaining() const { return in_.size() - pos_; }
  size_t position() const { return pos_; }

 private:
  absl::Status Need(size_t n, std::string_view what) const;
  std::string_view in_;
  size_t pos_ = 0;
};

// Packs unsigned values of 1..32 bits LSB-first into bytes.
class BitWriter {
 public:
  void Put(uint32_t value, int bits);
  // Pads the last byte with zero bits and returns the bytes.
  std::string Finish();

 private:
  std::string bytes_;
  uint64_t acc_ = 0;
  int nacc_ = 0;
};

// Reads what BitWriter wrote. Reading past the end yields zero bits; callers check sizes first.
class BitReader {
 public:
  explicit BitReader(std::string_view bytes) : bytes_(bytes) {}
  uint32_t Get(int bits);

 private:
  std::string_view bytes_;
  size_t byte_pos_ = 0;
  uint64_t acc_ = 0;
  int nacc_ = 0;
};

// Bytes needed for `count` values of `bits` bits each.
inline uint64_t PackedBytes(uint64_t count, int bits) {
  return (count * static_cast<uint64_t>(bits) + 7) / 8;
}

}  // namespace quantd::quant

#endif  // QUANTD_ENGINE_QUANT_BYTE_IO_H_
