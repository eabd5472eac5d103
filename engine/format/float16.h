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

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_FORMAT_FLOAT16_H_
