#include "engine/model/config.h"

#include <algorithm>
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

struct FamilyInfo {
  Family family;
  const char* arch;
  const char* model_type;
};
constexpr FamilyInfo kFamilies[] = {
    {Family::kLlama, "LlamaForCausalLM", "llama"},
    {Family::kMistral, "MistralForCausalLM", "mistral"},
    {Family::kQwen2, "Qwen2ForCausalLM", "qwen2"},
    {Family::kQwen3, "Qwen3ForCausalLM", "qwen3"},
    {Family::kGemma2, "Gemma2ForCausalLM", "gemma2"},
    {Family::kGemma3, "Gemma3ForCausalLM", "gemma3_text"},
    {Family::kPhi3, "Phi3ForCausalLM", "phi3"},
};

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
    "sliding_window", "attention_bias", "use_sliding_window", "max_window_layers", "layer_types",
    "hidden_activation", "query_pre_attn_scalar", "attn_logit_softcapping",
    "final_logit_softcapping", "rope_local_base_freq", "sliding_window_pattern",
    "_sliding_window_pattern", "original_max_position_embeddings"};
// No effect on the logits of LlamaForCausalLM / MistralForCausalLM at inference in fp32:
// metadata, storage dtype, token ids, output flags, attention kernel choice, training-only
// settings (dropout, init), pretraining_tp (splits the same matmuls), and the generation
// settings that transformers < 4.41 kept in config.json.
constexpr std::string_view kHarmless[] = {
    "_name_or_path", "name_or_path", "transformers_version", "_commit_hash", "tokenizer_class",
    "prefix", "finetuning_task", "task_specific_params", "id2label", "label2id", "num_labels",
    "problem_type", "is_llama_config", "torch_dtype", "dtype", "use_bfloat16",
    "initializer_range", "attention_dropout", "resid_pdrop", "embd_pdrop", "use_cache", "pretraining_tp", "eos_token_id",
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
    "suppress_tokens", "begin_suppress_tokens",
    // GenerationConfig's KV-cache kind (Gemma 2's "hybrid"): generation only.
    "cache_implementation"};
// Accepted only when false or null: each, when true, asks for computation quantd lacks.
constexpr std::string_view kMustBeFalse[] = {"mlp_bias", "rope_interleaved",
                                             "is_encoder_decoder", "add_cross_attention",
                                             "use_bidirectional_attention"};

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

// The keys outside kImplemented (see above). `f`: the config's family.
absl::Status CheckOtherKeys(const json& j, Family f) {
  for (const auto& [key, v] : j.items()) {
    if (In(kImplemented, key) || In(kHarmless, key)) continue;
    if (In(kMustBeFalse, key)) {
      if (!v.is_null() && v != false) {
        return Bad(internal::Cat("config: ", key, " = ", Short(v), " is not supported"));
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
        // Custom model code is refused unless it names the family's own architecture class
        // ("modeling_phi3.Phi3ForCausalLM" in Phi-3's repositories): without trust_remote_code
        // transformers loads its built-in class of that name, which is what quantd implements.
        const std::string own = internal::Cat(".", ArchitectureName(f));
        bool other_code = false;
        for (const auto& [k, target] : v.items()) {
          if (!absl::StartsWith(k, "AutoModel")) continue;
          other_code |= !target.is_string() || !absl::EndsWith(target.get<std::string>(), own) ||
                        k != "AutoModelForCausalLM";
        }
        if (!other_code) continue;
      }
      return Bad(internal::Cat("config: auto_map = ", Short(v),
                              " names custom model code; quantd implements only the built-in "
                              "models ", SupportedArchitectures()));
    } else {
      return Bad(internal::Cat("config: key \"", key, "\" = ", Short(v),
                              " is not known to quantd and may change the computation; refusing "
                              "rather than ignoring it (docs/formats/config.md lists the keys "
                              "quantd accepts)"));
    }
  }
  return absl::OkStatus();
}

