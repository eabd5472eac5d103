#include "engine/model/config.h"

#include <cmath>

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
  } else if (auto mt = j.find("model_type"); mt != j.end() && mt->is_string()) {
    const std::string t = mt->get<std::string>();
    arch = t == "llama" ? "LlamaForCausalLM" : t == "mistral" ? "MistralForCausalLM" : t;
  }
  if (arch != "LlamaForCausalLM" && arch != "MistralForCausalLM") {
    return Bad(internal::Cat("config: unsupported architecture \"", arch,
                            "\"; supported: ", kSupported));
  }
  if (auto it = j.find("sliding_window"); it != j.end() && !it->is_null()) {
    return Bad(internal::Cat("config: sliding_window = ", it->dump(),
                            " is not supported (full causal attention only)"));
  }
  if (auto it = j.find("hidden_act"); it != j.end() && *it != "silu") {
    return Bad(internal::Cat("config: hidden_act = ", it->dump(), " is not supported (silu only)"));
  }
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    if (auto it = j.find(key); it != j.end() && *it != false) {
      return Bad(internal::Cat("config: ", key, " = ", it->dump(), " is not supported"));
    }
  }
  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null()) {
    return Bad(internal::Cat("config: rope_scaling = ", it->dump(), " is not supported"));
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
  QUANTD_RETURN_IF_ERROR(GetPositive(j, "rope_theta", 1e12, &c.rope_theta));
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
