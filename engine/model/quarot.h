// QuaRot (Ashkboos et al. 2024) as a function-preserving model transform, before quantization:
//  1. every RMSNorm scale is fused into the linears it feeds (input_layernorm → q/k/v,
//     post_attention_layernorm → gate/up, model.norm → lm_head) and set to 1; a tied lm_head is
//     untied (a copy of the embedding) first;
//  2. the residual stream is rotated by a global randomized Hadamard R_res (hidden_size; Rht, so
//     64 = 2^6, 576 = 16·36 use our Hadamard constructions): x ↦ R_res x. Embeddings E ← E R_resᵀ,
//     readers (q, k, v, gate, up, lm_head) W ← W R_resᵀ, writers (o, down) W ← R_res W;
//  3. head-wise: every value head is rotated by R_head (head_dim): v's rows of head h ← R_head·
//     rows, o's columns of head h ← ·R_headᵀ;
//  4. online: before down_proj the activation is multiplied by R_down (intermediate_size; 172 is
//     a base order, 1536 = 128·12; other sizes get Rht's random orthogonal Kronecker fallback)
//     in the forward pass (LlamaWeights::online_down) and W_down ← W_down R_downᵀ; before o_proj
//     the attention output [num_heads][head_dim] is rotated across heads by R_o ⊗ I (R_o of
//     size num_heads; LlamaWeights::online_o) and W_o ← W_o (R_o ⊗ I)ᵀ. With step 3 o_proj's
//     input is rotated by R_o ⊗ R_head, a rotation of the whole attention width (QuaRot's
//     H_heads ⊗ H_head_dim, the first factor online).
// The rotated model computes the same function (exactly in real arithmetic). Rotations are
// randomized Hadamard transforms reconstructible from (size, seed); seeds derive from one seed.
// Thread-safety: stateless functions.
#ifndef QUANTD_ENGINE_MODEL_QUAROT_H_
#define QUANTD_ENGINE_MODEL_QUAROT_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/matrix.h"
#include "engine/model/config.h"
#include "engine/model/weight_source.h"
#include "engine/model/weights.h"
#include "engine/quant/rht.h"

namespace quantd::model {

// The transform's version: bumped whenever ApplyQuarot / QuarotLinear compute something else for
// the same seed, so that a job started under another version is not resumed with matrices from
// both (it is part of server::SpecFingerprint for quarot jobs).
// 1: residual, head-wise and down_proj rotations. 2: + the rotation across heads before o_proj.
inline constexpr int kQuarotVersion = 2;

struct QuarotSeeds {
  uint64_t residual = 0;
  uint64_t head = 0;
  uint64_t down = 0;
  uint64_t o = 0;
};
// residual = seed, head = seed ^ 0x5851F42D4C957F2D, down = seed ^ 0x14057B7EF767814F,
// o = seed ^ 0x2545F4914F6CDD1D.
QuarotSeeds QuarotSeedsFrom(uint64_t seed);

// OK when QuaRot's transform keeps the function of models of cfg's family: Llama, Mistral,
// Qwen2/Qwen3 (biases are rotated with their projection's outputs); INVALID_ARGUMENT with the
// reason for Gemma 2/3 (norms after o_proj / down_proj act on the rotated residual stream).
absl::Status QuarotSupported(const LlamaConfig& cfg);

// Rotates the whole model in place. Afterwards cfg->tie_word_embeddings is false, w->lm_head is
// set, every norm is 1, w->online_down = {intermediate_size, seeds.down} and
// w->online_o = {num_heads, seeds.o}.
// INVALID_ARGUMENT if the weights do not match cfg or already carry an online rotation, or
// !QuarotSupported(cfg).
absl::Status ApplyQuarot(LlamaConfig* cfg, LlamaWeights* w, uint64_t seed);

// One linear weight exactly as ApplyQuarot transforms it. `norm` is the RMSNorm scale feeding it
// (input_layernorm for q/k/v, post_attention_layernorm for gate/up; ignored for o/down).
// INVALID_ARGUMENT for a shape that does not match cfg.
absl::StatusOr<MatrixF> QuarotLinear(const LlamaConfig& cfg, Linear l, const MatrixF& w,
                                     const VectorF& norm, uint64_t seed);

// A stored linear (weights.h: one Linear, or Phi-3's fused qkv_proj / gate_up_proj) exactly as
// ApplyQuarot transforms its parts: each row block by QuarotLinear. `norm` as for QuarotLinear.
// INVALID_ARGUMENT for a shape that does not match cfg.
absl::StatusOr<MatrixF> QuarotStored(const LlamaConfig& cfg, const StoredLinear& s,
                                     const MatrixF& w, const VectorF& norm, uint64_t seed);

// The model ApplyQuarot builds, one layer at a time, without holding the whole model: each
// tensor it hands out is bit-identical to ApplyQuarot's (every rotation acts on rows
// independently, so a layer, a batch of embedding rows or a block of head rows rotates to the
// same bits alone as within the whole model). Used by Hessian tasks and the coordinator's
// assembly of quarot jobs, so a 7B-70B model is never rotated whole in memory.
// Thread-safety: like every WeightSource, one forward at a time.
class QuarotWeightSource : public WeightSource {
 public:
  // `cfg` is the unrotated model's config (`base` reads that model, with no online rotation).
  // INVALID_ARGUMENT when !QuarotSupported(cfg).
  static absl::StatusOr<std::unique_ptr<QuarotWeightSource>> Create(
      const LlamaConfig& cfg, std::unique_ptr<WeightSource> base, uint64_t seed);

  // The rotated model's config: tie_word_embeddings false, as ApplyQuarot leaves it.
  const LlamaConfig& config() const { return rotated_cfg_; }

  absl::StatusOr<const LayerWeights*> Layer(int layer) override;
  absl::Status Embed(absl::Span<const int32_t> tokens, MatrixF* out) override;
  absl::StatusOr<VectorF> FinalNorm() override;  // ones
  absl::Status Head(int begin, int count, MatrixF* out) override;
  OnlineRotation online_down() const override { return online_down_; }
  OnlineRotation online_o() const override { return online_o_; }

 private:
  QuarotWeightSource(const LlamaConfig& cfg, std::unique_ptr<WeightSource> base, uint64_t seed,
                     quant::Rht residual, quant::Rht head);
  const LlamaConfig cfg_;
  LlamaConfig rotated_cfg_;
  std::unique_ptr<WeightSource> base_;
  const uint64_t seed_;
  const quant::Rht residual_, head_;
  OnlineRotation online_down_, online_o_;
  LayerWeights layer_;
};

// Every row x of `rows` (length r.n()·head_dim, laid out [head][head_dim]) ← (R ⊗ I) x: for
// each offset d < head_dim the vector over heads (x[h·head_dim + d])_h is multiplied by R.
// Rows of another length are a programming error and leave `rows` unchanged.
void ApplyAcrossHeads(const quant::Rht& r, int head_dim, MatrixF* rows);
void ApplyAcrossHeads(const quant::Rht& r, int head_dim, MatrixD* rows);

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_MODEL_QUAROT_H_
