#include "engine/quant/damping.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"

namespace quantd::quant {

absl::Status CheckFiniteInputs(const MatrixF& w, const MatrixD& h, std::string_view layer) {
  if (h.rows() != w.cols() || h.cols() != w.cols()) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", std::string(layer), ": weight is [", w.rows(), ",",
                                                   w.cols(), "] but Hessian is [", h.rows(), ",",
                                                   h.cols(), "]"));
  }
  if (!w.allFinite()) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", std::string(layer), ": weight contains NaN or Inf"));
  }
  if (!h.allFinite()) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", std::string(layer), ": Hessian contains NaN or Inf"));
  }
  return absl::OkStatus();
}

int FixDeadColumns(MatrixD* h, MatrixD* w) {
  int dead = 0;
  for (int i = 0; i < h->rows(); ++i) {
    if ((*h)(i, i) == 0.0) {
      (*h)(i, i) = 1.0;
      w->col(i).setZero();
      ++dead;
    }
  }
  return dead;
}

absl::StatusOr<DampedHessian> DampAndFactor(Device& dev, const MatrixD& h, double damp,
                                            DampStyle style, std::string_view layer) {
  const int n = static_cast<int>(h.rows());
  const double mean_diag = n > 0 ? h.diagonal().mean() : 0.0;
  if (!(mean_diag > 0.0)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layer ", std::string(layer), ": Hessian mean diagonal is ", mean_diag, ", cannot be damped into PD"));
  }
  const std::vector<double> attempts = {damp, std::max(10 * damp, 0.1), std::max(100 * damp, 1.0)};
  std::string failures;
  for (size_t a = 0; a < attempts.size(); ++a) {
    DampedHessian out;
    out.damp = attempts[a];
    if (style == DampStyle::kQuipSharp) {
      out.h = h / mean_diag;
      out.h.diagonal().array() += out.damp;
    } else {
      out.h = h;
      out.h.diagonal().array() += out.damp * mean_diag;
    }
    absl::Status s = dev.Cholesky(out.h, &out.lower);
    if (s.ok()) {
      if (a > 0) {
        out.note = absl::StrCat("layer ", std::string(layer), ": damping raised to ", out.damp,
                                " after failed Cholesky at ", failures);
      }
      return out;
    }
    absl::StrAppend(&failures, failures.empty() ? "" : ", ", attempts[a]);
  }
  return absl::FailedPreconditionError(
      absl::StrCat("layer ", std::string(layer), ": Hessian is not positive definite even with damping ",
                   failures));
}

}  // namespace quantd::quant
