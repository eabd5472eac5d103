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
  RopeTables(cfg.rope, cfg.head_dim, positions, cos, sin);
}

RopeTableSet::RopeTableSet(const LlamaConfig& cfg, int positions) {
  auto build = [&](const RopeParams& p, Tables* t) {
    RopeTables(p, cfg.head_dim, positions, &t[0].cos, &t[0].sin, /*seq_len=*/1);  // short
    if (RopeUsesLongFactors(p, positions)) {
      RopeTables(p, cfg.head_dim, positions, &t[1].cos, &t[1].sin, positions);
    }
  };
  build(cfg.rope, global_);
  if (cfg.has_local_rope) build(cfg.rope_local, local_);
}

const RopeTableSet::Tables& RopeTableSet::Pick(const LlamaConfig& cfg, int layer,
                                               int seq_len) const {
  const RopeParams& p = cfg.LayerRope(layer);
  const Tables* t = &p == &cfg.rope_local ? local_ : global_;
  return t[RopeUsesLongFactors(p, seq_len) ? 1 : 0];
}

void RopeTables(const RopeParams& rope, int head_dim, int positions, MatrixF* cos, MatrixF* sin,
                int seq_len) {
  const std::vector<float> inv_freq =
      RopeInverseFrequencies(rope, head_dim, seq_len > 0 ? seq_len : positions);
  const int half = static_cast<int>(inv_freq.size());
  // transformers: cos(angle) * attention_scaling in fp32.
  const float scaling = static_cast<float>(rope.attention_factor);
  cos->resize(positions, half);
  sin->resize(positions, half);
  for (int i = 0; i < half; ++i) {
    for (int t = 0; t < positions; ++t) {
      const float angle = static_cast<float>(t) * inv_freq[i];
      (*cos)(t, i) = std::cos(angle) * scaling;
      (*sin)(t, i) = std::sin(angle) * scaling;
    }
  }
}

void RmsNorm(const MatrixF& x, const VectorF& weight, float eps, MatrixF* out, float offset) {
  out->resize(x.rows(), x.cols());
  if (offset != 0.0f) {
    const VectorF w = weight.array() + offset;  // fp32 (1 + w), as Gemma2RMSNorm
    RmsNorm(x, w, eps, out);
    return;
  }
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    const float ms = x.row(t).squaredNorm() / static_cast<float>(x.cols());
    const float inv = 1.0f / std::sqrt(ms + eps);
    out->row(t) = (x.row(t) * inv).cwiseProduct(weight.transpose());
  }
}

void Norm(const LlamaConfig& cfg, const MatrixF& x, const VectorF& weight, MatrixF* out) {
  RmsNorm(x, weight, static_cast<float>(cfg.rms_norm_eps), out, cfg.norm_plus_one ? 1.0f : 0.0f);
}

void ScaleEmbedding(const LlamaConfig& cfg, MatrixF* x) {
  if (cfg.embed_scale != 1.0f) *x *= cfg.embed_scale;
}

namespace {

// Per-head RMSNorm over head_dim of every row of m [rows x heads*hd], in place.
void HeadNorm(const LlamaConfig& cfg, const VectorF& weight, int heads, MatrixF* m) {
  const int hd = cfg.head_dim;
  const float eps = static_cast<float>(cfg.rms_norm_eps);
  const VectorF w = cfg.norm_plus_one ? VectorF(weight.array() + 1.0f) : weight;
  for (Eigen::Index t = 0; t < m->rows(); ++t) {
    for (int h = 0; h < heads; ++h) {
      auto seg = m->row(t).segment(h * hd, hd);
      const float inv = 1.0f / std::sqrt(seg.squaredNorm() / static_cast<float>(hd) + eps);
      seg = (seg * inv).cwiseProduct(w.transpose());
    }
  }
}

void AddBias(const VectorF& b, MatrixF* m) {
  if (b.size() != 0) m->rowwise() += b.transpose();
}

}  // namespace

void QkvPost(const LlamaConfig& cfg, const LayerWeights& lw, MatrixF* q, MatrixF* k, MatrixF* v) {
  AddBias(lw.q_bias, q);
  AddBias(lw.k_bias, k);
  AddBias(lw.v_bias, v);
  if (lw.q_norm.size() != 0) HeadNorm(cfg, lw.q_norm, cfg.num_heads, q);
  if (lw.k_norm.size() != 0) HeadNorm(cfg, lw.k_norm, cfg.num_kv_heads, k);
}

void AddResidual(const LlamaConfig& cfg, const VectorF& bias, const VectorF& post_norm,
                 MatrixF* y, MatrixF* x) {
  AddBias(bias, y);
  if (post_norm.size() != 0) {
    MatrixF normed;
    Norm(cfg, *y, post_norm, &normed);
    *x += normed;
    return;
  }
  *x += *y;
}

void SoftcapLogits(const LlamaConfig& cfg, MatrixF* logits) {
  if (cfg.final_softcap <= 0) return;
  Softcap(static_cast<float>(cfg.final_softcap), logits);
}

void Softcap(float cap, MatrixF* m) { m->array() = (m->array() / cap).tanh() * cap; }

void ApplyRope(const MatrixF& cos, const MatrixF& sin, int heads, int hd,
               Eigen::Ref<MatrixF> m) {
  const int half = static_cast<int>(cos.cols());  // hd / 2 unless partial rotary
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
                   MatrixF* scores, int window, float softcap) {
  // Row blocks: block [r0, r0+rows) only sees keys [0, r0+rows).
  constexpr int kBlock = 64;
  const int T = static_cast<int>(q.rows());
  for (int r0 = 0; r0 < T; r0 += kBlock) {
    const int rows = std::min(kBlock, T - r0), cols = r0 + rows;
    scores->noalias() = q.middleRows(r0, rows) * k.topRows(cols).transpose();
    for (int i = 0; i < rows; ++i) {
      const int t = r0 + i;
      const int lo = window > 0 ? std::max(0, t - window + 1) : 0;
      auto live = scores->row(i).segment(lo, t - lo + 1).array();
      if (softcap > 0) live = (live / softcap).tanh() * softcap;
      live = (live - live.maxCoeff()).exp();  // vectorized exp
      live *= 1.0f / live.sum();
      scores->row(i).head(lo).setZero();
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

void GatedActivation(const LlamaConfig& cfg, const MatrixF& u, MatrixF* g) {
  switch (cfg.act) {
    case Activation::kSilu:
      SiluMul(u, g);
      return;
    case Activation::kGeluTanh: {
      // torch gelu(approximate="tanh"): 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
      const float k = 0.7978845608028654f;  // √(2/π)
      auto x = g->array();
      g->array() = 0.5f * x * (1.0f + (k * (x + 0.044715f * x.cube())).tanh()) * u.array();
      return;
    }
  }
}

}  // namespace quantd::model::ops
