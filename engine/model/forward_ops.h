// Building blocks of the Llama forward pass, shared by the reference Forward (forward.h) and the
// layer-streamed, batched ForwardBatch (streamed_forward.h) so that both compute each row the
// same way. Matrices are fp32 row-major, one token per row.
// Thread-safety: stateless functions; calls on disjoint outputs may run concurrently.
#ifndef QUANTD_ENGINE_MODEL_FORWARD_OPS_H_
#define QUANTD_ENGINE_MODEL_FORWARD_OPS_H_

#include <optional>
#include <vector>

#include "absl/status/statusor.h"

#include "common/matrix.h"
#include "engine/model/config.h"
#include "engine/model/weights.h"
#include "engine/quant/rht.h"

namespace quantd::model::ops {

// RoPE inverse frequencies inv_freq[i] for i < head_dim / 2 of cfg.rope (rope.h: default,
// linear, llama3), for both forward passes.
std::vector<float> RopeInvFreq(const LlamaConfig& cfg);

// cos/sin tables [positions x head_dim/2] for positions 0 .. positions-1.
void RopeTables(const LlamaConfig& cfg, int positions, MatrixF* cos, MatrixF* sin);

// out = rmsnorm(x) * weight, row-wise.
void RmsNorm(const MatrixF& x, const VectorF& weight, float eps, MatrixF* out);

// Rotates each head of rows [0, m.rows()) of `m` (rows x heads*hd) in place, rotate_half
// convention: row t uses position t of the tables.
void ApplyRope(const MatrixF& cos, const MatrixF& sin, int heads, int hd,
               Eigen::Ref<MatrixF> m);

// Causal attention of one head of one sequence: q [T x hd] (scaled), k, v [T x hd] (the head's
// KV group), out [T x hd]. `scores` is scratch.
void AttentionHead(const Eigen::Ref<const MatrixF>& q, const Eigen::Ref<const MatrixF>& k,
                   const Eigen::Ref<const MatrixF>& v, Eigen::Ref<MatrixF> out,
                   MatrixF* scores);

// QuaRot's online rotations (LlamaWeights::online_down / online_o) as transforms; nullopt for
// size 0. INVALID_ARGUMENT when a size does not match cfg (intermediate_size / num_heads).
struct OnlineRhts {
  std::optional<quant::Rht> down, o;
};
absl::StatusOr<OnlineRhts> MakeOnlineRhts(const LlamaConfig& cfg, const OnlineRotation& down,
                                          const OnlineRotation& o);
inline absl::StatusOr<OnlineRhts> MakeOnlineRhts(const LlamaConfig& cfg, const LlamaWeights& w) {
  return MakeOnlineRhts(cfg, w.online_down, w.online_o);
}

// out = x · wᵀ (accumulate: out += x · wᵀ), x [rows x in], w [cols x in] row-major like
// Linear.weight. Large products run as fixed tiles (rows x output columns) across OpenMP threads;
// the results do not depend on the thread count.
void MatMulT(const MatrixF& x, const MatrixF& w, MatrixF* out, bool accumulate = false);

// g ← silu(g) ⊙ u, element-wise.
void SiluMul(const MatrixF& u, MatrixF* g);

}  // namespace quantd::model::ops

#endif  // QUANTD_ENGINE_MODEL_FORWARD_OPS_H_
