#include "engine/model/forward_ops.h"

#include <algorithm>
#include <cmath>

#include <omp.h>

#include "common/status_macros.h"
#include "common/str_util.h"
#include "engine/model/rope.h"

namespace quantd::model::ops {

std::vector<float> RopeInvFreq(const LlamaConfig& cfg) {
  return RopeInverseFrequencies(cfg.rope, cfg.head_dim);
}

void RopeTables(const LlamaConfig& cfg, int positions, MatrixF* cos, MatrixF* sin) {
  const std::vector<float> inv_freq = RopeInvFreq(cfg);
  const int half = static_cast<int>(inv_freq.size());
  cos->resize(positions, half);
  sin->resize(positions, half);
  for (int i = 0; i < half; ++i) {
    for (int t = 0; t < positions; ++t) {
      const float angle = static_cast<float>(t) * inv_freq[i];
      (*cos)(t, i) = std::cos(angle);
      (*sin)(t, i) = std::sin(angle);
    }
  }
}

void RmsNorm(const MatrixF& x, const VectorF& weight, float eps, MatrixF* out) {
  out->resize(x.rows(), x.cols());
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    const float ms = x.row(t).squaredNorm() / static_cast<float>(x.cols());
    const float inv = 1.0f / std::sqrt(ms + eps);
    out->row(t) = (x.row(t) * inv).cwiseProduct(weight.transpose());
  }
}

void ApplyRope(const MatrixF& cos, const MatrixF& sin, int heads, int hd,
               Eigen::Ref<MatrixF> m) {
  const int half = hd / 2;
  for (Eigen::Index t = 0; t < m.rows(); ++t) {
    float* row = m.row(t).data();
    const float* c = cos.row(t).data();
    const float* s = sin.row(t).data();
    for (int h = 0; h < heads; ++h) {
      float* v = row + h * hd;
      for (int i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
      }
    }
  }
}

void AttentionHead(const Eigen::Ref<const MatrixF>& q, const Eigen::Ref<const MatrixF>& k,
                   const Eigen::Ref<const MatrixF>& v, Eigen::Ref<MatrixF> out,
                   MatrixF* scores) {
  // Row blocks: block [r0, r0+rows) only sees keys [0, r0+rows).
  constexpr int kBlock = 64;
  const int T = static_cast<int>(q.rows());
  for (int r0 = 0; r0 < T; r0 += kBlock) {
    const int rows = std::min(kBlock, T - r0), cols = r0 + rows;
    scores->noalias() = q.middleRows(r0, rows) * k.topRows(cols).transpose();
    for (int i = 0; i < rows; ++i) {
      auto live = scores->row(i).head(r0 + i + 1).array();
      live = (live - live.maxCoeff()).exp();  // vectorized exp
      live *= 1.0f / live.sum();
      scores->row(i).tail(rows - i - 1).setZero();
    }
    out.middleRows(r0, rows).noalias() = *scores * v.topRows(cols);
  }
}

absl::StatusOr<OnlineRhts> MakeOnlineRhts(const LlamaConfig& cfg, const OnlineRotation& down,
                                          const OnlineRotation& o) {
  OnlineRhts r;
  if (down.size != 0) {
    if (down.size != cfg.intermediate_size) {
      return absl::InvalidArgumentError(internal::Cat("online down_proj rotation has size ",
                                                     down.size, ", intermediate_size is ",
                                                     cfg.intermediate_size));
    }
    QUANTD_ASSIGN_OR_RETURN(r.down, quant::MakeRht(down.size, down.seed));
  }
  if (o.size != 0) {
    if (o.size != cfg.num_heads) {
      return absl::InvalidArgumentError(internal::Cat("online o_proj rotation has size ", o.size,
                                                     ", num_heads is ", cfg.num_heads));
    }
    QUANTD_ASSIGN_OR_RETURN(r.o, quant::MakeRht(o.size, o.seed));
  }
  return r;
}

void MatMulT(const MatrixF& x, const MatrixF& w, MatrixF* out, bool accumulate) {
  const Eigen::Index rows = x.rows(), cols = w.rows();
  if (!accumulate) out->resize(rows, cols);
  // Large products run as fixed tiles of 512 rows x 256 output columns spread over OpenMP
  // threads. The tiles do not depend on the thread count, so neither do the results (a retried
  // task on a worker with other cores gives the same bytes).
  constexpr Eigen::Index kRows = 512, kCols = 256;
  const Eigen::Index rt = (rows + kRows - 1) / kRows, ct = (cols + kCols - 1) / kCols;
  const double flops = 2.0 * rows * x.cols() * cols;
  if (flops < 4e6 || rt * ct == 1) {
    if (accumulate) {
      out->noalias() += x * w.transpose();
    } else {
      out->noalias() = x * w.transpose();
    }
    return;
  }
  const int tiles = static_cast<int>(rt * ct);
#pragma omp parallel for schedule(dynamic, 1) if (!omp_in_parallel())
  for (int t = 0; t < tiles; ++t) {
    const Eigen::Index r0 = (t / ct) * kRows, c0 = (t % ct) * kCols;
    const Eigen::Index m = std::min(kRows, rows - r0), n = std::min(kCols, cols - c0);
    auto dst = out->block(r0, c0, m, n);
    if (accumulate) {
      dst.noalias() += x.middleRows(r0, m) * w.middleRows(c0, n).transpose();
    } else {
      dst.noalias() = x.middleRows(r0, m) * w.middleRows(c0, n).transpose();
    }
  }
}

void SiluMul(const MatrixF& u, MatrixF* g) {
  g->array() = g->array() / (1.0f + (-g->array()).exp()) * u.array();
}

}  // namespace quantd::model::ops
