#include "engine/quant/block_ldlq.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace quantd::quant {
namespace {

constexpr int kBatchColumns = 128;
// Fewer rows than this are quantized on one thread: tiny OpenMP regions cost more than they save
// (and spin badly on an oversubscribed machine).
constexpr int kMinParallelRows = 256;

// Quantizes every row of x [m×g] with the codebook into what(:, c0:c0+g) and codes.
// `blocks` is the number of g-column blocks per row in `codes`.
void QuantizeBlock(const MatrixD& x, int block, int c0, const VectorCodebook& cb, MatrixD* what,
                   std::vector<uint16_t>* codes, int blocks) {
  const int g = cb.dim(), cpv = cb.codes_per_vector();
  const int m = static_cast<int>(x.rows());
#pragma omp parallel for schedule(static) if (m >= kMinParallelRows)
  for (int r = 0; r < m; ++r) {
    float in[64], out[64];
    for (int j = 0; j < g; ++j) in[j] = static_cast<float>(x(r, j));
    uint16_t* code = codes->data() + (static_cast<size_t>(r) * blocks + block) * cpv;
    cb.Quantize(in, code, out);
    for (int j = 0; j < g; ++j) (*what)(r, c0 + j) = out[j];
  }
}

}  // namespace

BlockLdlqResult RoundToCodebook(const MatrixD& w, const VectorCodebook& cb) {
  const int g = cb.dim();
  const int blocks = static_cast<int>(w.cols()) / g;
  BlockLdlqResult out;
  out.what = MatrixD::Zero(w.rows(), w.cols());
  out.codes.resize(static_cast<size_t>(w.rows()) * blocks * cb.codes_per_vector());
  for (int b = 0; b < blocks; ++b) {
    QuantizeBlock(MatrixD(w.middleCols(b * g, g)), b, b * g, cb, &out.what, &out.codes, blocks);
  }
  return out;
}

absl::StatusOr<BlockLdlqResult> BlockLdlq(Device& dev, const MatrixD& w, const MatrixD& h,
                                          const MatrixD& lower, const VectorCodebook& cb,
                                          const BlockLdlqParams& params) {
  const int g = cb.dim();
  const int blocks = g > 0 ? static_cast<int>(w.cols()) / g : 0;
  BlockLdlqResult out;
  out.codes.assign(static_cast<size_t>(w.rows()) * blocks * cb.codes_per_vector(), 0);
  auto quantize = [&](const MatrixD& x, int block, MatrixD* q) {
    q->resize(x.rows(), x.cols());
    QuantizeBlock(x, block, 0, cb, q, &out.codes, blocks);
  };
  QUANTD_ASSIGN_OR_RETURN(out.what, BlockLdlqWith(dev, w, h, lower, g, params.greedy_passes, quantize));
  return out;
}

absl::StatusOr<MatrixD> BlockLdlqWith(Device& dev, const MatrixD& w, const MatrixD& h,
                                      const MatrixD& lower, int g, int greedy_passes,
                                      const BlockQuantizeFn& quantize) {
  const int m = static_cast<int>(w.rows()), n = static_cast<int>(w.cols());
  if (g <= 0 || g > 64 || n % g != 0 || lower.rows() != n || h.rows() != n) {
    return absl::InvalidArgumentError(absl::StrCat("block LDLQ: n = ", n, " with block size ", g,
                                                   ", Hessian [", h.rows(), ",", h.cols(), "]"));
  }
  const int blocks = n / g;
  // Unit block-lower L: right-multiply each block column by DL_i⁻¹.
  MatrixD l = lower;
  for (int b = 0; b < blocks; ++b) {
    const int c0 = b * g;
    MatrixD dl = lower.block(c0, c0, g, g);
    // rows ≥ c0 of column block b:  X ← X·DL⁻¹  ⇔  DLᵀ Xᵀ = ... solve with the lower DL.
    MatrixD xt = l.block(c0, c0, n - c0, g).transpose();  // g × (n−c0)
    QUANTD_RETURN_IF_ERROR(dev.SolveLower(dl, true, &xt));  // DL⁻ᵀ Xᵀ = (X DL⁻¹)ᵀ
    l.block(c0, c0, n - c0, g) = xt.transpose();
  }

  MatrixD what = MatrixD::Zero(m, n), q;
  MatrixD err = MatrixD::Zero(m, n);  // W − Ŵ for the columns already quantized
  const int batch = std::max(g, (kBatchColumns / g) * g);
  for (int b1 = n; b1 > 0; b1 -= batch) {
    const int b0 = std::max(0, b1 - batch), c = b1 - b0;
    // Feedback from all later batches at once.
    MatrixD x = w.middleCols(b0, c);
    if (b1 < n) {
      MatrixD fb;
      QUANTD_RETURN_IF_ERROR(
          dev.Gemm(MatrixD(err.rightCols(n - b1)), MatrixD(l.block(b1, b0, n - b1, c)), &fb));
      x += fb;
    }
    for (int k = b1 - g; k >= b0; k -= g) {
      const int local = k - b0;
      MatrixD xk = x.middleCols(local, g);
      if (k + g < b1) {
        xk.noalias() += err.middleCols(k + g, b1 - k - g) * l.block(k + g, k, b1 - k - g, g);
      }
      quantize(xk, k / g, &q);
      what.middleCols(k, g) = q;
      err.middleCols(k, g) = w.middleCols(k, g) - q;
    }
  }

  // Greedy block-coordinate descent with the residual R = (W − Ŵ) H kept up to date.
  if (greedy_passes > 0) {
    MatrixD r;
    QUANTD_RETURN_IF_ERROR(dev.Gemm(err, h, &r));
    std::vector<Eigen::LLT<Eigen::MatrixXd>> diag(blocks);
    for (int b = 0; b < blocks; ++b) diag[b].compute(h.block(b * g, b * g, g, g));
    for (int pass = 0; pass < greedy_passes; ++pass) {
      for (int b = 0; b < blocks; ++b) {
        const int k = b * g;
        Eigen::MatrixXd rhs = r.middleCols(k, g).transpose();  // g×m
        MatrixD target = what.middleCols(k, g) + MatrixD(diag[b].solve(rhs).transpose());
        quantize(target, b, &q);
        MatrixD delta = q - what.middleCols(k, g);  // Ŵ change; err changes by −delta
        what.middleCols(k, g) = q;
        if (delta.squaredNorm() == 0) continue;
        r.noalias() -= delta * h.middleRows(k, g);
      }
    }
  }
  return what;
}

}  // namespace quantd::quant
