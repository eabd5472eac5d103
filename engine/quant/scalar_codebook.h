// "scalar2": the 2-bit Lloyd-Max quantizer for N(0,1), one weight per vector. A sanity
// baseline for the vector codebooks (MSE ~0.1175 on unit Gaussians).
// Codes 0..3 map to the levels -1.5104, -0.4528, +0.4528, +1.5104 (ascending). With input scale
// s, x is multiplied by s, rounded to the nearest level, and the level divided by s.
// Thread-safety: immutable after construction; all methods const and safe to call concurrently.
#ifndef QUANTD_ENGINE_QUANT_SCALAR_CODEBOOK_H_
#define QUANTD_ENGINE_QUANT_SCALAR_CODEBOOK_H_

#include <cstdint>
#include <string>

#include "engine/quant/codebook.h"

namespace quantd::quant {

inline constexpr float kLloydMax2Levels[4] = {-1.5104f, -0.4528f, 0.4528f, 1.5104f};
inline constexpr double kScalar2DefaultScale = 1.0;

class Scalar2Codebook : public VectorCodebook {
 public:
  // scale > 0 and finite (checked by MakeCodebook).
  explicit Scalar2Codebook(double scale);

  std::string name() const override { return "scalar2"; }
  int dim() const override { return 1; }
  int codes_per_vector() const override { return 1; }
  int bits_per_weight() const override { return 2; }
  double scale() const { return scale_; }

  void Quantize(const float* x, uint16_t* codes, float* xhat) const override;
  // Codes >= 4 are read modulo 4.
  void Decode(const uint16_t* codes, float* xhat) const override;

 private:
  double scale_;
  float scale_f_;
};

}  // namespace quantd::quant

#endif  // QUANTD_ENGINE_QUANT_SCALAR_CODEBOOK_H_
