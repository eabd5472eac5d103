// E8P: QuIP#'s 2-bit, 8-dimensional codebook, a 2^16-point subset of E8 + 1/4.
//
// Points. S is a fixed list of 256 "absolute" vectors (entries in {1/2, 3/2, 5/2, 7/2}): the 227
// with |c|^2 <= 10 in lexicographic order, then 29 of norm^2 12 in the order QuIP# lists them.
// A point is c in S with signs applied so that the signed vector has an even coordinate sum
// (lies in D8^ = {x in Z^8 + 1/2 : sum x even}), shifted by +1/4 or -1/4.
//
// Our 16-bit code layout (see docs/formats/e8p.md):
//   bits 15..8  index of c in S (0..255)
//   bit  7      shift: 0 = +1/4, 1 = -1/4
//   bits 6..0   bit i set = coordinate i (0..6) is negative
// The sign of coordinate 7 is implied: the number of negative coordinates must have the parity
// of sum(c) (each flip changes the sum by the odd integer 2 c_i). Every uint16 is a valid code
// and the 2^16 codes decode to 2^16 distinct points.
//
// Thread-safety: E8PLattice and E8PCodebook are immutable after construction; all methods are
// const and may be called concurrently.
#ifndef QUANTD_ENGINE_QUANT_E8P_H_
#define QUANTD_ENGINE_QUANT_E8P_H_

#include <cstdint>
#include <string>

#include "engine/quant/codebook.h"

namespace quantd::quant {

inline constexpr int kE8PDim = 8;
inline constexpr int kE8PSourceSize = 256;
inline constexpr int kE8PSourceSmall = 227;  // entries of S with norm^2 <= 10
// Default input scale (QuIP#'s opt_scale); the MSE-optimal scale on i.i.d. N(0,1) is ~1.04.
inline constexpr double kE8PDefaultScale = 1.03;

// The unit-scale E8P point set: source table, exact nearest-point encoder and decoder.
class E8PLattice {
 public:
  // The process-wide table (built once on first use, ~1 ms).
  static const E8PLattice& Get();

  // Row `index` (0..255) of S: kE8PDim floats, all positive.
  const float* source(int index) const { return src_[index]; }
  // Integer sum(c) mod 2 of row `index`.
  int source_parity(int index) const { return odd_[index]; }

  // Nearest point of the codebook to y (kE8PDim floats, unit scale; exact up to float rounding
  // of the squared distances). Returns its code; writes |y - point|^2 to *sq_dist if non-null.
  uint16_t Encode(const float* y, float* sq_dist = nullptr) const;
  // Writes the kE8PDim coordinates of `code`'s point (exact in float).
  void Decode(uint16_t code, float* out) const;

 private:
  E8PLattice();

  float src_[kE8PSourceSize][kE8PDim];     // S, row per vector
  float src_t_[kE8PDim][kE8PSourceSize];   // S transposed, for the encoder's inner loops
  float norm2_[kE8PSourceSize];            // |c|^2
  // penalty_[p][j] = 4 when a sign pattern with p negatives mod 2 is invalid for S[j], else 0.
  float penalty_[2][kE8PSourceSize];
  uint8_t odd_[kE8PSourceSize];
};

// VectorCodebook "e8p": x is multiplied by `scale`, rounded to the nearest E8P point, and the
// point divided by `scale`. One code per 8 weights, 2 bits/weight.
class E8PCodebook : public VectorCodebook {
 public:
  // scale > 0 and finite (checked by MakeCodebook).
  explicit E8PCodebook(double scale);

  std::string name() const override { return "e8p"; }
  int dim() const override { return kE8PDim; }
  int codes_per_vector() const override { return 1; }
  int bits_per_weight() const override { return 2; }
  double scale() const { return scale_; }

  void Quantize(const float* x, uint16_t* codes, float* xhat) const override;
  void Decode(const uint16_t* codes, float* xhat) const override;

 private:
  const E8PLattice& lattice_;
  double scale_;
  float scale_f_;
};

}  // namespace quantd::quant

#endif  // QUANTD_ENGINE_QUANT_E8P_H_