// Keys that belong to some families only; in another family's config they must be off
// (false / null), because that family's transformers class would ignore them.
absl::Status CheckFamilyKeys(const json& j, Family f) {
  auto off = [&](const char* key, bool allowed) -> absl::Status {
    if (allowed) return absl::OkStatus();
    auto it = j.find(key);
    if (it == j.end() || it->is_null() || *it == false) return absl::OkStatus();
    return Bad(internal::Cat("config: ", key, " = ", Short(*it), " is not used by ",
                            ArchitectureName(f), "; refusing a setting transformers would ignore"));
  };
  const bool qwen = f == Family::kQwen2 || f == Family::kQwen3;
  const bool gemma = f == Family::kGemma2 || f == Family::kGemma3;
  QUANTD_RETURN_IF_ERROR(off("attention_bias", f == Family::kLlama || f == Family::kQwen3 ||
                                                   gemma));
  QUANTD_RETURN_IF_ERROR(off("original_max_position_embeddings", f == Family::kPhi3));
  QUANTD_RETURN_IF_ERROR(off("rope_local_base_freq", f == Family::kGemma3));
  QUANTD_RETURN_IF_ERROR(off("sliding_window_pattern", f == Family::kGemma3));
  QUANTD_RETURN_IF_ERROR(off("_sliding_window_pattern", f == Family::kGemma3));
  QUANTD_RETURN_IF_ERROR(off("use_sliding_window", qwen));
  QUANTD_RETURN_IF_ERROR(off("max_window_layers", qwen));
  QUANTD_RETURN_IF_ERROR(off("hidden_activation", gemma));
  QUANTD_RETURN_IF_ERROR(off("query_pre_attn_scalar", gemma));
  QUANTD_RETURN_IF_ERROR(off("attn_logit_softcapping", gemma));
  QUANTD_RETURN_IF_ERROR(off("final_logit_softcapping", gemma));
  return absl::OkStatus();
}

absl::StatusOr<bool> GetBool(const json& j, const char* key, bool dflt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) {
    return Bad(internal::Cat("config: ", key, " must be a bool, got ", Short(*it)));
  }
  return it->get<bool>();
}

// A soft-cap: absent or null = `dflt` (0 = none), else a positive number.
absl::Status GetSoftcap(const json& j, const char* key, double dflt, double* out) {
  *out = dflt;
  auto it = j.find(key);
  if (it == j.end()) return absl::OkStatus();
  if (it->is_null()) {
    *out = 0;
    return absl::OkStatus();
  }
  return GetPositive(j, key, 1e6, out);
}

