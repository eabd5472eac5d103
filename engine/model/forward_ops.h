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

// RoPE inverse frequencies inv_freq[i] for i < RotaryDim / 2 of cfg.rope (rope.h), for both
// forward passes.
std::vector<float> RopeInvFreq(const LlamaConfig& cfg);

// cos/sin tables [positions x RotaryDim/2] for positions 0 .. positions-1 of a sequence of
// `seq_len` tokens (longrope's factors depend on it; 0: positions), times the rope's
// attention_factor (yarn, longrope).
void RopeTables(const LlamaConfig& cfg, int positions, MatrixF* cos, MatrixF* sin);
void RopeTables(const RopeParams& rope, int head_dim, int positions, MatrixF* cos, MatrixF* sin,
                int seq_len = 0);

// The RoPE tables of every layer kind of a model for sequences of up to `positions` tokens:
// the global rope for all layers, rope_local for Gemma 3's sliding layers (cfg.has_local_rope),
// each also with longrope's long factors when a sequence that long uses them.
class RopeTableSet {
 public:
  RopeTableSet(const LlamaConfig& cfg, int positions);
  // The tables of `layer` for a sequence of `seq_len` <= positions tokens.
  const MatrixF& Cos(const LlamaConfig& cfg, int layer, int seq_len) const {
    return Pick(cfg, layer, seq_len).cos;
  }
  const MatrixF& Sin(const LlamaConfig& cfg, int layer, int seq_len) const {
    return Pick(cfg, layer, seq_len).sin;
  }

 private:
  struct Tables {
    MatrixF cos, sin;
  };
  const Tables& Pick(const LlamaConfig& cfg, int layer, int seq_len) const;
  Tables global_[2], local_[2];  // [1]: longrope's long factors
};

// out = rmsnorm(x) * (offset + weight), row-wise (offset 1: Gemma's (1 + w) norms).
void RmsNorm(const MatrixF& x, const VectorF& weight, float eps, MatrixF* out,
             float offset = 0.0f);
// RmsNorm with the config's eps and offset.
void Norm(const LlamaConfig& cfg, const MatrixF& x, const VectorF& weight, MatrixF* out);

// The embedding rows `x` times cfg.embed_scale (Gemma), in place; nothing when it is 1.
void ScaleEmbedding(const LlamaConfig& cfg, MatrixF* x);

// After the q/k/v projections of rows of one layer: adds the biases (Qwen2) and applies the
// per-head q/k RMSNorm (Qwen3), in place, when the layer has them.
void QkvPost(const LlamaConfig& cfg, const LayerWeights& lw, MatrixF* q, MatrixF* k, MatrixF* v);

// x += y where y is a projection's output (o_proj or down_proj): `bias` (when non-empty) is
// added to y first and Gemma 2's post norm `post_norm` (when non-empty) applied to it. `y` is
// overwritten.
void AddResidual(const LlamaConfig& cfg, const VectorF& bias, const VectorF& post_norm,
                 MatrixF* y, MatrixF* x);
// Whether AddResidual would only add (no bias, no post norm): then callers may accumulate the
// product into x directly.
inline bool PlainResidual(const VectorF& bias, const VectorF& post_norm) {
  return bias.size() == 0 && post_norm.size() == 0;
}

// The final logits soft-capping cap·tanh(l / cap) in place (Gemma 2); nothing when cap is 0.
void SoftcapLogits(const LlamaConfig& cfg, MatrixF* logits);
// m ← cap·tanh(m / cap) (cap > 0).
void Softcap(float cap, MatrixF* m);

// Rotates each head of rows [0, m.rows()) of `m` (rows x heads*hd) in place, rotate_half
// convention over the first 2 * cos.cols() dims of each head (the rest pass through: partial
// rotary): row t uses position t of the tables.
void ApplyRope(const MatrixF& cos, const MatrixF& sin, int heads, int hd,
               Eigen::Ref<MatrixF> m);

// Causal attention of one head of one sequence: q [T x hd] (scaled), k, v [T x hd] (the head's
// KV group), out [T x hd]. `scores` is scratch. window > 0: the query at t sees keys s with
// t - window < s <= t (sliding window). softcap > 0: scores become softcap·tanh(score/softcap)
// before the softmax (Gemma 2).
void AttentionHead(const Eigen::Ref<const MatrixF>& q, const Eigen::Ref<const MatrixF>& k,
                   const Eigen::Ref<const MatrixF>& v, Eigen::Ref<MatrixF> out,
                   MatrixF* scores, int window = 0, float softcap = 0.0f);

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
// g ← act(g) ⊙ u with the config's activation (silu: SwiGLU; gelu_pytorch_tanh: GeGLU).
void GatedActivation(const LlamaConfig& cfg, const MatrixF& u, MatrixF* g);

}  // namespace quantd::model::ops

#endif  // QUANTD_ENGINE_MODEL_FORWARD_OPS_H_
