// Hyper-parameters of a Llama-family decoder, parsed from a Hugging Face config.json in either
// transformers layout (docs/formats/config.md). One description covers the families quantd runs:
// Llama 1/2/3.x, Mistral (sliding window), Qwen2/2.5 (q/k/v biases, optional sliding layers),
// Qwen3 (per-head q/k RMSNorm), Gemma 2 ((1 + w) norms, embedding scale, GeGLU, pre/post
// norms, logit soft-capping, alternating sliding layers) and Gemma 3 text (Gemma 2's layout with
// (1 + w) q/k norms and a second RoPE for the sliding layers) and Phi-3 (fused qkv_proj and
// gate_up_proj tensors, LongRoPE, partial rotary embeddings, optional sliding window).
// Thread-safety: plain value type; the functions are thread-safe.
#ifndef QUANTD_ENGINE_MODEL_CONFIG_H_
#define QUANTD_ENGINE_MODEL_CONFIG_H_

#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/rope.h"

namespace quantd::model {

// The model class a config.json names (architectures / model_type).
enum class Family { kLlama, kMistral, kQwen2, kQwen3, kGemma2, kGemma3, kPhi3 };

// "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
// "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM".
std::string_view ArchitectureName(Family f);
// "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3".
std::string_view ModelTypeName(Family f);
// The architectures quantd accepts, for error messages: "LlamaForCausalLM, MistralForCausalLM, ...".
std::string SupportedArchitectures();

enum class Activation { kSilu, kGeluTanh };  // hidden_act: silu (SwiGLU), gelu_pytorch_tanh (GeGLU)

struct LlamaConfig {
  Family family = Family::kLlama;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;    // num_hidden_layers
  int num_heads = 0;     // num_attention_heads
  int num_kv_heads = 0;  // num_key_value_heads; Default: num_heads
  int head_dim = 0;      // Default: hidden_size / num_heads
  int vocab_size = 0;
  int max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  RopeParams rope;  // rope_parameters, or rope_theta + rope_scaling (engine/model/rope.h)
  bool tie_word_embeddings = false;
  int bos_token_id = 1;
  // q_proj/k_proj/v_proj carry a bias (Qwen2: always; Llama, Qwen3: attention_bias).
  bool qkv_bias = false;
  // o_proj carries a bias (Llama, Qwen3: attention_bias).
  bool o_bias = false;
  // Per-head RMSNorm of q and k over head_dim before RoPE (Qwen3: self_attn.q_norm / k_norm).
  bool qk_norm = false;
  // Sliding-window attention: a query at position t sees keys t - sliding_window < s <= t, in
  // the layers marked in sliding_layers (empty: none). 0: no window anywhere.
  int sliding_window = 0;
  std::vector<uint8_t> sliding_layers;  // [num_layers] 1 = sliding_attention, or empty
  // Gemma 3: the sliding layers rotate with rope_local instead of rope.
  bool has_local_rope = false;
  RopeParams rope_local;
  // Gemma: RMSNorm scales are stored as w and applied as (1 + w).
  bool norm_plus_one = false;
  // The embedding rows are multiplied by this (Gemma: sqrt(hidden_size) rounded to the compute
  // dtype). 1 = none.
  float embed_scale = 1.0f;
  Activation act = Activation::kSilu;
  // Gemma 2: post_attention_layernorm normalizes the attention output and
  // post_feedforward_layernorm the MLP output before each residual add; the MLP's input norm is
  // pre_feedforward_layernorm. Otherwise post_attention_layernorm is the MLP's input norm.
  bool sandwich_norms = false;
  // Attention scores are q·k * AttentionScale(): query_pre_attn_scalar^-1/2 (Gemma) when > 0,
  // else head_dim^-1/2.
  double query_pre_attn_scalar = 0.0;
  // Soft-capping cap·tanh(x / cap) of attention scores and of the final logits; 0 = none.
  double attn_softcap = 0.0;
  double final_softcap = 0.0;
  // Phi-3: the checkpoint stores q/k/v as one matrix self_attn.qkv_proj = [q; k; v] (rows) and
  // gate/up as mlp.gate_up_proj = [gate; up]; quantd quantizes each as the one matrix it is
  // (weights.h: StoredLinears).
  bool fused_qkv = false;
  bool fused_gate_up = false;

  float AttentionScale() const {
    return 1.0f / static_cast<float>(std::sqrt(query_pre_attn_scalar > 0 ? query_pre_attn_scalar
                                                                          : double(head_dim)));
  }
  // The RoPE settings of `layer`.
  const RopeParams& LayerRope(int layer) const {
    return has_local_rope && layer < static_cast<int>(sliding_layers.size()) &&
                   sliding_layers[layer]
               ? rope_local
               : rope;
  }
  // The sliding window of `layer`: sliding_window when the layer slides, else 0 (full causal).
  int LayerWindow(int layer) const {
    return sliding_window > 0 && layer < static_cast<int>(sliding_layers.size()) &&
                   sliding_layers[layer]
               ? sliding_window
               : 0;
  }
};

// Parses config.json text. Every top-level key is either read and implemented, known to leave
// the logits unchanged (metadata, dtype, generation and training settings), or accepted only
// with the value that turns its feature off (mlp_bias false, ...); any other key is refused,
// never ignored. Family defaults follow transformers' config classes (MistralConfig's
// sliding_window 4096, Qwen3Config's head_dim 128, Gemma2Config's soft-caps, Gemma3TextConfig's
// RoPE thetas, ...).
// INVALID_ARGUMENT (naming the key and value) for: invalid JSON, an unknown key, an
// architecture / model_type that is not supported (the message lists the supported ones) or
// that disagree, a hidden_act other than the family's, RoPE settings quantd does not implement
// or that disagree between the two layouts (ParseRopeParams), a quantization_config, layer_types
// of the wrong length or kind, and dimensions that are missing, non-positive, implausibly large,
// or inconsistent (num_heads % num_kv_heads != 0, odd head_dim, hidden_size % num_heads != 0
// when head_dim is absent).
absl::StatusOr<LlamaConfig> ParseLlamaConfig(std::string_view json);

// Reads and parses `model_dir`/config.json (error messages name the file).
absl::StatusOr<LlamaConfig> LoadLlamaConfig(const std::string& model_dir);

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_MODEL_CONFIG_H_
