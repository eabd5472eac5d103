// Scalar LDLQ (QuIP) ≡ GPTQ/OPTQ: adaptive rounding of a weight matrix column by column with
// linear feedback of the rounding errors through the Hessian, minimizing tr(ΔW H ΔWᵀ).
// Two implementations: the GPTQ formulation (upper Cholesky factor of H⁻¹, 128-column lazy
// batches, BLAS-3 updates) used in production, and the explicit LDLQ form
// (H = (U+I) D (U+I)ᵀ, Ŵ_k = Q(W_k + (W_{<k} − Ŵ_{<k}) U_{<k,k})) kept as an independent reference.
// Thread-safety: stateless functions; a ColumnRounder is used by one call at a time.
#ifndef QUANTD_ENGINE_QUANT_LDLQ_H_
#define QUANTD_ENGINE_QUANT_LDLQ_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/matrix.h"
#include "engine/quant/device.h"

namespace quantd::quant {

// The scalar quantizer LDLQ rounds with. Columns are visited in increasing order.
class ColumnRounder {
 public:
  virtual ~ColumnRounder() = default;
  // Columns per grid group (0 = the grids never change). When > 0, BeginGroup is called at every
  // column k that is a multiple of group_size() with the up-to-date (error-fed) columns
  // [k, k + len) of the working weight (all rows), before column k is rounded.
  virtual int group_size() const { return 0; }
  virtual void BeginGroup(int k, const MatrixD& block) {}
  // Rounds x at (row, col); returns the code and writes the dequantized value.
  virtual int Round(int row, int col, double x, double* xhat) = 0;
};

struct LdlqResult {
  MatrixD what;                // [m×n] dequantized weight (in the basis it was given)
  std::vector<uint16_t> codes; // m·n, row-major
};

// GPTQ formulation. h: damped n×n PD Hessian.
// FAILED_PRECONDITION when h is not numerically PD; INVALID_ARGUMENT on shape mismatch.
absl::StatusOr<LdlqResult> LdlqGptq(Device& dev, const MatrixD& w, const MatrixD& h,
                                    ColumnRounder& rounder);

// Explicit form (reference, O(m·n²)); ignores group_size (use fixed grids with it).
absl::StatusOr<LdlqResult> LdlqExplicit(Device& dev, const MatrixD& w, const MatrixD& h,
                                        ColumnRounder& rounder);

// Relative proxy loss tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) (0 when the denominator is 0).
double RelativeProxyLoss(const MatrixD& w, const MatrixD& what, const MatrixD& h);

}  // namespace quantd::quant

#endif  // QUANTD_ENGINE_QUANT_LDLQ_H_
