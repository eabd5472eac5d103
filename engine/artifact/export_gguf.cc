#include "engine/artifact/export_gguf.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/artifact/artifact.h"
#include "engine/artifact/export_formats.h"
#include "engine/format/checkpoint.h"
#include "engine/format/float16.h"
#include "engine/format/gguf_writer.h"
#include "engine/model/config.h"
#include "engine/model/rope.h"
#include "engine/model/gguf_convert.h"
#include "engine/quant/packed_matrix.h"
#include "engine/quant/quantize.h"
#include "engine/tokenizer/gguf_tokenizer.h"
#include "nlohmann/json.hpp"

namespace quantd::artifact {
namespace {

using model::GgmlType;

constexpr int kBlock = 32;

// llama_ftype (llama.h) of a file whose linears are `t`.
uint32_t FileType(GgmlType t) {
  switch (t) {
    case GgmlType::kQ4_0: return 2;
    case GgmlType::kQ4_1: return 3;
    case GgmlType::kQ8_0: return 7;
    case GgmlType::kQ5_0: return 8;
    case GgmlType::kQ5_1: return 9;
    default: return 1;
  }
}

int TypeBits(GgmlType t) {
  switch (t) {
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1: return 4;
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1: return 5;
    default: return 8;
  }
}

void PutHalf(char* dst, float v) {
  const uint16_t h = model::FloatToHalf(v);
  std::memcpy(dst, &h, 2);
}

// ggml blocks for the rows of `c` in the order `rows` (GGUF row i holds packed row rows[i]).
// FAILED_PRECONDITION when the packed grid is not the block type's (bits, groups of 32,
// symmetric zero for the _0 types).
absl::StatusOr<std::string> EncodeBlocks(const quant::PackedContents& c, GgmlType t,
                                         const std::vector<int64_t>& rows, const std::string& name) {
  const int bits = TypeBits(t);
  const bool with_min = t == GgmlType::kQ4_1 || t == GgmlType::kQ5_1;
  const int groups = c.n / kBlock;
  auto misfit = [&](std::string why) {
    return absl::FailedPreconditionError(absl::StrCat(
        "tensor ", name, " does not fit GGUF ", std::string(model::GgmlTypeName(static_cast<uint32_t>(t))), ": ",
        why));
  };
  if (!quant::TraitsOf(static_cast<quant::Method>(c.method)).engine_exportable) {
    return misfit(absl::StrCat("it was stored by method ",
                               std::string(quant::MethodName(static_cast<quant::Method>(c.method)))));
  }
  if (c.bits != bits || c.group_size != kBlock || c.n % kBlock != 0 ||
      c.grids.size() != static_cast<size_t>(c.m) * groups) {
    return misfit(absl::StrCat(c.bits, "-bit codes in groups of ", c.group_size, ", ", c.n,
                               " columns; the type holds ", bits, "-bit codes in groups of 32"));
  }
  const float sym_zero = static_cast<float>(1 << (bits - 1));
  const int64_t bb = model::GgmlBlockBytes(t);
  std::string out(static_cast<size_t>(c.m) * groups * bb, '\0');
  char* dst = out.data();
  for (int64_t gr = 0; gr < c.m; ++gr) {
    const int64_t r = rows[gr];
    for (int b = 0; b < groups; ++b, dst += bb) {
      const quant::ScalarGrid& g = c.grids[static_cast<size_t>(r) * groups + b];
      if (!with_min && g.zero != sym_zero) {
        return misfit(absl::StrCat("row ", r, " group ", b, " has zero point ", g.zero,
                                   "; the type is symmetric around ", sym_zero));
      }
      const uint16_t* q = &c.codes[static_cast<size_t>(r) * c.n + static_cast<size_t>(b) * kBlock];
      PutHalf(dst, g.scale);
      int off = 2;
      if (with_min) {
        // ŵ = scale·(q − zero) = d·q + m with m = −scale·zero (exact for the kMinOffset grids,
        // whose zero is −m/d of an fp16 m).
        PutHalf(dst + 2, static_cast<float>(-static_cast<double>(g.scale) * g.zero));
        off = 4;
      }
      if (t == GgmlType::kQ8_0) {
        for (int j = 0; j < kBlock; ++j) dst[off + j] = static_cast<char>(static_cast<int8_t>(q[j] - 128));
        continue;
      }
      if (bits == 5) {
        uint32_t qh = 0;
        for (int j = 0; j < kBlock; ++j) qh |= static_cast<uint32_t>((q[j] >> 4) & 1) << j;
        std::memcpy(dst + off, &qh, 4);
        off += 4;
      }
      for (int j = 0; j < kBlock / 2; ++j) {
        dst[off + j] = static_cast<char>((q[j] & 0x0f) | (q[j + kBlock / 2] & 0x0f) << 4);
      }
    }
  }
  return out;
}

std::string EncodeF32(const float* v, int64_t n) {
  return std::string(reinterpret_cast<const char*>(v), static_cast<size_t>(n) * 4);
}

// F16 unless a finite value overflows fp16 (then F32).
void AddFloatMatrix(model::GgufWriter* w, const std::string& name, const MatrixF& m) {
  const int64_t n = m.size();
  bool fits = true;
  for (int64_t i = 0; i < n && fits; ++i) fits = !(std::fabs(m.data()[i]) > 65504.0f);
  std::vector<int64_t> ne = m.rows() == 1 ? std::vector<int64_t>{m.cols()}
                                          : std::vector<int64_t>{m.cols(), m.rows()};
  if (!fits || m.rows() == 1) {
    w->AddTensor(name, std::move(ne), GgmlType::kF32, EncodeF32(m.data(), n));
    return;
  }
  std::string out(static_cast<size_t>(n) * 2, '\0');
  for (int64_t i = 0; i < n; ++i) PutHalf(&out[2 * i], m.data()[i]);
  w->AddTensor(name, std::move(ne), GgmlType::kF16, std::move(out));
}

int64_t TokenIdOr(const nlohmann::json& cfg, const char* key, int64_t fallback) {
  if (!cfg.contains(key)) return fallback;
  const nlohmann::json& v = cfg[key];
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_array() && !v.empty() && v[0].is_number_integer()) return v[0].get<int64_t>();
  return fallback;
}

// The GGUF architecture llama.cpp runs a model of `cfg` as, and what its graph needs.
struct GgufArch {
  std::string name;         // general.architecture and the metadata key prefix
  bool permute_qk = false;  // llama: RoPE on adjacent pairs, so q/k rows are permuted
  bool sliding = false;     // gemma2/gemma3: per-layer sliding-window pattern
};

// Facts from llama.cpp's src/models/{llama,qwen2,qwen3,gemma2,gemma3}.cpp (the version
// llama-cpp-python 0.3.36 vendors) and conversion/{llama,qwen,gemma}.py.
absl::StatusOr<GgufArch> ChooseArch(const model::LlamaConfig& cfg) {
  using model::Family;
  const std::string arch_name(model::ArchitectureName(cfg.family));
  auto refuse = [&](const std::string& why) {
    return absl::FailedPreconditionError(absl::StrCat(
        arch_name, " ", why, " is not expressible in GGUF for llama.cpp; use --format hf or "
        "compressed-tensors"));
  };
  const bool biases = cfg.qkv_bias || cfg.o_bias;
  GgufArch a;
  switch (cfg.family) {
    case Family::kLlama:
    case Family::kMistral:
      if (biases) return refuse("with attention biases");
      if (cfg.sliding_window > 0) return refuse("with a sliding window");
      a.name = "llama";
      a.permute_qk = true;
      break;
    case Family::kQwen2:
      // llama.cpp's qwen2 graph: q/k/v biases, full attention, o_proj [hidden, hidden].
      if (cfg.o_bias) return refuse("with an o_proj bias");
      if (cfg.sliding_window > 0) return refuse("with sliding-window layers (use_sliding_window)");
      if (cfg.num_heads * cfg.head_dim != cfg.hidden_size) {
        return refuse(absl::StrCat("with num_attention_heads x head_dim = ",
                                   cfg.num_heads * cfg.head_dim, " != hidden_size ",
                                   cfg.hidden_size));
      }
      a.name = "qwen2";
      break;
    case Family::kQwen3:
      if (biases) return refuse("with attention biases (attention_bias)");
      if (cfg.sliding_window > 0) return refuse("with sliding-window layers (use_sliding_window)");
      a.name = "qwen3";
      break;
    case Family::kGemma2:
    case Family::kGemma3: {
      const bool g2 = cfg.family == Family::kGemma2;
      if (biases) return refuse("with attention biases (attention_bias)");
      // llama.cpp scales queries by 1/sqrt(head_dim), or 1/sqrt(hidden/heads) for the 27B
      // shapes (46 layers for Gemma 2, 62 for Gemma 3), not by query_pre_attn_scalar.
      const bool big = cfg.num_layers == (g2 ? 46 : 62);
      const double want = big ? double(cfg.hidden_size / cfg.num_heads) : double(cfg.head_dim);
      if (cfg.query_pre_attn_scalar != want) {
        return refuse(absl::StrCat("with query_pre_attn_scalar ", cfg.query_pre_attn_scalar,
                                   " (llama.cpp's graph scales queries by 1/sqrt(", want, "))"));
      }
      if (g2) {
        // Gemma 2's graph always soft-caps both (and divides by the caps).
        if (cfg.attn_softcap <= 0 || cfg.final_softcap <= 0) {
          return refuse("without attention and final logit soft-capping");
        }
        if (!cfg.tie_word_embeddings) return refuse("with an untied lm_head");
      } else {
        if (cfg.attn_softcap > 0) return refuse("with attention logit soft-capping");
        if (cfg.sliding_window == 0 && !cfg.sliding_layers.empty() && cfg.rope_local != cfg.rope) {
          return refuse("with a local RoPE but no sliding window");
        }
        if (cfg.sliding_window > 0 && cfg.rope_local.type != model::RopeType::kDefault &&
            cfg.rope_local.type != model::RopeType::kDynamic) {
          return refuse(absl::StrCat("with RoPE type ",
                                     std::string(model::RopeTypeName(cfg.rope_local.type)),
                                     " on the sliding layers"));
        }
      }
      a.name = g2 ? "gemma2" : "gemma3";
      a.sliding = true;
      break;
    }
    case Family::kPhi3:
      return refuse("(fused qkv_proj / gate_up_proj, LongRoPE: not written yet)");
  }
  // RoPE: default (dynamic is the default up to max_position_embeddings) or linear.
  const model::RopeType rt = cfg.rope.type;
  if (rt != model::RopeType::kDefault && rt != model::RopeType::kDynamic &&
      rt != model::RopeType::kLinear) {
    return refuse(absl::StrCat("with RoPE type ", std::string(model::RopeTypeName(rt)),
                               " (only default, dynamic and linear are written)"));
  }
  if (model::RotaryDim(cfg.rope, cfg.head_dim) != cfg.head_dim) return refuse("with partial RoPE");
  return a;
}

// GGUF name of HF tensor `hf` in `cfg`'s family: the per-family names (biases, q/k norms,
// Gemma's sandwich norms) first, then the llama mapping (engine/model/gguf_convert.h).
absl::StatusOr<std::string> GgufName(const model::LlamaConfig& cfg, const std::string& hf) {
  static constexpr std::pair<const char*, const char*> kCommon[] = {
      {"self_attn.q_proj.bias", "attn_q.bias"},
      {"self_attn.k_proj.bias", "attn_k.bias"},
      {"self_attn.v_proj.bias", "attn_v.bias"},
      {"self_attn.q_norm.weight", "attn_q_norm.weight"},
      {"self_attn.k_norm.weight", "attn_k_norm.weight"}};
  static constexpr std::pair<const char*, const char*> kSandwich[] = {
      {"post_attention_layernorm.weight", "post_attention_norm.weight"},
      {"pre_feedforward_layernorm.weight", "ffn_norm.weight"},
      {"post_feedforward_layernorm.weight", "post_ffw_norm.weight"}};
  const std::string prefix = "model.layers.";
  if (absl::StartsWith(hf, prefix)) {
    const size_t dot = hf.find('.', prefix.size());
    if (dot != std::string::npos) {
      const std::string layer = hf.substr(prefix.size(), dot - prefix.size());
      const std::string part = hf.substr(dot + 1);
      for (const auto& [h, g] : kCommon) {
        if (part == h) return absl::StrCat("blk.", layer, ".", g);
      }
      if (cfg.sandwich_norms) {
        for (const auto& [h, g] : kSandwich) {
          if (part == h) return absl::StrCat("blk.", layer, ".", g);
        }
      }
    }
  }
  return model::GgufTensorName(hf);
}

}  // namespace

