#include "engine/model/config.h"

#include <cmath>
#include <string_view>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/str_util.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace quantd::model {
namespace {

using json = nlohmann::json;

constexpr const char* kSupported = "LlamaForCausalLM, MistralForCausalLM";

absl::Status Bad(absl::string_view what) { return absl::InvalidArgumentError(what); }

// Reads integer field `key` into *out within [lo, hi]. `required`=false keeps *out if absent.
absl::Status GetInt(const json& j, const char* key, int64_t lo, int64_t hi, bool required,
                    int* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) return Bad(internal::Cat("config: missing \"", key, "\""));
    return absl::OkStatus();
  }
  if (!it->is_number_integer()) {
    return Bad(internal::Cat("config: \"", key, "\" must be an integer, got ", it->dump()));
  }
  if (it->is_number_unsigned() ? it->get<uint64_t>() > static_cast<uint64_t>(hi)
                               : (it->get<int64_t>() < lo || it->get<int64_t>() > hi)) {
    return Bad(internal::Cat("config: \"", key, "\" = ", it->dump(), " is outside [", lo, ", ",
                            hi, "]"));
  }
  *out = static_cast<int>(it->get<int64_t>());
  if (*out < lo) {
    return Bad(internal::Cat("config: \"", key, "\" = ", it->dump(), " is outside [", lo, ", ",
                            hi, "]"));
  }
  return absl::OkStatus();
}

absl::Status GetPositive(const json& j, const char* key, double hi, double* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) {
    return Bad(internal::Cat("config: \"", key, "\" must be a number, got ", it->dump()));
  }
  double v = it->get<double>();
  if (!(v > 0) || !(v < hi)) {
    return Bad(internal::Cat("config: \"", key, "\" = ", it->dump(), " is outside (0, ", hi, ")"));
  }
  *out = v;
  return absl::OkStatus();
}

// Top-level config.json keys, by what quantd does with them. A key in none of these lists is
// refused: it may change the computation (docs/formats/config.md).
// Read and implemented (validated in ParseChecked / ParseRopeParams).
constexpr std::string_view kImplemented[] = {
    "architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
    "max_position_embeddings", "rms_norm_eps", "hidden_act", "tie_word_embeddings",
    "bos_token_id", "rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor",
    "sliding_window"};
// No effect on the logits of LlamaForCausalLM / MistralForCausalLM at inference in fp32:
// metadata, storage dtype, token ids, output flags, attention kernel choice, training-only
// settings (dropout, init), pretraining_tp (splits the same matmuls), and the generation
// settings that transformers < 4.41 kept in config.json.
constexpr std::string_view kHarmless[] = {
    "_name_or_path", "name_or_path", "transformers_version", "_commit_hash", "tokenizer_class",
    "prefix", "finetuning_task", "task_specific_params", "id2label", "label2id", "num_labels",
    "problem_type", "is_llama_config", "torch_dtype", "dtype", "use_bfloat16",
    "initializer_range", "attention_dropout", "use_cache", "pretraining_tp", "eos_token_id",
    "pad_token_id", "sep_token_id", "decoder_start_token_id", "output_attentions",
    "output_hidden_states", "return_dict", "use_return_dict", "torchscript", "tf_legacy_loss",
    "chunk_size_feed_forward", "is_decoder", "tie_encoder_decoder", "cross_attention_hidden_size",
    "pruned_heads", "tie_last_hidden_states", "_attn_implementation", "attn_implementation",
    "_attn_implementation_autoset", "_attn_implementation_internal", "_experts_implementation",
    "experts_implementation", "gradient_checkpointing", "unsloth_version", "unsloth_fixed",
    // Generation settings (GenerationConfig defaults written into old config.json files).
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
    "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens"};
// Accepted only when false or null: each, when true, asks for computation quantd lacks.
constexpr std::string_view kMustBeFalse[] = {"attention_bias", "mlp_bias", "rope_interleaved",
                                             "use_sliding_window", "is_encoder_decoder",
                                             "add_cross_attention"};

template <size_t N>
bool In(const std::string_view (&list)[N], std::string_view key) {
  for (std::string_view k : list) {
    if (k == key) return true;
  }
  return false;
}

