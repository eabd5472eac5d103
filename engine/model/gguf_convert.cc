#include "engine/model/gguf_convert.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "engine/format/float16.h"
#include "engine/tokenizer/gguf_tokenizer.h"
#include "common/str_util.h"
#include "engine/model/weights.h"

namespace quantd::model {
namespace {

using json = nlohmann::ordered_json;

constexpr const char* kSupportedArch = "llama";

// The shortest decimal that reads back as the same float (f32 metadata such as 1e-5 would
// otherwise print as 9.999999747378752e-06).
double ShortestFloat(double v) {
  const float f = static_cast<float>(v);
  char buf[32];
  for (int p = 1; p <= 9; ++p) {
    std::snprintf(buf, sizeof(buf), "%.*g", p, static_cast<double>(f));
    if (std::strtof(buf, nullptr) == f) return std::strtod(buf, nullptr);
  }
  return v;
}

absl::Status Bad(const GgufFile& f, std::string_view what) {
  return absl::InvalidArgumentError(internal::Cat(f.label(), ": ", what));
}

// Required positive integer metadata value.
absl::StatusOr<int64_t> Positive(const GgufFile& f, const std::string& key) {
  auto v = f.GetInt(key);
  if (!v.ok()) {
    if (v.status().code() == absl::StatusCode::kNotFound) {
      return Bad(f, internal::Cat("missing metadata \"", key, "\""));
    }
    return v.status();
  }
  if (*v <= 0 || *v > (int64_t{1} << 30)) {
    return Bad(f, internal::Cat("metadata \"", key, "\" = ", *v, " is out of range"));
  }
  return *v;
}

const std::map<std::string, std::string>& BlockNames() {
  static const auto* m = new std::map<std::string, std::string>{
      {"attn_norm", "input_layernorm"},      {"attn_q", "self_attn.q_proj"},
      {"attn_k", "self_attn.k_proj"},        {"attn_v", "self_attn.v_proj"},
      {"attn_output", "self_attn.o_proj"},   {"ffn_norm", "post_attention_layernorm"},
      {"ffn_gate", "mlp.gate_proj"},         {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"},
  };
  return *m;
}

// [rows, cols] (or [n] for vectors) the config implies for an HF tensor name.
std::vector<int64_t> ExpectedShape(const LlamaConfig& c, const std::string& hf) {
  const int64_t h = c.hidden_size;
  if (hf == "model.embed_tokens.weight" || hf == "lm_head.weight") return {c.vocab_size, h};
  if (hf == "model.norm.weight") return {h};
  if (hf.find("layernorm") != std::string::npos) return {h};
  for (Linear l : kAllLinears) {
    const std::string suffix = internal::Cat(".", LinearName(l), ".weight");
    if (hf.size() > suffix.size() && hf.compare(hf.size() - suffix.size(), suffix.size(), suffix) == 0) {
      auto [out, in] = LinearShape(c, l);
      return {out, in};
    }
  }
  return {};
}

std::string ShapeStr(const std::vector<int64_t>& s) {
  return internal::Cat("[", absl::StrJoin(s, ","), "]");
}

std::string Encode(const std::vector<float>& v, DType dtype) {
  std::string out;
  if (dtype == DType::kF32) {
    out.assign(reinterpret_cast<const char*>(v.data()), v.size() * 4);
    return out;
  }
  out.resize(v.size() * 2);
  for (size_t i = 0; i < v.size(); ++i) {
    const uint16_t h = dtype == DType::kF16 ? FloatToHalf(v[i]) : FloatToBFloat16(v[i]);
    std::memcpy(&out[2 * i], &h, 2);
  }
  return out;
}

}  // namespace

absl::StatusOr<std::string> HfTensorName(const std::string& g) {
  if (g == "token_embd.weight") return std::string("model.embed_tokens.weight");
  if (g == "output_norm.weight") return std::string("model.norm.weight");
  if (g == "output.weight") return std::string("lm_head.weight");
  // blk.N.<part>.weight
  if (g.rfind("blk.", 0) == 0) {
    const size_t dot = g.find('.', 4);
    int layer;
    const std::string suffix = ".weight";
    if (dot != std::string::npos && dot > 4 && absl::SimpleAtoi(g.substr(4, dot - 4), &layer) &&
        layer >= 0 && g.size() > dot + 1 + suffix.size() &&
        g.compare(g.size() - suffix.size(), suffix.size(), suffix) == 0 &&
        std::to_string(layer) == g.substr(4, dot - 4)) {
      const std::string part = g.substr(dot + 1, g.size() - dot - 1 - suffix.size());
      auto it = BlockNames().find(part);
      if (it != BlockNames().end()) {
        return internal::Cat("model.layers.", layer, ".", it->second, ".weight");
      }
    }
  }
  return absl::NotFoundError(internal::Cat("no Hugging Face name for GGUF tensor \"", g, "\""));
}

absl::StatusOr<std::string> GgufTensorName(const std::string& hf) {
  if (hf == "model.embed_tokens.weight") return std::string("token_embd.weight");
  if (hf == "model.norm.weight") return std::string("output_norm.weight");
  if (hf == "lm_head.weight") return std::string("output.weight");
  const std::string prefix = "model.layers.", suffix = ".weight";
  if (hf.rfind(prefix, 0) == 0 && hf.size() > prefix.size() + suffix.size() &&
      hf.compare(hf.size() - suffix.size(), suffix.size(), suffix) == 0) {
    const size_t dot = hf.find('.', prefix.size());
    int layer;
    if (dot != std::string::npos &&
        absl::SimpleAtoi(hf.substr(prefix.size(), dot - prefix.size()), &layer) && layer >= 0) {
      const std::string part = hf.substr(dot + 1, hf.size() - dot - 1 - suffix.size());
      for (const auto& [g, h] : BlockNames()) {
        if (h == part) return internal::Cat("blk.", layer, ".", g, ".weight");
      }
    }
  }
  return absl::NotFoundError(internal::Cat("no GGUF name for tensor \"", hf, "\""));
}

absl::StatusOr<std::vector<int64_t>> QkPermutation(int64_t rows, int n_head) {
  if (n_head <= 0 || rows % (2 * static_cast<int64_t>(n_head)) != 0) {
    return absl::InvalidArgumentError(internal::Cat(
        "Q/K permutation: ", rows, " rows are not a multiple of 2 x ", n_head, " heads"));
  }
  const int64_t d = rows / n_head, half = d / 2;
  std::vector<int64_t> from(rows);
  for (int64_t h = 0; h < n_head; ++h) {
    for (int64_t s = 0; s < 2; ++s) {
      for (int64_t i = 0; i < half; ++i) from[h * d + 2 * i + s] = h * d + s * half + i;
    }
  }
  return from;
}

absl::Status UnpermuteQk(float* data, int64_t rows, int64_t cols, int n_head) {
  if (n_head <= 0 || rows % (2 * static_cast<int64_t>(n_head)) != 0) {
    return absl::InvalidArgumentError(internal::Cat(
        "Q/K un-permutation: ", rows, " rows are not a multiple of 2 x ", n_head, " heads"));
  }
  const int64_t d = rows / n_head, half = d / 2;
  std::vector<float> src(data, data + rows * cols);
  for (int64_t h = 0; h < n_head; ++h) {
    for (int64_t s = 0; s < 2; ++s) {
      for (int64_t i = 0; i < half; ++i) {
        const float* from = &src[(h * d + 2 * i + s) * cols];
        std::memcpy(data + (h * d + s * half + i) * cols, from, cols * sizeof(float));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> GgufToHfConfigJson(const GgufFile& f, DType dtype) {
  auto arch = f.GetString("general.architecture");
  if (!arch.ok() || *arch != kSupportedArch) {
    return Bad(f, internal::Cat("general.architecture = \"", arch.ok() ? *arch : "(missing)",
                                "\" is not supported; supported: ", kSupportedArch));
  }
  const std::string p = *arch + ".";
  QUANTD_ASSIGN_OR_RETURN(const int64_t hidden, Positive(f, p + "embedding_length"));
  QUANTD_ASSIGN_OR_RETURN(const int64_t ffn, Positive(f, p + "feed_forward_length"));
  QUANTD_ASSIGN_OR_RETURN(const int64_t layers, Positive(f, p + "block_count"));
  QUANTD_ASSIGN_OR_RETURN(const int64_t heads, Positive(f, p + "attention.head_count"));
  int64_t kv_heads = heads;
  if (f.Find(p + "attention.head_count_kv") != nullptr) {
    QUANTD_ASSIGN_OR_RETURN(kv_heads, Positive(f, p + "attention.head_count_kv"));
  }
  QUANTD_ASSIGN_OR_RETURN(const int64_t context, Positive(f, p + "context_length"));
  int64_t vocab = 0;
  if (f.Find(p + "vocab_size") != nullptr) {
    QUANTD_ASSIGN_OR_RETURN(vocab, Positive(f, p + "vocab_size"));
  } else if (const GgufTensorInfo* e = f.FindTensor("token_embd.weight"); e && e->ne.size() == 2) {
    vocab = e->ne[1];
  } else {
    return Bad(f, internal::Cat("missing metadata \"", p, "vocab_size\" and token_embd.weight"));
  }
  json c;
  c["architectures"] = json::array({"LlamaForCausalLM"});
  c["model_type"] = "llama";
  c["hidden_size"] = hidden;
  c["intermediate_size"] = ffn;
  c["num_hidden_layers"] = layers;
  c["num_attention_heads"] = heads;
  c["num_key_value_heads"] = kv_heads;
  if (f.Find(p + "attention.key_length") != nullptr) {
    QUANTD_ASSIGN_OR_RETURN(const int64_t head_dim, Positive(f, p + "attention.key_length"));
    c["head_dim"] = head_dim;
  } else if (hidden % heads == 0) {
    c["head_dim"] = hidden / heads;
  }
  c["vocab_size"] = vocab;
  c["max_position_embeddings"] = context;
  c["rms_norm_eps"] = 1e-5;
  if (f.Find(p + "attention.layer_norm_rms_epsilon") != nullptr) {
    QUANTD_ASSIGN_OR_RETURN(const double eps, f.GetFloat(p + "attention.layer_norm_rms_epsilon"));
    c["rms_norm_eps"] = ShortestFloat(eps);
  }
  c["rope_theta"] = 10000.0;
  if (f.Find(p + "rope.freq_base") != nullptr) {
    QUANTD_ASSIGN_OR_RETURN(const double theta, f.GetFloat(p + "rope.freq_base"));
    c["rope_theta"] = ShortestFloat(theta);
  }
  if (auto scaling = f.GetString(p + "rope.scaling.type"); scaling.ok() && *scaling != "none") {
    return Bad(f, internal::Cat(p, "rope.scaling.type = \"", *scaling, "\" is not supported"));
  }
  c["hidden_act"] = "silu";
  c["attention_bias"] = false;
  c["mlp_bias"] = false;
  c["tie_word_embeddings"] = f.FindTensor("output.weight") == nullptr;
  for (const char* k : {"bos", "eos"}) {
    const std::string key = internal::Cat("tokenizer.ggml.", k, "_token_id");
    if (f.Find(key) == nullptr) continue;
    QUANTD_ASSIGN_OR_RETURN(const int64_t id, f.GetInt(key));
    c[internal::Cat(k, "_token_id")] = id;
  }
  c["torch_dtype"] = dtype == DType::kF32 ? "float32" : dtype == DType::kBF16 ? "bfloat16" : "float16";
  const std::string text = c.dump(2) + "\n";
  auto parsed = ParseLlamaConfig(text);
  if (!parsed.ok()) return Bad(f, internal::Cat("metadata gives an invalid ", parsed.status().message()));
  return text;
}

absl::StatusOr<GgufConvertSummary> ConvertGgufToHf(const std::string& gguf_path,
                                                   const std::string& out_dir,
                                                   const GgufConvertOptions& opts) {
  if (opts.dtype != DType::kF16 && opts.dtype != DType::kBF16 && opts.dtype != DType::kF32) {
    return absl::InvalidArgumentError(internal::Cat("convert: output dtype ", DTypeName(opts.dtype),
                                                    " is not one of F16, BF16, F32"));
  }
  QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> f, GgufFile::Open(gguf_path));
  QUANTD_ASSIGN_OR_RETURN(std::string config_json, GgufToHfConfigJson(*f, opts.dtype));
  QUANTD_ASSIGN_OR_RETURN(LlamaConfig cfg, ParseLlamaConfig(config_json));
  QUANTD_ASSIGN_OR_RETURN(HfTokenizerFiles tok, GgufTokenizerToHf(*f));

  // The tensors the config implies, each exactly once.
  std::set<std::string> need = {"model.embed_tokens.weight", "model.norm.weight"};
  if (!cfg.tie_word_embeddings) need.insert("lm_head.weight");
  for (int i = 0; i < cfg.num_layers; ++i) {
    for (const auto& [g, hf] : BlockNames()) need.insert(internal::Cat("model.layers.", i, ".", hf, ".weight"));
  }

  GgufConvertSummary summary;
  summary.config = cfg;
  std::vector<TensorToWrite> out;
  std::set<std::string> written;
  for (const GgufTensorInfo& t : f->tensors()) {
    auto hf = HfTensorName(t.name);
    if (!hf.ok()) {
      return Bad(*f, internal::Cat("tensor \"", t.name, "\" has no llama equivalent (",
                                   hf.status().message(), ")"));
    }
    std::vector<int64_t> shape(t.ne.rbegin(), t.ne.rend());  // GGUF [in, out] -> HF [out][in]
    if (need.count(*hf) == 0) {
      return Bad(*f, internal::Cat("tensor \"", t.name, "\" (", *hf, ") is not part of a ",
                                   cfg.num_layers, "-layer model with tie_word_embeddings=",
                                   cfg.tie_word_embeddings ? "true" : "false"));
    }
    const std::vector<int64_t> want = ExpectedShape(cfg, *hf);
    if (shape != want) {
      return Bad(*f, internal::Cat("tensor \"", t.name, "\" has shape ", ShapeStr(shape),
                                   ", the metadata implies ", ShapeStr(want)));
    }
    QUANTD_ASSIGN_OR_RETURN(std::vector<float> v, f->Dequantize(t));
    if (t.name.find(".attn_q.") != std::string::npos) {
      QUANTD_RETURN_IF_ERROR(UnpermuteQk(v.data(), shape[0], shape[1], cfg.num_heads));
    } else if (t.name.find(".attn_k.") != std::string::npos) {
      QUANTD_RETURN_IF_ERROR(UnpermuteQk(v.data(), shape[0], shape[1], cfg.num_kv_heads));
    }
    summary.parameters += t.nelements;
    written.insert(*hf);
    out.push_back({*hf, opts.dtype, std::move(shape), Encode(v, opts.dtype)});
  }
  for (const std::string& n : need) {
    if (written.count(n) == 0) return Bad(*f, internal::Cat("missing tensor for ", n));
  }
  summary.tensors = static_cast<int>(out.size());

  QUANTD_RETURN_IF_ERROR(MakeDirs(out_dir));
  QUANTD_RETURN_IF_ERROR(WriteSafetensors(JoinPath(out_dir, "model.safetensors"), out));
  QUANTD_RETURN_IF_ERROR(WriteFileAtomic(JoinPath(out_dir, "tokenizer.json"), tok.tokenizer_json));
  QUANTD_RETURN_IF_ERROR(
      WriteFileAtomic(JoinPath(out_dir, "tokenizer_config.json"), tok.tokenizer_config_json));
  // config.json last: its presence marks a complete directory.
  QUANTD_RETURN_IF_ERROR(WriteFileAtomic(JoinPath(out_dir, "config.json"), config_json));
  return summary;
}

}  // namespace quantd::model
