#include "engine/model/weights.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/str_util.h"
#include "common/status_macros.h"
#include "engine/model/weight_source.h"

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
  return MutableLinear(w.layers[layer], l);
}

const MatrixF& GetLinear(const LayerWeights& lw, Linear l) {
  return MutableLinear(const_cast<LayerWeights&>(lw), l);
}

MatrixF& MutableLinear(LayerWeights& lw, Linear l) {
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

absl::StatusOr<LlamaWeights> LoadLlamaWeights(const Checkpoint& ckpt, const LlamaConfig& cfg) {
  CheckpointWeightSource src(cfg, ckpt);
  return MaterializeWeights(cfg, src);
}

}  // namespace quantd::model
