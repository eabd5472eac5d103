// Rht: the randomized Hadamard transform x → V·S·x used for incoherence processing (QuIP/QuIP#).
// S is a diagonal of seeded ±1 signs, V the normalized Hadamard matrix (H_p ⊗ H_q)/√n when n =
// 2^k·q for a base order q, otherwise a seeded random orthogonal Kronecker product A ⊗ B
// (n = a·b, a the largest divisor ≤ √n; for prime n a single dense orthogonal matrix), so every
// n > 0 is accepted. Everything is reconstructible from (n, seed):
//   signs: std::mt19937_64(seed), sign_i = +1 if the top bit of the i-th output is 0, else −1;
//   fallback: std::mt19937_64(seed ^ 0x9E3779B97F4A7C15) → 53-bit uniforms → Box–Muller
//   Gaussians (A's entries row-major, then B's) → modified Gram–Schmidt (twice) on the rows.
// (The fallback depends on libm's log/cos/sin; glibc's are deterministic on every platform we run.)
// Thread-safety: immutable after MakeRht; const methods may run concurrently.
#ifndef QUANTD_ENGINE_QUANT_RHT_H_
#define QUANTD_ENGINE_QUANT_RHT_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "common/matrix.h"
#include "engine/quant/hadamard.h"

namespace quantd::quant {

class Rht {
 public:
  int n() const { return n_; }
  uint64_t seed() const { return seed_; }
  // True when V is a Hadamard matrix, false for the random orthogonal fallback.
  bool is_hadamard() const { return hadamard_.has_value(); }
  // The ±1 diagonal of S (n entries).
  const std::vector<int8_t>& signs() const { return signs_; }

  // Every row x of `rows` [r×n] ← V S x (i.e. rows ← rows·S·Vᵀ). Rows of the wrong length are a
  // programming error and leave `rows` unchanged.
  void ApplyRows(MatrixD* rows) const { Run(rows, false); }
  // Every row y ← S Vᵀ y (the inverse of ApplyRows).
  void InverseRows(MatrixD* rows) const { Run(rows, true); }
  void ApplyRows(MatrixF* rows) const;
  void InverseRows(MatrixF* rows) const;

 private:
  friend absl::StatusOr<Rht> MakeRht(int n, uint64_t seed);
  Rht() = default;
  void Run(MatrixD* rows, bool inverse) const;
  void ApplyOne(double* x, double* scratch, bool transpose) const;

  int n_ = 0;
  uint64_t seed_ = 0;
  std::vector<int8_t> signs_;
  std::optional<HadamardTransform> hadamard_;
  MatrixD fa_, fb_;  // fallback: V = fa ⊗ fb
};

// INVALID_ARGUMENT for n ≤ 0 or n > 2^24.
absl::StatusOr<Rht> MakeRht(int n, uint64_t seed);

// W̃ = (V_m S_m) W (S_n V_nᵀ) for w [m×n], out = rht of dimension m, in = of dimension n.
void RhtWeight(const Rht& out, const Rht& in, MatrixD* w);
// W = S_m V_mᵀ W̃ V_n S_n (inverse of RhtWeight).
void InverseRhtWeight(const Rht& out, const Rht& in, MatrixD* w);
// H̃ = (V_n S_n) H (S_n V_nᵀ) for h [n×n]; the result is exactly symmetrized.
void RhtHessian(const Rht& in, MatrixD* h);

}  // namespace quantd::quant

#endif  // QUANTD_ENGINE_QUANT_RHT_H_