// Which layers use sliding-window attention and how long the window is, as the family's
// transformers class decides (docs/formats/config.md).
absl::Status ParseSliding(const json& j, Family f, LlamaConfig* c) {
  const bool has_window_key = j.contains("sliding_window");
  int window = 0;
  switch (f) {
    case Family::kLlama:
      break;
    case Family::kMistral:
    case Family::kQwen2:
    case Family::kQwen3:
    case Family::kGemma2:
    case Family::kGemma3:
      window = has_window_key ? 0 : 4096;  // the config classes' default
      break;
    case Family::kPhi3:
      break;  // Phi3Config: sliding_window None
  }
  QUANTD_RETURN_IF_ERROR(GetInt(j, "sliding_window", 1, 1 << 30, false, &window));
  if (f == Family::kLlama) {
    // LlamaForCausalLM has no sliding window: accept the key only where it could not bite.
    if (window != 0 && window < c->max_position_embeddings) {
      return Bad(internal::Cat("config: sliding_window = ", window,
                              " is shorter than max_position_embeddings ",
                              c->max_position_embeddings,
                              " but LlamaForCausalLM has no sliding-window attention"));
    }
    window = 0;
  }
  if (f == Family::kQwen2 || f == Family::kQwen3) {
    // Qwen2Config / Qwen3Config: sliding_window = None unless use_sliding_window.
    QUANTD_ASSIGN_OR_RETURN(bool use, GetBool(j, "use_sliding_window", false));
    if (!use) window = 0;
  }
  std::vector<uint8_t> layers(c->num_layers, 0);
  auto lt = j.find("layer_types");
  if (lt != j.end() && !lt->is_null()) {
    if (!lt->is_array() || static_cast<int>(lt->size()) != c->num_layers) {
      return Bad(internal::Cat("config: layer_types must be a list of num_hidden_layers = ",
                              c->num_layers, " strings, got ", Short(*lt)));
    }
    for (int l = 0; l < c->num_layers; ++l) {
      const json& t = (*lt)[l];
      if (t == "sliding_attention") {
        if (f == Family::kLlama || f == Family::kMistral || f == Family::kPhi3) {
          return Bad(internal::Cat("config: layer_types[", l, "] = \"sliding_attention\" is not "
                                  "used by ", ArchitectureName(f)));
        }
        layers[l] = 1;
      } else if (t != "full_attention") {
        return Bad(internal::Cat("config: layer_types[", l, "] = ", Short(t),
                                "; only full_attention and sliding_attention are supported"));
      }
    }
  } else if (f == Family::kQwen2 || f == Family::kQwen3) {
    int max_window_layers = 28;
    QUANTD_RETURN_IF_ERROR(
        GetInt(j, "max_window_layers", 0, 1 << 20, false, &max_window_layers));
    for (int l = max_window_layers; l < c->num_layers; ++l) layers[l] = 1;
  } else if (f == Family::kGemma2) {
    for (int l = 0; l < c->num_layers; l += 2) layers[l] = 1;  // (l + 1) % 2: even layers
  } else if (f == Family::kGemma3) {
    int pattern = 6;  // Gemma3TextConfig: sliding unless (l + 1) % sliding_window_pattern == 0
    QUANTD_RETURN_IF_ERROR(GetInt(j, "sliding_window_pattern", 1, 1 << 20, false, &pattern));
    for (int l = 0; l < c->num_layers; ++l) layers[l] = (l + 1) % pattern != 0;
  }
  if (f == Family::kMistral || f == Family::kPhi3) {
    // MistralModel and Phi3Model apply config.sliding_window to every layer.
    std::fill(layers.begin(), layers.end(), 1);
  }
  bool any = false;
  for (uint8_t s : layers) any |= s != 0;
  if (any && (window > 0 || f == Family::kGemma3)) {  // Gemma 3's local RoPE follows the kinds
    c->sliding_window = window;
    c->sliding_layers = std::move(layers);
  }
  return absl::OkStatus();
}

// Gemma 3's two RoPEs: full_attention layers use `rope` (default rope_theta 1e6, the scaling),
// sliding_attention layers `rope_local` (default 10000). transformers 5 writes
// "rope_parameters": {"full_attention": {...}, "sliding_attention": {...}}; older configs have
// rope_theta / rope_scaling for the full layers and rope_local_base_freq for the sliding ones.
absl::Status ParseGemma3Rope(const json& j, LlamaConfig* c) {
  const auto rp = j.find("rope_parameters");
  const bool per_kind = rp != j.end() && rp->is_object() &&
                        (rp->contains("full_attention") || rp->contains("sliding_attention"));
  if (per_kind) {
    for (const auto& [k, v] : rp->items()) {
      if (k != "full_attention" && k != "sliding_attention") {
        return Bad(internal::Cat("config: rope_parameters.", k, " is not a layer kind "
                                "(full_attention, sliding_attention)"));
      }
    }
    for (const char* key : {"rope_scaling", "rope_theta", "rope_local_base_freq"}) {
      if (auto it = j.find(key); it != j.end() && !it->is_null()) {
        return Bad(internal::Cat("config: ", key, " = ", Short(*it), " next to per-layer-kind "
                                "rope_parameters; transformers versions read them differently"));
      }
    }
    auto one = [&](const char* kind, double theta, RopeParams* out) -> absl::Status {
      json sub = rp->contains(kind) && !(*rp)[kind].is_null() ? (*rp)[kind] : json::object();
      if (!sub.is_object()) {
        return Bad(internal::Cat("config: rope_parameters.", kind, " must be an object"));
      }
      if (!sub.contains("rope_theta")) sub["rope_theta"] = theta;
      absl::StatusOr<RopeParams> r = ParseRopeParams(json{{"rope_parameters", sub}},
                                                     c->max_position_embeddings);
      if (!r.ok()) {
        return Bad(internal::Cat(r.status().message(), " (rope_parameters.", kind, ")"));
      }
      *out = *r;
      return absl::OkStatus();
    };
    QUANTD_RETURN_IF_ERROR(one("full_attention", 1e6, &c->rope));
    QUANTD_RETURN_IF_ERROR(one("sliding_attention", 1e4, &c->rope_local));
  } else {
    json full = json::object();
    for (const char* key : {"rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor"}) {
      if (j.contains(key)) full[key] = j[key];
    }
    const bool has_theta = (full.contains("rope_theta") && !full["rope_theta"].is_null()) ||
                           (rp != j.end() && rp->is_object() && rp->contains("rope_theta"));
    if (!has_theta) full["rope_theta"] = 1e6;  // Gemma3TextConfig.default_theta["global"]
    QUANTD_ASSIGN_OR_RETURN(c->rope, ParseRopeParams(full, c->max_position_embeddings));
    c->rope_local = RopeParams{};
    c->rope_local.theta = 1e4;
    QUANTD_RETURN_IF_ERROR(GetPositive(j, "rope_local_base_freq", 1e12, &c->rope_local.theta));
  }
  c->has_local_rope = true;
  return absl::OkStatus();
}

