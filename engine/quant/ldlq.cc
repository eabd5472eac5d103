#include "engine/quant/ldlq.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace quantd::quant {
namespace {

constexpr int kLazyBatch = 128;

absl::Status CheckShapes(const MatrixD& w, const MatrixD& h) {
  if (h.rows() != w.cols() || h.cols() != w.cols()) {
    return absl::InvalidArgumentError(absl::StrCat("LDLQ: weight has ", w.cols(),
                                                   " columns, Hessian is [", h.rows(), ",",
                                                   h.cols(), "]"));
  }
  return absl::OkStatus();
}

// Upper Cholesky factor R of H⁻¹ (H⁻¹ = Rᵀ R): with J the reversal, J H J = Lr Lrᵀ gives
// H = Ũ Ũᵀ for the upper Ũ = J Lr J, so R = Ũ⁻¹ = J Lr⁻¹ J. One Cholesky and one triangular
// solve; no explicit inverse of H.
absl::StatusOr<MatrixD> UpperCholOfInverse(Device& dev, const MatrixD& h) {
  const int n = static_cast<int>(h.rows());
  MatrixD lr;
  QUANTD_RETURN_IF_ERROR(dev.Cholesky(MatrixD(h.reverse()), &lr));
  MatrixD inv = MatrixD::Identity(n, n);
  QUANTD_RETURN_IF_ERROR(dev.SolveLower(lr, false, &inv));
  return MatrixD(inv.reverse());
}

}  // namespace

absl::StatusOr<LdlqResult> LdlqGptq(Device& dev, const MatrixD& w_in, const MatrixD& h,
                                    ColumnRounder& rounder) {
  QUANTD_RETURN_IF_ERROR(CheckShapes(w_in, h));
  const int m = static_cast<int>(w_in.rows()), n = static_cast<int>(w_in.cols());
  QUANTD_ASSIGN_OR_RETURN(MatrixD u, UpperCholOfInverse(dev, h));
  // Batches hold whole groups so that a group's grid is fit on fully updated columns.
  const int gs = rounder.group_size();
  int batch = kLazyBatch;
  if (gs > 0) batch = gs <= kLazyBatch ? (kLazyBatch / gs) * gs : gs;

  LdlqResult out;
  out.what.resize(m, n);
  out.codes.resize(static_cast<size_t>(m) * n);
  MatrixD w = w_in;
  for (int i1 = 0; i1 < n; i1 += batch) {
    const int i2 = std::min(i1 + batch, n), c = i2 - i1;
    MatrixD w1 = w.middleCols(i1, c);
    MatrixD err1 = MatrixD::Zero(m, c);
    for (int i = 0; i < c; ++i) {
      const int k = i1 + i;
      if (gs > 0 && k % gs == 0) {
        rounder.BeginGroup(k, MatrixD(w1.middleCols(i, std::min(gs, c - i))));
      }
      const double d = u(k, k);
      for (int r = 0; r < m; ++r) {
        double xhat;
        const int code = rounder.Round(r, k, w1(r, i), &xhat);
        out.codes[static_cast<size_t>(r) * n + k] = static_cast<uint16_t>(code);
        out.what(r, k) = xhat;
        err1(r, i) = (w1(r, i) - xhat) / d;
      }
      // w1[:, i:] -= err ⊗ U[k, k:i2]
      w1.rightCols(c - i).noalias() -= err1.col(i) * u.block(k, k, 1, c - i);
    }
    if (i2 < n) {
      MatrixD upd;
      QUANTD_RETURN_IF_ERROR(dev.Gemm(err1, MatrixD(u.block(i1, i2, c, n - i2)), &upd));
      w.rightCols(n - i2) -= upd;
    }
  }
  return out;
}

absl::StatusOr<LdlqResult> LdlqExplicit(Device& dev, const MatrixD& w, const MatrixD& h,
                                        ColumnRounder& rounder) {
  QUANTD_RETURN_IF_ERROR(CheckShapes(w, h));
  const int m = static_cast<int>(w.rows()), n = static_cast<int>(w.cols());
  // Reverse rows and columns: P H P = Lr Lrᵀ, so H = (P Lr P)(P Lr P)ᵀ with P Lr P upper.
  MatrixD hr = h.reverse();
  MatrixD lr;
  QUANTD_RETURN_IF_ERROR(dev.Cholesky(hr, &lr));
  MatrixD up = lr.reverse();  // upper triangular, H = up·upᵀ
  // Unit upper (U + I) = up·diag(1/diag(up)).
  MatrixD unit = up;
  for (int j = 0; j < n; ++j) unit.col(j) /= up(j, j);
  LdlqResult out;
  out.what.resize(m, n);
  out.codes.resize(static_cast<size_t>(m) * n);
  MatrixD delta = MatrixD::Zero(m, n);  // W − Ŵ over the columns done so far
  for (int k = 0; k < n; ++k) {
    for (int r = 0; r < m; ++r) {
      double x = w(r, k);
      for (int j = 0; j < k; ++j) x += delta(r, j) * unit(j, k);
      double xhat;
      out.codes[static_cast<size_t>(r) * n + k] = static_cast<uint16_t>(rounder.Round(r, k, x, &xhat));
      out.what(r, k) = xhat;
      delta(r, k) = w(r, k) - xhat;
    }
  }
  return out;
}

double RelativeProxyLoss(const MatrixD& w, const MatrixD& what, const MatrixD& h) {
  const MatrixD d = what - w;
  const double den = (w * h).cwiseProduct(w).sum();
  if (den == 0) return 0;
  return (d * h).cwiseProduct(d).sum() / den;
}

}  // namespace quantd::quant
