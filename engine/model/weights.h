// In-memory fp32 weights of a Llama-family model and the naming of its linear layers.
// Linear weights are row-major [out][in] (PyTorch Linear.weight); y = x * Wᵀ.
// Thread-safety: plain value types; concurrent reads are safe, writes need external locking.
#ifndef QUANTD_ENGINE_MODEL_WEIGHTS_H_
#define QUANTD_ENGINE_MODEL_WEIGHTS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/matrix.h"
#include "engine/format/checkpoint.h"
#include "engine/model/config.h"

namespace quantd::model {

enum class Linear { kQ, kK, kV, kO, kGate, kUp, kDown };
inline constexpr Linear kAllLinears[] = {Linear::kQ,    Linear::kK,  Linear::kV,   Linear::kO,
                                         Linear::kGate, Linear::kUp, Linear::kDown};
// Linear layers that share one input (and so one Hessian).
enum class LinearGroup { kQkv, kO, kGateUp, kDown };
inline constexpr LinearGroup kAllGroups[] = {LinearGroup::kQkv, LinearGroup::kO,
                                             LinearGroup::kGateUp, LinearGroup::kDown};
inline constexpr int kNumGroups = 4;

LinearGroup GroupOf(Linear l);
std::string_view LinearName(Linear l);     // "q_proj", "k_proj", ..., "down_proj"
std::string_view GroupName(LinearGroup g);  // "qkv", "o", "gate_up", "down"
// HF tensor name, e.g. "model.layers.3.self_attn.q_proj.weight", "model.layers.3.mlp.down_proj.weight".
std::string LinearTensorName(int layer, Linear l);
// in_features of the group: hidden_size for qkv and gate_up, num_heads*head_dim for o,
// intermediate_size for down.
int GroupInputDim(const LlamaConfig& c, LinearGroup g);
// [out, in] of a linear layer according to the config.
std::pair<int, int> LinearShape(const LlamaConfig& c, Linear l);

struct LayerWeights;

// A linear weight as the checkpoint stores it: one Linear, or (Phi-3: cfg.fused_qkv /
// fused_gate_up) the Linears of one group stacked by rows, self_attn.qkv_proj = [q; k; v] and
// mlp.gate_up_proj = [gate; up]. Each stored linear is one quantize task and one packed matrix,
// quantized with its group's Hessian (the parts share their input).
struct StoredLinear {
  std::string_view name;     // "q_proj", ..., "down_proj", "qkv_proj", "gate_up_proj"
  LinearGroup group;
  std::vector<Linear> parts;  // row blocks, top to bottom
};
// The stored linears of every layer of `c`, in a fixed order (the q/k/v group, o, the gate/up
// group, down).
std::vector<StoredLinear> StoredLinears(const LlamaConfig& c);
// HF tensor name, e.g. "model.layers.3.self_attn.qkv_proj.weight".
std::string StoredTensorName(int layer, const StoredLinear& s);
// [out, in]: the parts' rows summed, their shared in_features.
std::pair<int, int> StoredShape(const LlamaConfig& c, const StoredLinear& s);
// The stored matrix of `s` from the parts in `lw` (stacked rows).
MatrixF GatherStored(const LayerWeights& lw, const StoredLinear& s);
// Splits `m` (StoredShape) into the parts of `lw`. INVALID_ARGUMENT (naming `what`) when `m`
// does not have the stored shape.
absl::Status ScatterStored(const LlamaConfig& c, const StoredLinear& s, MatrixF m,
                           LayerWeights* lw, std::string_view what);
// The stored linear of `layer` named `tensor_name` (a ".weight" name); NOT_FOUND if none.
absl::StatusOr<StoredLinear> FindStoredLinear(const LlamaConfig& c, int layer,
                                              std::string_view tensor_name);

struct LayerWeights {
  // attn_norm: input_layernorm. ffn_norm: the MLP's input norm (post_attention_layernorm, or
  // Gemma 2's pre_feedforward_layernorm). [hidden]
  VectorF attn_norm, ffn_norm;
  MatrixF q, k, v, o, gate, up, down;
  // Empty unless the config asks for them (LayerVectors below).
  VectorF q_bias, k_bias, v_bias, o_bias;  // [out] of each projection
  VectorF q_norm, k_norm;                  // [head_dim] (Qwen3)
  VectorF post_attn_norm, post_ffn_norm;   // [hidden] (Gemma 2 sandwich norms)
};

// A 1-D tensor of a decoder layer: "model.layers.<l>." + suffix, stored in `member`.
struct LayerVectorSpec {
  std::string_view suffix;  // e.g. "input_layernorm.weight", "self_attn.q_proj.bias"
  VectorF LayerWeights::*member;
  int size;
};
// Every 1-D tensor a decoder layer of `c` has (norms, biases, q/k norms), in a fixed order.
std::vector<LayerVectorSpec> LayerVectors(const LlamaConfig& c);
// INVALID_ARGUMENT naming the layer and tensor when a vector of `lw` does not have the size
// LayerVectors(c) says.
absl::Status CheckLayerVectors(const LlamaConfig& c, int layer, const LayerWeights& lw);

// A randomized Hadamard transform applied to an activation online, in the forward pass
// (quant::MakeRht(size, seed): x ↦ V·S·x). size 0 = none.
struct OnlineRotation {
  int size = 0;
  uint64_t seed = 0;
};

struct LlamaWeights {
  MatrixF embed;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  VectorF final_norm;  // [hidden]
  MatrixF lm_head;     // [vocab, hidden]; empty when tied to embed
  // QuaRot (quarot.h): the input of every down_proj is rotated online before the product.
  // Default: none.
  OnlineRotation online_down;
  // QuaRot: the input of every o_proj (the attention output, [num_heads][head_dim]) is rotated
  // across heads online, x ↦ (R ⊗ I_head_dim) x with R = MakeRht(size = num_heads, seed).
  // Default: none.
  OnlineRotation online_o;
};

MatrixF& MutableLinear(LayerWeights& lw, Linear l);
const MatrixF& GetLinear(const LayerWeights& lw, Linear l);
MatrixF& MutableLinear(LlamaWeights& w, int layer, Linear l);
const MatrixF& GetLinear(const LlamaWeights& w, int layer, Linear l);

// Loads every tensor the config implies, converting to fp32. NOT_FOUND for a missing tensor,
// INVALID_ARGUMENT for a shape mismatch, e.g.
// "layer 3 down_proj: weight has shape [64,172], config.json says [64,176]".
absl::StatusOr<LlamaWeights> LoadLlamaWeights(const Checkpoint& ckpt, const LlamaConfig& cfg);

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_MODEL_WEIGHTS_H_
