#include "engine/model/weights.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/str_util.h"
#include "common/status_macros.h"

namespace quantd::model {

LinearGroup GroupOf(Linear l) {
  switch (l) {
    case Linear::kQ:
    case Linear::kK:
    case Linear::kV:
      return LinearGroup::kQkv;
    case Linear::kO:
      return LinearGroup::kO;
    case Linear::kGate:
    case Linear::kUp:
      return LinearGroup::kGateUp;
    case Linear::kDown:
      return LinearGroup::kDown;
  }
  return LinearGroup::kQkv;
}

std::string_view LinearName(Linear l) {
  switch (l) {
    case Linear::kQ: return "q_proj";
    case Linear::kK: return "k_proj";
    case Linear::kV: return "v_proj";
    case Linear::kO: return "o_proj";
    case Linear::kGate: return "gate_proj";
    case Linear::kUp: return "up_proj";
    case Linear::kDown: return "down_proj";
  }
  return "?";
}

std::string_view GroupName(LinearGroup g) {
  switch (g) {
    case LinearGroup::kQkv: return "qkv";
    case LinearGroup::kO: return "o";
    case LinearGroup::kGateUp: return "gate_up";
    case LinearGroup::kDown: return "down";
  }
  return "?";
}

std::string LinearTensorName(int layer, Linear l) {
  const bool attn = GroupOf(l) == LinearGroup::kQkv || GroupOf(l) == LinearGroup::kO;
  return internal::Cat("model.layers.", layer, attn ? ".self_attn." : ".mlp.", LinearName(l),
                      ".weight");
}

int GroupInputDim(const LlamaConfig& c, LinearGroup g) {
  switch (g) {
    case LinearGroup::kQkv:
    case LinearGroup::kGateUp:
      return c.hidden_size;
    case LinearGroup::kO:
      return c.num_heads * c.head_dim;
    case LinearGroup::kDown:
      return c.intermediate_size;
  }
  return 0;
}

std::pair<int, int> LinearShape(const LlamaConfig& c, Linear l) {
  const int in = GroupInputDim(c, GroupOf(l));
  switch (l) {
    case Linear::kQ: return {c.num_heads * c.head_dim, in};
    case Linear::kK:
    case Linear::kV: return {c.num_kv_heads * c.head_dim, in};
    case Linear::kO: return {c.hidden_size, in};
    case Linear::kGate:
    case Linear::kUp: return {c.intermediate_size, in};
    case Linear::kDown: return {c.hidden_size, in};
  }
  return {0, 0};
}

MatrixF& MutableLinear(LlamaWeights& w, int layer, Linear l) {
  LayerWeights& lw = w.layers[layer];
  switch (l) {
    case Linear::kQ: return lw.q;
    case Linear::kK: return lw.k;
    case Linear::kV: return lw.v;
    case Linear::kO: return lw.o;
    case Linear::kGate: return lw.gate;
    case Linear::kUp: return lw.up;
    case Linear::kDown: return lw.down;
  }
  return lw.q;
}

const MatrixF& GetLinear(const LlamaWeights& w, int layer, Linear l) {
  return MutableLinear(const_cast<LlamaWeights&>(w), layer, l);
}

namespace {

// Reads `name` and checks its shape is exactly `want` (1 or 2 dims).
absl::StatusOr<MatrixF> ReadChecked(const Checkpoint& ckpt, const std::string& name,
                                    absl::string_view what, const std::vector<int64_t>& want) {
  QUANTD_ASSIGN_OR_RETURN(TensorView t, ckpt.Get(name));
  if (t.shape != want) {
    return absl::InvalidArgumentError(
        internal::Cat(what, ": weight has shape [", absl::StrJoin(t.shape, ","),
                     "], config.json says [", absl::StrJoin(want, ","), "] (tensor ", name, ")"));
  }
  return ckpt.ReadMatrix(name);
}

absl::StatusOr<VectorF> ReadVector(const Checkpoint& ckpt, const std::string& name,
                                   absl::string_view what, int n) {
  QUANTD_ASSIGN_OR_RETURN(MatrixF m, ReadChecked(ckpt, name, what, {n}));
  return VectorF(Eigen::Map<const VectorF>(m.data(), n));
}

}  // namespace

absl::StatusOr<LlamaWeights> LoadLlamaWeights(const Checkpoint& ckpt, const LlamaConfig& cfg) {
  LlamaWeights w;
  const int h = cfg.hidden_size;
  QUANTD_ASSIGN_OR_RETURN(w.embed, ReadChecked(ckpt, "model.embed_tokens.weight", "embed_tokens",
                                               {cfg.vocab_size, h}));
  w.layers.resize(cfg.num_layers);
  for (int i = 0; i < cfg.num_layers; ++i) {
    LayerWeights& lw = w.layers[i];
    const std::string prefix = internal::Cat("model.layers.", i, ".");
    QUANTD_ASSIGN_OR_RETURN(lw.attn_norm,
                            ReadVector(ckpt, prefix + "input_layernorm.weight",
                                       internal::Cat("layer ", i, " input_layernorm"), h));
    QUANTD_ASSIGN_OR_RETURN(lw.ffn_norm,
                            ReadVector(ckpt, prefix + "post_attention_layernorm.weight",
                                       internal::Cat("layer ", i, " post_attention_layernorm"), h));
    for (Linear l : kAllLinears) {
      auto [out, in] = LinearShape(cfg, l);
      QUANTD_ASSIGN_OR_RETURN(MutableLinear(w, i, l),
                              ReadChecked(ckpt, LinearTensorName(i, l),
                                          internal::Cat("layer ", i, " ", LinearName(l)),
                                          {out, in}));
    }
  }
  QUANTD_ASSIGN_OR_RETURN(w.final_norm, ReadVector(ckpt, "model.norm.weight", "model.norm", h));
  if (!cfg.tie_word_embeddings) {
    QUANTD_ASSIGN_OR_RETURN(w.lm_head,
                            ReadChecked(ckpt, "lm_head.weight", "lm_head", {cfg.vocab_size, h}));
  }
  return w;
}

}  // namespace quantd::model