absl::StatusOr<LlamaConfig> ParseChecked(const json& j) {
  if (!j.is_object()) return Bad("config: top level is not a JSON object");
  const std::string supported = SupportedArchitectures();
  // Architecture.
  const FamilyInfo* fam = nullptr;
  std::string arch;
  if (auto it = j.find("architectures"); it != j.end() && !it->is_null()) {
    if (!it->is_array() || it->size() != 1 || !(*it)[0].is_string()) {
      return Bad(internal::Cat("config: \"architectures\" must be one string, got ", it->dump(),
                              "; supported: ", supported));
    }
    arch = (*it)[0].get<std::string>();
    for (const FamilyInfo& f : kFamilies) {
      if (arch == f.arch) fam = &f;
    }
    if (fam == nullptr) {
      return Bad(internal::Cat("config: unsupported architecture \"", arch,
                              "\"; supported: ", supported));
    }
  }
  if (auto mt = j.find("model_type"); mt != j.end() && !mt->is_null()) {
    // AutoModel picks the model class from model_type: it must agree with architectures.
    const std::string t = mt->is_string() ? mt->get<std::string>() : mt->dump();
    const FamilyInfo* from_type = nullptr;
    for (const FamilyInfo& f : kFamilies) {
      if (t == f.model_type) from_type = &f;
    }
    if (from_type == nullptr || (fam != nullptr && fam != from_type)) {
      return Bad(internal::Cat("config: model_type = ", mt->dump(), " does not match ",
                              arch.empty() ? std::string("a supported architecture") : arch,
                              "; supported: ", supported));
    }
    fam = from_type;
  }
  if (fam == nullptr) {
    return Bad(internal::Cat("config: neither \"architectures\" nor \"model_type\" names the "
                            "model; supported: ", supported));
  }
  const Family f = fam->family;
  QUANTD_RETURN_IF_ERROR(CheckOtherKeys(j, f));
  QUANTD_RETURN_IF_ERROR(CheckFamilyKeys(j, f));

  LlamaConfig c;
  c.family = f;
  const bool gemma = f == Family::kGemma2 || f == Family::kGemma3;
  if (gemma) {
    // Gemma2Config / Gemma3TextConfig read hidden_activation (gelu_pytorch_tanh); an old "hidden_act" beside it is
    // ignored by Gemma2ForCausalLM.
    if (auto it = j.find("hidden_activation");
        it != j.end() && !it->is_null() && *it != "gelu_pytorch_tanh") {
      return Bad(internal::Cat("config: hidden_activation = ", it->dump(),
                              " is not supported (gelu_pytorch_tanh only)"));
    }
    c.act = Activation::kGeluTanh;
  } else if (auto it = j.find("hidden_act"); it != j.end() && *it != "silu") {
    return Bad(internal::Cat("config: hidden_act = ", it->dump(), " is not supported (silu only)"));
  }

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
  } else if (f == Family::kQwen3 || gemma) {
    c.head_dim = f == Family::kQwen3 ? 128 : 256;  // Qwen3Config / Gemma2Config defaults
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
  if (f == Family::kGemma3) {
    QUANTD_RETURN_IF_ERROR(ParseGemma3Rope(j, &c));
  } else {
    RopeParseOptions ro;
    ro.max_position_embeddings = c.max_position_embeddings;
    if (f == Family::kPhi3) {
      // Phi3Config: partial_rotary_factor, su / yarn = longrope, and the top-level
      // original_max_position_embeddings (default 4096) over the RoPE object's.
      ro.phi3 = true;
      ro.allow_partial_rotary = true;
      ro.top_original_max_position_embeddings = 4096;
      QUANTD_RETURN_IF_ERROR(GetInt(j, "original_max_position_embeddings", 1, 1 << 24, false,
                                    &ro.top_original_max_position_embeddings));
    }
    QUANTD_ASSIGN_OR_RETURN(c.rope, ParseRopeParams(j, ro));
  }
  QUANTD_RETURN_IF_ERROR(CheckRopeForHead(c.rope, c.head_dim));
  if (c.has_local_rope) QUANTD_RETURN_IF_ERROR(CheckRopeForHead(c.rope_local, c.head_dim));
  QUANTD_RETURN_IF_ERROR(ParseSliding(j, f, &c));
  QUANTD_ASSIGN_OR_RETURN(c.tie_word_embeddings,
                          GetBool(j, "tie_word_embeddings", gemma));
  QUANTD_ASSIGN_OR_RETURN(const bool attention_bias, GetBool(j, "attention_bias", false));
  switch (f) {
    case Family::kLlama:
    case Family::kQwen3:
    case Family::kGemma2:
    case Family::kGemma3:
      c.qkv_bias = c.o_bias = attention_bias;
      break;
    case Family::kQwen2:
      c.qkv_bias = true;  // Qwen2Attention: q/k/v with bias, o_proj without
      break;
    case Family::kMistral:
    case Family::kPhi3:
      break;
  }
  c.fused_qkv = c.fused_gate_up = f == Family::kPhi3;
  c.qk_norm = f == Family::kQwen3 || f == Family::kGemma3;
  if (gemma) {
    c.norm_plus_one = true;
    c.sandwich_norms = true;
    c.embed_scale = static_cast<float>(std::sqrt(static_cast<double>(c.hidden_size)));
    c.query_pre_attn_scalar = 256;
    QUANTD_RETURN_IF_ERROR(GetPositive(j, "query_pre_attn_scalar", 1e9, &c.query_pre_attn_scalar));
    // Gemma2Config's defaults 50 / 30; Gemma3TextConfig's none.
    const bool g2 = f == Family::kGemma2;
    QUANTD_RETURN_IF_ERROR(GetSoftcap(j, "attn_logit_softcapping", g2 ? 50.0 : 0.0, &c.attn_softcap));
    QUANTD_RETURN_IF_ERROR(GetSoftcap(j, "final_logit_softcapping", g2 ? 30.0 : 0.0, &c.final_softcap));
  }
  return c;
}

}  // namespace

std::string_view ArchitectureName(Family f) {
  for (const FamilyInfo& i : kFamilies) {
    if (i.family == f) return i.arch;
  }
  return "?";
}

std::string_view ModelTypeName(Family f) {
  for (const FamilyInfo& i : kFamilies) {
    if (i.family == f) return i.model_type;
  }
  return "?";
}

std::string SupportedArchitectures() {
  std::string s;
  for (const FamilyInfo& i : kFamilies) {
    if (!s.empty()) s += ", ";
    s += internal::Cat(i.arch, " (", i.model_type, ")");
  }
  return s;
}

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
