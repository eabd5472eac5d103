// The packed representation of one quantized matrix (docs/formats/packed_matrix.md): header,
// RHT sign vectors, scales, bit-packed codes and a CRC-32 over everything. This file only
// serializes; quantize.cc decides the contents and turns them back into weights.
// Thread-safety: stateless functions on value types.
#ifndef QUANTD_ENGINE_QUANT_PACKED_MATRIX_H_
#define QUANTD_ENGINE_QUANT_PACKED_MATRIX_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/quant/rtn.h"

namespace quantd::quant {

inline constexpr uint16_t kPackedVersion = 1;

struct PackedContents {
  uint8_t method = 0;   // quant::Method value
  int bits = 0;
  int m = 0;
  int n = 0;
  int n_padded = 0;     // n plus zero columns added before the RHT (quip-sharp)
  uint64_t seed = 0;
  int group_size = 0;   // rtn/gptq grid group size, 0 = per channel
  bool rht = false;     // signs_m / signs_n present
  std::string codebook; // vector codebook name ("" for scalar methods)
  double codebook_scale = 0;
  int codes_per_vector = 1;  // vector codebooks only
  int vector_dim = 1;        // vector codebooks only
  std::vector<int8_t> signs_m, signs_n;  // m and n_padded entries of ±1 when rht
  std::vector<ScalarGrid> grids;         // scalar methods: rows·groups (rtn/gptq) or 1 (quip)
  float weight_scale = 1;                // quip-sharp, qtip: RMS the weights were divided by
  // qtip only: the trellis (TrellisCode value, L, V), the input scale the unit-RMS weights were
  // multiplied by before encoding, and the HYB table (2^9 × 2 floats) for code hyb. Codes are
  // (ceil(m/16)·ceil(n/16)) tiles × (256/V) steps of bits·V bits, tiles row-major.
  uint8_t trellis_code = 0;
  int trellis_l = 0;
  int trellis_v = 0;
  double trellis_scale = 0;
  std::vector<float> hyb_table;
  // butterfly only: Butterfly::NumAngles(n_padded) angles in radians (butterfly.h order).
  std::vector<float> angles;
  std::vector<uint16_t> codes;           // scalar: m·n_padded; vector: m·(n_padded/dim)·cpv
};

// Number of stored grids for the contents' method.
int64_t ExpectedGrids(const PackedContents& c);
// Bit width of code j (0-based) of a vector: the first code has 16 bits, the others share the
// remaining bits·dim − 16; scalar codes have `bits` bits.
int CodeBits(const PackedContents& c, int j);

// INTERNAL when a code does not fit its width or the vectors have the wrong sizes.
absl::StatusOr<std::string> EncodePacked(const PackedContents& c);
// INVALID_ARGUMENT for a wrong magic or unsupported version; DATA_LOSS for truncation, checksum
// mismatch or inconsistent sizes.
absl::StatusOr<PackedContents> DecodePacked(std::string_view bytes);

}  // namespace quantd::quant

#endif  // QUANTD_ENGINE_QUANT_PACKED_MATRIX_H_
