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

std::vector<StoredLinear> StoredLinears(const LlamaConfig& c) {
  std::vector<StoredLinear> v;
  if (c.fused_qkv) {
    v.push_back({"qkv_proj", LinearGroup::kQkv, {Linear::kQ, Linear::kK, Linear::kV}});
  } else {
    for (Linear l : {Linear::kQ, Linear::kK, Linear::kV}) v.push_back({LinearName(l), GroupOf(l), {l}});
  }
  v.push_back({LinearName(Linear::kO), LinearGroup::kO, {Linear::kO}});
  if (c.fused_gate_up) {
    v.push_back({"gate_up_proj", LinearGroup::kGateUp, {Linear::kGate, Linear::kUp}});
  } else {
    for (Linear l : {Linear::kGate, Linear::kUp}) v.push_back({LinearName(l), GroupOf(l), {l}});
  }
  v.push_back({LinearName(Linear::kDown), LinearGroup::kDown, {Linear::kDown}});
  return v;
}

std::string StoredTensorName(int layer, const StoredLinear& s) {
  const bool attn = s.group == LinearGroup::kQkv || s.group == LinearGroup::kO;
  return internal::Cat("model.layers.", layer, attn ? ".self_attn." : ".mlp.", s.name, ".weight");
}

std::pair<int, int> StoredShape(const LlamaConfig& c, const StoredLinear& s) {
  int rows = 0;
  for (Linear l : s.parts) rows += LinearShape(c, l).first;
  return {rows, GroupInputDim(c, s.group)};
}

MatrixF GatherStored(const LayerWeights& lw, const StoredLinear& s) {
  if (s.parts.size() == 1) return GetLinear(lw, s.parts[0]);
  Eigen::Index rows = 0, cols = 0;
  for (Linear l : s.parts) {
    rows += GetLinear(lw, l).rows();
    cols = GetLinear(lw, l).cols();
  }
  MatrixF m(rows, cols);
  Eigen::Index r = 0;
  for (Linear l : s.parts) {
    const MatrixF& p = GetLinear(lw, l);
    m.middleRows(r, p.rows()) = p;
    r += p.rows();
  }
  return m;
}

absl::Status ScatterStored(const LlamaConfig& c, const StoredLinear& s, MatrixF m,
                           LayerWeights* lw, std::string_view what) {
  const auto [out, in] = StoredShape(c, s);
  if (m.rows() != out || m.cols() != in) {
    return absl::InvalidArgumentError(internal::Cat(what, ": weight has shape [", m.rows(), ",",
                                                   m.cols(), "], config.json says [", out, ",",
                                                   in, "]"));
  }
  if (s.parts.size() == 1) {
    MutableLinear(*lw, s.parts[0]) = std::move(m);
    return absl::OkStatus();
  }
  Eigen::Index r = 0;
  for (Linear l : s.parts) {
    const int rows = LinearShape(c, l).first;
    MutableLinear(*lw, l) = m.middleRows(r, rows);
    r += rows;
  }
  return absl::OkStatus();
}

absl::StatusOr<StoredLinear> FindStoredLinear(const LlamaConfig& c, int layer,
                                              std::string_view tensor_name) {
  for (const StoredLinear& s : StoredLinears(c)) {
    if (StoredTensorName(layer, s) == tensor_name) return s;
  }
  return absl::NotFoundError(internal::Cat(tensor_name, " is not a linear weight of layer ", layer,
                                          " of this ", ArchitectureName(c.family), " model"));
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

std::vector<LayerVectorSpec> LayerVectors(const LlamaConfig& c) {
  const int h = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  std::vector<LayerVectorSpec> v = {{"input_layernorm.weight", &LayerWeights::attn_norm, h}};
  if (c.sandwich_norms) {
    v.push_back({"post_attention_layernorm.weight", &LayerWeights::post_attn_norm, h});
    v.push_back({"pre_feedforward_layernorm.weight", &LayerWeights::ffn_norm, h});
    v.push_back({"post_feedforward_layernorm.weight", &LayerWeights::post_ffn_norm, h});
  } else {
    v.push_back({"post_attention_layernorm.weight", &LayerWeights::ffn_norm, h});
  }
  if (c.qkv_bias) {
    v.push_back({"self_attn.q_proj.bias", &LayerWeights::q_bias, q});
    v.push_back({"self_attn.k_proj.bias", &LayerWeights::k_bias, kv});
    v.push_back({"self_attn.v_proj.bias", &LayerWeights::v_bias, kv});
  }
  if (c.o_bias) v.push_back({"self_attn.o_proj.bias", &LayerWeights::o_bias, h});
  if (c.qk_norm) {
    v.push_back({"self_attn.q_norm.weight", &LayerWeights::q_norm, c.head_dim});
    v.push_back({"self_attn.k_norm.weight", &LayerWeights::k_norm, c.head_dim});
  }
  return v;
}

absl::Status CheckLayerVectors(const LlamaConfig& c, int layer, const LayerWeights& lw) {
  for (const LayerVectorSpec& s : LayerVectors(c)) {
    const VectorF& v = lw.*s.member;
    if (v.size() != s.size) {
      return absl::InvalidArgumentError(internal::Cat("layer ", layer, " ", s.suffix, ": has ",
                                                     v.size(), " values, config says ", s.size));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<LlamaWeights> LoadLlamaWeights(const Checkpoint& ckpt, const LlamaConfig& cfg) {
  CheckpointWeightSource src(cfg, ckpt);
  return MaterializeWeights(cfg, src);
}

}  // namespace quantd::model