absl::StatusOr<GgufExportSummary> ExportGguf(const std::string& native_dir,
                                             const std::string& out_file) {
  QUANTD_ASSIGN_OR_RETURN(std::string manifest_text, ReadFile(JoinPath(native_dir, "manifest.json")));
  QUANTD_ASSIGN_OR_RETURN(ExportSpec spec, ExportSpecFromManifest(manifest_text));
  QUANTD_RETURN_IF_ERROR(CheckExportable(spec, ExportFormat::kGguf));
  QUANTD_ASSIGN_OR_RETURN(const GgmlType type, GgufTypeFor(spec));
  QUANTD_ASSIGN_OR_RETURN(model::LlamaConfig cfg, model::LoadLlamaConfig(native_dir));
  QUANTD_ASSIGN_OR_RETURN(const GgufArch arch, ChooseArch(cfg));
  QUANTD_ASSIGN_OR_RETURN(std::string config_text, ReadFile(JoinPath(native_dir, "config.json")));
  const nlohmann::json config = nlohmann::json::parse(config_text, nullptr, false);
  const nlohmann::json manifest = nlohmann::json::parse(manifest_text, nullptr, false);
  QUANTD_ASSIGN_OR_RETURN(auto ckpt, model::Checkpoint::Open(native_dir));
  for (const char* online : {kOnlineDownTensor, kOnlineOTensor}) {
    if (ckpt->Get(online).ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          native_dir, " rotates activations online (", online, "), which GGUF cannot express"));
    }
  }

  model::GgufWriter w;
  w.SetString("general.architecture", arch.name);
  std::string name = "quantd export";
  if (manifest.is_object() && manifest.contains("name") && manifest["name"].is_string()) {
    name = manifest["name"].get<std::string>();
    if (manifest.contains("version") && manifest["version"].is_number_integer()) {
      absl::StrAppend(&name, "@", manifest["version"].get<int64_t>());
    }
  }
  w.SetString("general.name", name);
  w.SetU32("general.file_type", FileType(type));
  w.SetU32("general.quantization_version", 2);  // GGML_QNT_VERSION
  w.SetU32("general.alignment", 32);
  const std::string k = arch.name + ".";
  w.SetU32(k + "context_length", static_cast<uint32_t>(cfg.max_position_embeddings));
  w.SetU32(k + "embedding_length", static_cast<uint32_t>(cfg.hidden_size));
  w.SetU32(k + "block_count", static_cast<uint32_t>(cfg.num_layers));
  w.SetU32(k + "feed_forward_length", static_cast<uint32_t>(cfg.intermediate_size));
  w.SetU32(k + "attention.head_count", static_cast<uint32_t>(cfg.num_heads));
  w.SetU32(k + "attention.head_count_kv", static_cast<uint32_t>(cfg.num_kv_heads));
  w.SetU32(k + "attention.key_length", static_cast<uint32_t>(cfg.head_dim));
  w.SetU32(k + "attention.value_length", static_cast<uint32_t>(cfg.head_dim));
  w.SetU32(k + "rope.dimension_count", static_cast<uint32_t>(cfg.head_dim));
  w.SetF32(k + "rope.freq_base", static_cast<float>(cfg.rope.theta));
  if (cfg.rope.type == model::RopeType::kLinear) {
    w.SetString(k + "rope.scaling.type", "linear");
    w.SetF32(k + "rope.scaling.factor", static_cast<float>(cfg.rope.factor));
  }
  w.SetF32(k + "attention.layer_norm_rms_epsilon", static_cast<float>(cfg.rms_norm_eps));
  w.SetU32(k + "vocab_size", static_cast<uint32_t>(cfg.vocab_size));
  if (arch.sliding) {
    // Which layers slide, per layer (llama.cpp reads an array as well as a period).
    std::vector<int32_t> pattern(cfg.num_layers, 0);
    for (int l = 0; l < cfg.num_layers; ++l) pattern[l] = cfg.LayerWindow(l) > 0 ? 1 : 0;
    if (cfg.sliding_window > 0) {
      w.SetU32(k + "attention.sliding_window", static_cast<uint32_t>(cfg.sliding_window));
      w.SetI32Array(k + "attention.sliding_window_pattern", pattern);
      if (cfg.has_local_rope) w.SetF32(k + "rope.freq_base_swa", static_cast<float>(cfg.rope_local.theta));
    } else if (cfg.family == model::Family::kGemma2) {
      w.SetI32Array(k + "attention.sliding_window_pattern", pattern);  // all 0: no layer slides
    }
  }
  if (cfg.attn_softcap > 0) {
    w.SetF32(k + "attn_logit_softcapping", static_cast<float>(cfg.attn_softcap));
  }
  if (cfg.final_softcap > 0) {
    w.SetF32(k + "final_logit_softcapping", static_cast<float>(cfg.final_softcap));
  }
  model::GgufTokenizerIds ids;
  ids.bos = TokenIdOr(config, "bos_token_id", -1);
  ids.eos = TokenIdOr(config, "eos_token_id", -1);
  ids.vocab_size = cfg.vocab_size;
  QUANTD_RETURN_IF_ERROR(model::WriteGgufTokenizer(native_dir, ids, &w));

  GgufExportSummary summary;
  summary.type = type;
  for (const std::string& n : ckpt->Names()) {
    if (IsScaleTensor(n)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "tensor ", n, ": the artifact carries fine-tuned real scales (quantd_format 2), which the GGUF "
          "export cannot express; export it as hf (dequantized) instead"));
    }
  }
  for (const std::string& stored : ckpt->Names()) {
    const bool packed = absl::EndsWith(stored, ".qweight");
    const std::string hf = packed ? stored.substr(0, stored.size() - 8) + ".weight" : stored;
    auto gguf_name = GgufName(cfg, hf);
    if (!gguf_name.ok()) {
      return absl::FailedPreconditionError(absl::StrCat("tensor ", stored, " has no ", arch.name,
                                                        " GGUF equivalent: ",
                                                        gguf_name.status().message()));
    }
    const bool is_q = arch.permute_qk && absl::EndsWith(*gguf_name, ".attn_q.weight"),
               is_k = arch.permute_qk && absl::EndsWith(*gguf_name, ".attn_k.weight");
    if (!packed) {
      QUANTD_ASSIGN_OR_RETURN(MatrixF m, ckpt->ReadMatrix(stored));
      if (is_q || is_k) {
        return absl::FailedPreconditionError(absl::StrCat("tensor ", stored, " is not quantized"));
      }
      // Gemma's RMSNorm scales are stored as w and applied as (1 + w); llama.cpp multiplies by
      // the stored value, so the converter stores 1 + w (conversion/gemma.py).
      if (cfg.norm_plus_one && m.rows() == 1 && absl::EndsWith(hf, "norm.weight")) {
        m.array() += 1.0f;
      }
      AddFloatMatrix(&w, *gguf_name, m);
      continue;
    }
    QUANTD_ASSIGN_OR_RETURN(model::TensorView v, ckpt->Get(stored));
    auto c = quant::DecodePacked(v.data);
    if (!c.ok()) return absl::DataLossError(absl::StrCat("tensor ", stored, ": ", c.status().message()));
    std::vector<int64_t> rows(c->m);
    for (int64_t r = 0; r < c->m; ++r) rows[r] = r;
    if (is_q || is_k) {
      QUANTD_ASSIGN_OR_RETURN(rows, model::QkPermutation(c->m, is_q ? cfg.num_heads : cfg.num_kv_heads));
    }
    if (c->n % kBlock != 0) {
      // ggml rows must hold whole blocks: store the exact dequantized values.
      auto m = quant::DequantizeMatrix(v.data);
      if (!m.ok()) return absl::DataLossError(absl::StrCat("tensor ", stored, ": ", m.status().message()));
      MatrixF p(c->m, c->n);
      for (int64_t r = 0; r < c->m; ++r) p.row(r) = m->row(rows[r]);
      w.AddTensor(*gguf_name, {c->n, c->m}, GgmlType::kF32, EncodeF32(p.data(), p.size()));
      ++summary.fallback_f32;
      continue;
    }
    QUANTD_ASSIGN_OR_RETURN(std::string blocks, EncodeBlocks(*c, type, rows, stored));
    w.AddTensor(*gguf_name, {c->n, c->m}, type, std::move(blocks));
    ++summary.quantized;
  }
  QUANTD_ASSIGN_OR_RETURN(std::string bytes, w.Build());
  summary.bytes = bytes.size();
  QUANTD_RETURN_IF_ERROR(WriteFileAtomic(out_file, bytes));
  return summary;
}

}  // namespace quantd::artifact
