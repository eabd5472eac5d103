// Deterministic synthetic layers for tests and benchmarks: Gaussian matrices and proxy Hessians
// of correlated activations with outlier input channels (as in LLM layers), from a seed.
// Thread-safety: stateless functions; GaussianRng is not thread-safe.
#ifndef QUANTD_ENGINE_QUANT_SYNTHETIC_H_
#define QUANTD_ENGINE_QUANT_SYNTHETIC_H_

#include <cstdint>
#include <random>

#include "common/matrix.h"

namespace quantd::quant {

// N(0,1) samples: mt19937_64 bits → 53-bit uniforms → Box–Muller (platform-independent bits).
class GaussianRng {
 public:
  explicit GaussianRng(uint64_t seed) : eng_(seed) {}
  double Next();
  uint64_t Bits() { return eng_(); }

 private:
  std::mt19937_64 eng_;
  bool have_spare_ = false;
  double spare_ = 0;
};

// [rows×cols] i.i.d. N(0,1).
MatrixD GaussianMatrix(int rows, int cols, uint64_t seed);

// [m×n] weight: N(0,1) with 1% of the entries ×4 (heavy tails).
MatrixF SyntheticWeight(int m, int n, uint64_t seed);

// H = CᵀC / r + 1e-3·I (n×n, fp64) for C [r×n], r = max(n/4, 1), with log-normal column scales
// and 1% outlier columns ×8: strongly correlated, PD, realistic diagonal spread.
MatrixD SyntheticHessian(int n, uint64_t seed);

}  // namespace quantd::quant

#endif  // QUANTD_ENGINE_QUANT_SYNTHETIC_H_
