// IEEE binary16 (F16) and bfloat16 (BF16) <-> fp32 conversions for safetensors payloads.
// Thread-safety: pure functions.
#ifndef QUANTD_ENGINE_FORMAT_FLOAT16_H_
#define QUANTD_ENGINE_FORMAT_FLOAT16_H_

#include <cstdint>

namespace quantd::model {

// Exact widening of the 16-bit patterns (subnormals, inf and NaN included).
float HalfToFloat(uint16_t h);
float BFloat16ToFloat(uint16_t h);
// Round-to-nearest-even narrowing; overflow goes to +-inf, NaN stays NaN.
uint16_t FloatToHalf(float f);
uint16_t FloatToBFloat16(float f);

// The little-endian 16-bit pattern at `p` (any alignment).
inline uint16_t LoadLe16(const char* p) {
  return static_cast<uint16_t>(static_cast<unsigned char>(p[0]) |
                               (static_cast<unsigned char>(p[1]) << 8));
}
// `n` little-endian F16 (BF16) values at `src` widened into dst[0, n).
void HalfsToFloats(const char* src, int64_t n, float* dst);
void BFloat16sToFloats(const char* src, int64_t n, float* dst);

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_FORMAT_FLOAT16_H_
