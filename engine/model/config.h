// Hyper-parameters of a Llama-family decoder (Llama, Mistral without sliding window), parsed
// from a Hugging Face config.json in either transformers layout (docs/formats/config.md).
// Thread-safety: plain value type; the functions are thread-safe.
#ifndef QUANTD_ENGINE_MODEL_CONFIG_H_
#define QUANTD_ENGINE_MODEL_CONFIG_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/model/rope.h"

namespace quantd::model {

struct LlamaConfig {
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
};

// Parses config.json text. Every top-level key is either read and implemented, known to leave
// the logits unchanged (metadata, dtype, generation and training settings), or accepted only
// with the value that turns its feature off (attention_bias false, sliding_window null, ...);
// any other key is refused, never ignored. INVALID_ARGUMENT (naming the key and value) for:
// invalid JSON, an unknown key, architectures / model_type other than LlamaForCausalLM (llama) /
// MistralForCausalLM (mistral), a sliding window shorter than max_position_embeddings (a
// Mistral config without "sliding_window" has transformers' default 4096), hidden_act other
// than silu, biases, RoPE settings quantd does not implement or that disagree between the two
// layouts (ParseRopeParams), a quantization_config, and dimensions that are missing,
// non-positive, implausibly large, or inconsistent (num_heads % num_kv_heads != 0, odd
// head_dim, hidden_size % num_heads != 0 when head_dim is absent).
absl::StatusOr<LlamaConfig> ParseLlamaConfig(std::string_view json);

// Reads and parses `model_dir`/config.json (error messages name the file).
absl::StatusOr<LlamaConfig> LoadLlamaConfig(const std::string& model_dir);

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_MODEL_CONFIG_H_
