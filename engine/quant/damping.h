// Hessian preconditioning before LDLQ: finiteness checks, dead input columns and damping with
// escalating retries until the Cholesky factorization succeeds (docs/algorithms.md "Damping").
// Thread-safety: stateless functions.
#ifndef QUANTD_ENGINE_QUANT_DAMPING_H_
#define QUANTD_ENGINE_QUANT_DAMPING_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/matrix.h"
#include "engine/quant/device.h"

namespace quantd::quant {

enum class DampStyle {
  kQuipSharp,  // H ← H / mean(diag H); H_ii += damp
  kGptq,       // H_ii += damp · mean(diag H)
};

// INVALID_ARGUMENT naming `layer` when w or h holds NaN/Inf or h is not n×n for w [m×n].
absl::Status CheckFiniteInputs(const MatrixF& w, const MatrixD& h, std::string_view layer);

// Dead inputs (H_ii == 0): sets H_ii = 1 and zeroes w[:, i]. Returns how many there were.
int FixDeadColumns(MatrixD* h, MatrixD* w);

struct DampedHessian {
  MatrixD h;        // damped Hessian (QuIP#-style also divided by its mean diagonal)
  MatrixD lower;    // Cholesky factor: h = lower·lowerᵀ
  double damp = 0;  // relative damping finally used
  std::string note; // non-empty when the damping had to be raised
};

// Damps h with `damp` (relative) in `style` and factors it; on failure retries with damp·10 and
// damp·100 (at least 0.1 and 1.0). FAILED_PRECONDITION naming `layer` when mean(diag h) ≤ 0 or
// every attempt fails.
absl::StatusOr<DampedHessian> DampAndFactor(Device& dev, const MatrixD& h, double damp,
                                            DampStyle style, std::string_view layer);

}  // namespace quantd::quant

#endif  // QUANTD_ENGINE_QUANT_DAMPING_H_
