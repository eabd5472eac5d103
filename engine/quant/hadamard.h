// Hadamard matrices for incoherence processing: the ±1 base matrices H_q of the orders QuIP#
// uses, the fast Walsh–Hadamard transform (FWHT) on power-of-two lengths, and the normalized
// transform V = (H_p ⊗ H_q)/√n applied to vectors of length n = p·q.
// Thread-safety: all functions are thread-safe; HadamardTransform is immutable after
// construction and its const methods may run concurrently.
#ifndef QUANTD_ENGINE_QUANT_HADAMARD_H_
#define QUANTD_ENGINE_QUANT_HADAMARD_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"

namespace quantd::quant {

// The base orders q with a known H_q: {1, 12, 20, 28, 36, 52, 60, 108, 116, 124, 140, 156, 172}.
const std::vector<int>& HadamardBaseOrders();

// The ±1 Hadamard matrix of order q (row-major, q·q entries) with H Hᵀ = q I.
// Orders 12, 20, 60, 108, 140 come from Paley I, 28, 36, 124 from Paley II, 52, 116, 156, 172
// from stored data. INVALID_ARGUMENT if q is not a base order.
absl::StatusOr<std::vector<int8_t>> HadamardBase(int q);

// n = p·q with p a power of two and q a base order; nullopt when n has no such factorization.
struct HadamardFactors {
  int p = 1;
  int q = 1;
};
std::optional<HadamardFactors> FactorHadamard(int n);

// In-place unnormalized FWHT (Sylvester order) of x[0..len); len must be a power of two.
void Fwht(double* x, int64_t len);

// Normalized V = (H_p ⊗ H_q)/√n with index i = a·q + b (a < p, b < q).
class HadamardTransform {
 public:
  // INVALID_ARGUMENT if n has no Hadamard factorization.
  static absl::StatusOr<HadamardTransform> Make(int n);

  int n() const { return p_ * q_; }
  // x ← V x (length n). `scratch` must hold q() doubles.
  void Apply(double* x, double* scratch) const { Run(x, scratch, false); }
  // x ← Vᵀ x.
  void ApplyTranspose(double* x, double* scratch) const { Run(x, scratch, true); }
  int p() const { return p_; }
  int q() const { return q_; }

 private:
  HadamardTransform(int p, int q, std::vector<int8_t> hq) : p_(p), q_(q), hq_(std::move(hq)) {}
  void Run(double* x, double* scratch, bool transpose) const;
  int p_;
  int q_;
  std::vector<int8_t> hq_;  // q·q, row-major
};

}  // namespace quantd::quant

#endif  // QUANTD_ENGINE_QUANT_HADAMARD_H_
