#include "engine/quant/scalar_codebook.h"

namespace quantd::quant {

Scalar2Codebook::Scalar2Codebook(double scale)
    : scale_(scale), scale_f_(static_cast<float>(scale)) {}

void Scalar2Codebook::Quantize(const float* x, uint16_t* codes, float* xhat) const {
  const float v = x[0] * scale_f_;
  // Decision thresholds are the midpoints between adjacent levels.
  const float outer = 0.5f * (kLloydMax2Levels[2] + kLloydMax2Levels[3]);
  uint16_t code;
  if (v < 0) {
    code = v < -outer ? 0 : 1;
  } else {
    code = v < outer ? 2 : 3;
  }
  codes[0] = code;
  Decode(codes, xhat);
}

void Scalar2Codebook::Decode(const uint16_t* codes, float* xhat) const {
  xhat[0] = kLloydMax2Levels[codes[0] & 3] / scale_f_;
}

}  // namespace quantd::quant