std::string Short(const json& v) {
  std::string s = v.dump();
  return s.size() > 80 ? s.substr(0, 77) + "..." : s;
}

// The keys outside kImplemented (see above).
absl::Status CheckOtherKeys(const json& j) {
  for (const auto& [key, v] : j.items()) {
    if (In(kImplemented, key) || In(kHarmless, key)) continue;
    if (In(kMustBeFalse, key)) {
      if (!v.is_null() && v != false) {
        return Bad(internal::Cat("config: ", key, " = ", Short(v), " is not supported"));
      }
    } else if (key == "layer_types") {  // per-layer attention kind (transformers >= 4.54)
      if (v.is_null()) continue;
      if (!v.is_array()) {
        return Bad(internal::Cat("config: layer_types must be a list, got ", Short(v)));
      }
      for (const json& t : v) {
        if (t != "full_attention") {
          return Bad(internal::Cat("config: layer_types contains ", Short(t),
                                  "; only full_attention is supported"));
        }
      }
    } else if (key == "quantization_config") {
      if (v.is_null()) continue;
      return Bad(internal::Cat("config: quantization_config = ", Short(v),
                              ": the checkpoint is already quantized; quantd needs the "
                              "floating-point model"));
    } else if (key == "per_layer_config") {  // sparse per-layer overrides (transformers 5)
      if (v.is_null() || (v.is_object() && v.empty())) continue;
      return Bad(internal::Cat("config: per_layer_config = ", Short(v), " is not supported"));
    } else if (key == "auto_map") {  // custom code that trust_remote_code would run instead
      if (v.is_object()) {
        bool model_code = false;
        for (const auto& [k, unused] : v.items()) model_code |= absl::StartsWith(k, "AutoModel");
        if (!model_code) continue;
      }
      return Bad(internal::Cat("config: auto_map = ", Short(v),
                              " names custom model code; quantd implements only the built-in "
                              "Llama / Mistral models"));
    } else {
      return Bad(internal::Cat("config: key \"", key, "\" = ", Short(v),
                              " is not known to quantd and may change the computation; refusing "
                              "rather than ignoring it (docs/formats/config.md lists the keys "
                              "quantd accepts)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<LlamaConfig> ParseChecked(const json& j) {
  if (!j.is_object()) return Bad("config: top level is not a JSON object");
  // Architecture.
  std::string arch;
  if (auto it = j.find("architectures"); it != j.end() && !it->is_null()) {
    if (!it->is_array() || it->size() != 1 || !(*it)[0].is_string()) {
      return Bad(internal::Cat("config: \"architectures\" must be one string, got ", it->dump(),
                              "; supported: ", kSupported));
    }
    arch = (*it)[0].get<std::string>();
  }
  if (auto mt = j.find("model_type"); mt != j.end() && !mt->is_null()) {
    // AutoModel picks the model class from model_type: it must agree with architectures.
    const std::string t = mt->is_string() ? mt->get<std::string>() : mt->dump();
    const std::string from_type =
        t == "llama" ? "LlamaForCausalLM" : t == "mistral" ? "MistralForCausalLM" : "";
    if (from_type.empty() || (!arch.empty() && arch != from_type)) {
      return Bad(internal::Cat("config: model_type = ", mt->dump(), " does not match ",
                              arch.empty() ? std::string("a supported architecture") : arch,
                              "; supported: ", kSupported, " (model_type llama, mistral)"));
    }
    arch = from_type;
  }
  if (arch != "LlamaForCausalLM" && arch != "MistralForCausalLM") {
    return Bad(internal::Cat("config: unsupported architecture \"", arch,
                            "\"; supported: ", kSupported));
  }
  QUANTD_RETURN_IF_ERROR(CheckOtherKeys(j));
  if (auto it = j.find("hidden_act"); it != j.end() && *it != "silu") {
    return Bad(internal::Cat("config: hidden_act = ", it->dump(), " is not supported (silu only)"));
  }

  LlamaConfig c;
  QUANTD_RETURN_IF_ERROR(GetInt(j, "hidden_size", 1, 1 << 16, true, &c.hidden_size));
  QUANTD_RETURN_IF_ERROR(GetInt(j, "intermediate_size", 1, 1 << 18, true, &c.intermediate_size));
  QUANTD_RETURN_IF_ERROR(GetInt(j, "num_hidden_layers", 1, 1024, true, &c.num_layers));
  QUANTD_RETURN_IF_ERROR(GetInt(j, "num_attention_heads", 1, 1024, true, &c.num_heads));
  c.num_kv_heads = c.num_heads;
  QUANTD_RETURN_IF_ERROR(GetInt(j, "num_key_value_heads", 1, 1024, false, &c.num_kv_heads));
  QUANTD_RETURN_IF_ERROR(GetInt(j, "vocab_size", 1, 1 << 22, true, &c.vocab_size));
  QUANTD_RETURN_IF_ERROR(
      GetInt(j, "max_position_embeddings", 1, 1 << 20, true, &c.max_position_embeddings));
  QUANTD_RETURN_IF_ERROR(GetInt(j, "bos_token_id", 0, (1 << 22) - 1, false, &c.bos_token_id));
  if (j.contains("head_dim") && !j["head_dim"].is_null()) {
    QUANTD_RETURN_IF_ERROR(GetInt(j, "head_dim", 2, 1024, true, &c.head_dim));
  } else {
    if (c.hidden_size % c.num_heads != 0) {
      return Bad(internal::Cat("config: hidden_size ", c.hidden_size,
                              " is not divisible by num_attention_heads ", c.num_heads));
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) {
    return Bad(internal::Cat("config: head_dim ", c.head_dim, " must be even for RoPE"));
  }
  if (static_cast<int64_t>(c.head_dim) * c.num_heads > (1 << 16)) {
    return Bad(internal::Cat("config: num_attention_heads x head_dim = ", c.num_heads, " x ",
                            c.head_dim, " is too large"));
  }
  if (c.num_kv_heads > c.num_heads || c.num_heads % c.num_kv_heads != 0) {
    return Bad(internal::Cat("config: num_attention_heads ", c.num_heads,
                            " is not a multiple of num_key_value_heads ", c.num_kv_heads));
  }
  if (c.bos_token_id >= c.vocab_size) {
    return Bad(internal::Cat("config: bos_token_id ", c.bos_token_id, " >= vocab_size ",
                            c.vocab_size));
  }
  QUANTD_RETURN_IF_ERROR(GetPositive(j, "rms_norm_eps", 1.0, &c.rms_norm_eps));
  QUANTD_ASSIGN_OR_RETURN(c.rope, ParseRopeParams(j, c.max_position_embeddings));
  // A window at least as long as any sequence quantd runs (max_position_embeddings) is full
  // attention. MistralConfig's default window is 4096.
  int window = arch == "MistralForCausalLM" && !j.contains("sliding_window") ? 4096 : 0;
  QUANTD_RETURN_IF_ERROR(GetInt(j, "sliding_window", 1, 1 << 30, false, &window));
  if (window != 0 && window < c.max_position_embeddings) {
    return Bad(internal::Cat("config: sliding_window = ", window,
                            j.contains("sliding_window") ? "" : " (MistralConfig's default)",
                            " is shorter than max_position_embeddings ",
                            c.max_position_embeddings,
                            "; sliding-window attention is not supported"));
  }
  if (auto it = j.find("tie_word_embeddings"); it != j.end() && !it->is_null()) {
    if (!it->is_boolean()) {
      return Bad(internal::Cat("config: tie_word_embeddings must be a bool, got ", it->dump()));
    }
    c.tie_word_embeddings = it->get<bool>();
  }
  return c;
}

}  // namespace

absl::StatusOr<LlamaConfig> ParseLlamaConfig(std::string_view text) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Bad("config: not valid JSON");
  try {
    return ParseChecked(j);
  } catch (const std::exception& e) {
    return Bad(internal::Cat("config: malformed: ", e.what()));
  }
}

absl::StatusOr<LlamaConfig> LoadLlamaConfig(const std::string& model_dir) {
  const std::string path = JoinPath(model_dir, "config.json");
  QUANTD_ASSIGN_OR_RETURN(std::string text, ReadFile(path, 1 << 24));
  absl::StatusOr<LlamaConfig> c = ParseLlamaConfig(text);
  if (!c.ok()) return absl::Status(c.status().code(), internal::Cat(path, ": ", c.status().message()));
  return c;
}

}  // namespace quantd::model
