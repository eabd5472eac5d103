// GGUF export of stories260K quantized onto each GGUF grid: the file must parse, carry the llama
// and tokenizer metadata llama.cpp reads, and dequantize (through our GGUF reader, then undoing
// llama.cpp's Q/K permutation) to exactly the weights the artifact holds; refusals name the
// reason and the formats a version supports. The independent readers (gguf-py, llama.cpp) are
// in tests/engine_exports_test.py and bench/gguf_llama_cpp.sh.
#include "engine/artifact/export_gguf.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>

#include "common/file_util.h"
#include "engine/artifact/artifact.h"
#include "engine/artifact/artifact_test_util.h"
#include "engine/artifact/export_formats.h"
#include "engine/format/checkpoint.h"
#include "engine/model/gguf_convert.h"
#include "engine/model/test_util.h"
#include "engine/model/weights.h"
#include "engine/quant/quantize.h"
#include "engine/tokenizer/gguf_tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace quantd::artifact {
namespace {

struct Case {
  quant::GridTarget grid;
  model::GgmlType type;
  quant::Method method;
};

class ExportGgufTest : public testing::NativeArtifactFixture<::testing::TestWithParam<Case>> {
 protected:
  ExportGgufTest() : NativeArtifactFixture("export_gguf_test") {}

  // Writes the native artifact: every linear quantized with `spec` on an identity Hessian.
  void WriteNative(const quant::QuantSpec& spec, const std::string& manifest_spec) {
    auto ckpt = model::Checkpoint::Open(src_);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    auto packed = testing::QuantizeAllLinears(
        **ckpt, 5, spec, [](int cols) { return MatrixD::Identity(cols, cols); });
    ASSERT_TRUE(packed.ok()) << packed.status();
    packed_ = std::move(*packed);
    const absl::Status s = testing::WriteNativeArtifact(
        src_, packed_, "{\"name\": \"s\", \"version\": 3, \"spec\": " + manifest_spec + "}",
        tmp_ + "/native");
    ASSERT_TRUE(s.ok()) << s;
  }

  std::map<std::string, std::string> packed_;
};

TEST_P(ExportGgufTest, DequantizesToTheArtifactsWeights) {
  const Case c = GetParam();
  const quant::GridShape shape = quant::GridShapeOf(c.grid);
  quant::QuantSpec spec;
  spec.method = c.method;
  spec.bits = shape.bits;
  spec.group_size = 32;
  spec.grid = c.grid;
  WriteNative(spec, nlohmann::json{{"method", std::string(quant::MethodName(c.method))},
                                   {"bits", shape.bits},
                                   {"group_size", 32},
                                   {"grid", std::string(quant::GridTargetName(c.grid))}}
                        .dump());
  const std::string file = tmp_ + "/model.gguf";
  auto s = ExportGguf(tmp_ + "/native", file);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->type, c.type);
  EXPECT_EQ(s->quantized, 30);     // q, k, v, o, gate, up of 5 layers
  EXPECT_EQ(s->fallback_f32, 5);   // down_proj: 172 columns are not whole blocks of 32

  auto f = model::GgufFile::Open(file);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(*(*f)->GetString("general.architecture"), "llama");
  EXPECT_EQ(*(*f)->GetString("general.name"), "s@3");
  EXPECT_EQ(*(*f)->GetInt("llama.block_count"), 5);
  EXPECT_EQ(*(*f)->GetInt("llama.attention.head_count_kv"), 4);
  EXPECT_EQ(*(*f)->GetInt("tokenizer.ggml.bos_token_id"), 1);
  // The file converts back to HF (our GGUF->HF path: config and tokenizer checks).
  auto cfg = model::GgufToHfConfigJson(**f);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  auto tok = model::GgufTokenizerToHf(**f);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*f)->Find("tokenizer.ggml.tokens")->size(), 512u);

  const int heads[] = {8, 4};
  for (const auto& [name, bytes] : packed_) {
    auto want = quant::DequantizeMatrix(bytes);
    ASSERT_TRUE(want.ok());
    auto gname = model::GgufTensorName(name);
    ASSERT_TRUE(gname.ok());
    const model::GgufTensorInfo* t = (*f)->FindTensor(*gname);
    ASSERT_NE(t, nullptr) << *gname;
    EXPECT_EQ(t->type, want->cols() % 32 == 0 ? c.type : model::GgmlType::kF32) << *gname;
    auto got = (*f)->Dequantize(*t);
    ASSERT_TRUE(got.ok());
    const bool q = gname->find(".attn_q.") != std::string::npos;
    if (q || gname->find(".attn_k.") != std::string::npos) {
      ASSERT_TRUE(model::UnpermuteQk(got->data(), want->rows(), want->cols(), heads[q ? 0 : 1]).ok());
    }
    const bool min_offset = c.type == model::GgmlType::kQ4_1 || c.type == model::GgmlType::kQ5_1;
    double worst = 0;
    const double amax = want->cwiseAbs().maxCoeff();
    for (int64_t i = 0; i < want->size(); ++i) {
      const double d = std::fabs(static_cast<double>((*got)[i]) - want->data()[i]);
      if (min_offset) {
        worst = std::max(worst, d / amax);
      } else {
        ASSERT_EQ((*got)[i], want->data()[i]) << *gname << " element " << i;  // bit-exact
      }
    }
    // d·q + m against scale·(q − zero) with zero = −m/d: a few fp32 ulps of the matrix's range
    // (|m| and d·q are at most 2·max|w|).
    EXPECT_LT(worst, 1e-6) << *gname;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Grids, ExportGgufTest,
    ::testing::Values(Case{quant::GridTarget::kQ4_0, model::GgmlType::kQ4_0, quant::Method::kGptq},
                      Case{quant::GridTarget::kQ4_1, model::GgmlType::kQ4_1, quant::Method::kRtn},
                      Case{quant::GridTarget::kQ5_0, model::GgmlType::kQ5_0, quant::Method::kRtn},
                      Case{quant::GridTarget::kQ5_1, model::GgmlType::kQ5_1, quant::Method::kGptq},
                      Case{quant::GridTarget::kQ8_0, model::GgmlType::kQ8_0, quant::Method::kRtn}));

TEST(ExportFormatsTest, RefusalsNameTheReasonAndTheSupportedFormats) {
  auto refused = [](ExportSpec s, ExportFormat f, const std::string& why) {
    absl::Status st = CheckExportable(s, f);
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << s.method << " " << s.bits;
    EXPECT_NE(st.message().find(why), std::string::npos) << st.message();
    EXPECT_NE(st.message().find("can be fetched as: native, hf"), std::string::npos) << st.message();
  };
  for (const char* m : {"quip", "quip-sharp", "qtip", "butterfly", "quarot"}) {
    for (ExportFormat f : {ExportFormat::kGptq, ExportFormat::kCompressedTensors, ExportFormat::kGguf}) {
      refused({m, 2, 0, false, quant::GridTarget::kDefault}, f,
              std::string(m) == "quarot" ? "online" : "no engine format reads");
    }
  }
  refused({"gptq", 4, 0, false, quant::GridTarget::kDefault}, ExportFormat::kGguf,
          "one grid per output channel");
  refused({"gptq", 4, 128, false, quant::GridTarget::kDefault}, ExportFormat::kGguf, "groups of 128");
  refused({"rtn", 8, 32, false, quant::GridTarget::kDefault}, ExportFormat::kGguf, "--grid q8_0");
  refused({"gptq", 3, 32, false, quant::GridTarget::kDefault}, ExportFormat::kGguf, "3-bit");
  refused({"gptq", 4, 32, false, quant::GridTarget::kQ4_1}, ExportFormat::kGptq, "fractional zero");
  refused({"gptq", 5, 32, false, quant::GridTarget::kQ5_0}, ExportFormat::kGptq, "not 5");
  refused({"gptq", 3, 128, false, quant::GridTarget::kDefault}, ExportFormat::kCompressedTensors,
          "4 and 8 bits only");
  // What the manifest lists (implemented formats only).
  EXPECT_TRUE(CheckExportable({"gptq", 4, 32, false, quant::GridTarget::kQ4_0}, ExportFormat::kGptq).ok());
  EXPECT_EQ(ExportFormatsFor({"gptq", 4, 32, false, quant::GridTarget::kQ4_0}),
            (std::vector<std::string>{"gptq", "compressed-tensors", "gguf-q4_0"}));
  EXPECT_EQ(ExportFormatsFor({"rtn", 4, 32, false, quant::GridTarget::kDefault}),
            (std::vector<std::string>{"gptq", "compressed-tensors", "gguf-q4_1"}));
  EXPECT_EQ(ExportFormatsFor({"gptq", 3, 0, true, quant::GridTarget::kDefault}),
            (std::vector<std::string>{"gptq"}));
  EXPECT_EQ(ExportFormatsFor({"gptq", 5, 32, false, quant::GridTarget::kQ5_1}),
            (std::vector<std::string>{"gguf-q5_1"}));
  EXPECT_TRUE(ExportFormatsFor({"quip-sharp", 2, 0, false, quant::GridTarget::kDefault}).empty());
}

// A native artifact of an issue 23 family fixture in `dir`: config.json edited by `edit`,
// every stored linear RTN-quantized on the Q4_0 grid, a 96-token byte-level BPE tokenizer.json.
// Fills `packed` (weight name -> packed bytes).
void WriteFamilyNative(const std::string& family, const std::string& dir,
                       const std::function<void(nlohmann::json*)>& edit,
                       std::map<std::string, std::string>* packed) {
  const std::string src = model::testing::SourcePath("engine/model/testdata/families/" + family);
  ASSERT_TRUE(MakeDirs(dir).ok());
  nlohmann::json config = nlohmann::json::parse(*ReadFile(src + "/config.json"));
  edit(&config);
  ASSERT_TRUE(WriteFileAtomic(dir + "/config.json", config.dump()).ok());
  auto cfg = model::LoadLlamaConfig(dir);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  auto ckpt = model::Checkpoint::Open(src);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  quant::QuantSpec spec;
  spec.method = quant::Method::kRtn;
  spec.bits = 4;
  spec.group_size = 32;
  spec.grid = quant::GridTarget::kQ4_0;
  auto dev = quant::MakeCpuDevice(1);
  for (int l = 0; l < cfg->num_layers; ++l) {
    for (const model::StoredLinear& sl : model::StoredLinears(*cfg)) {
      const std::string name = model::StoredTensorName(l, sl);
      auto w = (*ckpt)->ReadMatrix(name);
      ASSERT_TRUE(w.ok()) << w.status();
      auto q = quant::QuantizeMatrix(*dev, *w, MatrixD::Identity(w->cols(), w->cols()), spec, name);
      ASSERT_TRUE(q.ok()) << q.status();
      (*packed)[name] = q->packed;
    }
  }
  ASSERT_TRUE(WriteArtifactModel(**ckpt, *packed, dir + "/model.safetensors").ok());
  nlohmann::json vocab = nlohmann::json::object();
  for (int i = 0; i < 94; ++i) vocab[std::string(1, static_cast<char>(33 + i))] = i;
  vocab["\xc4\xa0"] = 94;  // byte-level ' '
  vocab["\xc4\x8a"] = 95;  // byte-level '\n'
  const nlohmann::json tok = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}},
                              {"decoder", {{"type", "ByteLevel"}}},
                              {"added_tokens", nlohmann::json::array()}};
  ASSERT_TRUE(WriteFileAtomic(dir + "/tokenizer.json", tok.dump()).ok());
  ASSERT_TRUE(WriteFileAtomic(dir + "/manifest.json",
                              R"({"name": "f", "version": 1, "spec": {"method": "rtn", "bits": 4,
                                  "group_size": 32, "grid": "q4_0"}})")
                  .ok());
}

// The GGUF name llama.cpp's loader looks for (src/llama-arch.cpp LLM_TENSOR_NAMES), written out
// independently of the export's mapping.
std::string ExpectedGgufName(const std::string& hf, bool gemma) {
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  const std::map<std::string, std::string> parts = {
      {"input_layernorm.weight", "attn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"self_attn.q_proj.bias", "attn_q.bias"},
      {"self_attn.k_proj.bias", "attn_k.bias"},
      {"self_attn.v_proj.bias", "attn_v.bias"},
      {"self_attn.q_norm.weight", "attn_q_norm.weight"},
      {"self_attn.k_norm.weight", "attn_k_norm.weight"},
      {"post_attention_layernorm.weight", gemma ? "post_attention_norm.weight" : "ffn_norm.weight"},
      {"pre_feedforward_layernorm.weight", "ffn_norm.weight"},
      {"post_feedforward_layernorm.weight", "post_ffw_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"}};
  const size_t dot = hf.find('.', 13);  // after "model.layers."
  const std::string layer = hf.substr(13, dot - 13);
  auto it = parts.find(hf.substr(dot + 1));
  return it == parts.end() ? "?" + hf : "blk." + layer + "." + it->second;
}

// Qwen2, Qwen3, Gemma 2 and Gemma 3 are written as llama.cpp's qwen2 / qwen3 / gemma2 / gemma3
// architectures: their metadata, their own tensors (biases, q/k norms, sandwich norms stored as
// 1 + w for Gemma), and linears that dequantize to the artifact's weights without the llama
// Q/K permutation (their graphs rotate halves, as transformers). The fixtures' settings that
// llama.cpp's graphs do not express are edited out here (the refusals are the next test).
TEST(ExportGgufFamiliesTest, QwenAndGemmaArchitectures) {
  char tmpl[] = "/tmp/quantd_gguf_family_XXXXXX";
  const std::string tmp = ::mkdtemp(tmpl);
  struct FamilyCase {
    const char* family;
    const char* arch;
    std::function<void(nlohmann::json*)> edit;
    std::vector<std::string> tensors;  // GGUF names that must be present
  };
  const std::vector<FamilyCase> cases = {
      {"qwen2", "qwen2", [](nlohmann::json* c) { (*c)["use_sliding_window"] = false; },
       {"blk.0.attn_q.bias", "blk.1.attn_v.bias", "output.weight"}},
      {"qwen3", "qwen3", [](nlohmann::json*) {},
       {"blk.0.attn_q_norm.weight", "blk.1.attn_k_norm.weight"}},
      {"gemma2", "gemma2", [](nlohmann::json* c) { (*c)["query_pre_attn_scalar"] = 16; },
       {"blk.0.post_attention_norm.weight", "blk.0.ffn_norm.weight", "blk.1.post_ffw_norm.weight"}},
      {"gemma3", "gemma3", [](nlohmann::json* c) { (*c)["query_pre_attn_scalar"] = 16; },
       {"blk.0.attn_q_norm.weight", "blk.1.post_ffw_norm.weight"}},
  };
  for (const FamilyCase& fc : cases) {
    SCOPED_TRACE(fc.family);
    const std::string dir = tmp + "/" + fc.family;
    std::map<std::string, std::string> packed;
    WriteFamilyNative(fc.family, dir, fc.edit, &packed);
    auto s = ExportGguf(dir, dir + "/model.gguf");
    ASSERT_TRUE(s.ok()) << s.status();
    auto f = model::GgufFile::Open(dir + "/model.gguf");
    ASSERT_TRUE(f.ok()) << f.status();
    const std::string k = std::string(fc.arch) + ".";
    EXPECT_EQ(*(*f)->GetString("general.architecture"), fc.arch);
    EXPECT_EQ(*(*f)->GetInt(k + "block_count"), 2);
    EXPECT_EQ(*(*f)->GetInt(k + "attention.head_count_kv"), 2);
    EXPECT_EQ((*f)->Find("tokenizer.ggml.tokens")->size(), 96u);
    for (const std::string& t : fc.tensors) EXPECT_NE((*f)->FindTensor(t), nullptr) << t;
    if (std::string(fc.arch).rfind("gemma", 0) == 0) {
      // Layer 0 slides, layer 1 attends fully (Gemma 2: even layers; sliding_window_pattern 2).
      const model::GgufValue* pattern = (*f)->Find(k + "attention.sliding_window_pattern");
      ASSERT_NE(pattern, nullptr);
      EXPECT_EQ(pattern->ints, (std::vector<int64_t>{1, 0}));
      EXPECT_EQ(*(*f)->GetInt(k + "attention.sliding_window"), 8);
    }
    if (std::string(fc.arch) == "gemma2") {
      EXPECT_EQ(*(*f)->GetFloat(k + "attn_logit_softcapping"), 5.0);
      EXPECT_EQ(*(*f)->GetFloat(k + "final_logit_softcapping"), 10.0);
    }
    if (std::string(fc.arch) == "gemma3") {
      EXPECT_EQ(*(*f)->GetFloat(k + "rope.freq_base"), 1e6);  // full layers, linear factor 4
      EXPECT_EQ(*(*f)->GetString(k + "rope.scaling.type"), "linear");
      EXPECT_EQ(*(*f)->GetFloat(k + "rope.scaling.factor"), 4.0);
      EXPECT_EQ(*(*f)->GetFloat(k + "rope.freq_base_swa"), 1e4);
      EXPECT_EQ((*f)->Find(k + "attn_logit_softcapping"), nullptr);
    }
    // Every tensor of the artifact, exactly: the linears dequantize to the artifact's weights in
    // HF row order (no Q/K permutation), the vectors are the artifact's (+ 1 for Gemma's norms),
    // the fp16 embedding is stored as F16.
    auto art = model::Checkpoint::Open(dir);
    ASSERT_TRUE(art.ok());
    const bool gemma = std::string(fc.family).rfind("gemma", 0) == 0;
    int checked = 0;
    for (const std::string& stored : (*art)->Names()) {
      const bool q = stored.size() > 8 && stored.compare(stored.size() - 8, 8, ".qweight") == 0;
      const std::string hf = q ? stored.substr(0, stored.size() - 8) + ".weight" : stored;
      MatrixF want;
      if (q) {
        auto m = quant::DequantizeMatrix(packed.at(hf));
        ASSERT_TRUE(m.ok());
        want = *m;
      } else {
        auto m = (*art)->ReadMatrix(stored);
        ASSERT_TRUE(m.ok());
        want = *m;
        if (gemma && want.rows() == 1 && hf.find("norm.weight") != std::string::npos) {
          want.array() += 1.0f;
        }
      }
      const std::string gname = ExpectedGgufName(hf, gemma);
      const model::GgufTensorInfo* t = (*f)->FindTensor(gname);
      ASSERT_NE(t, nullptr) << hf << " -> " << gname;
      auto got = (*f)->Dequantize(*t);
      ASSERT_TRUE(got.ok()) << got.status();
      ASSERT_EQ(static_cast<int64_t>(got->size()), want.size()) << gname;
      for (int64_t i = 0; i < want.size(); ++i) {
        ASSERT_EQ((*got)[i], want.data()[i]) << gname << " element " << i;  // exact
      }
      ++checked;
    }
    EXPECT_EQ(checked, static_cast<int>((*art)->Names().size()));
  }
  ASSERT_TRUE(RemoveAll(tmp).ok());
}

// What llama.cpp's graphs cannot compute is refused before any tensor is read, naming the
// architecture and the setting: the committed fixtures exercise exactly such settings (Qwen2's
// sliding-window layers, Gemma's query_pre_attn_scalar 24 != head_dim 16, Phi-3's fused
// tensors and LongRoPE).
TEST(ExportGgufFamiliesTest, SettingsLlamaCppCannotComputeAreRefused) {
  char tmpl[] = "/tmp/quantd_gguf_family_XXXXXX";
  const std::string tmp = ::mkdtemp(tmpl);
  const std::string manifest =
      R"({"name": "f", "version": 1, "spec": {"method": "gptq", "bits": 4, "group_size": 32,
          "grid": "q4_0"}})";
  const std::pair<const char*, const char*> cases[] = {
      {"qwen2", "Qwen2ForCausalLM with sliding-window layers"},
      {"gemma2", "Gemma2ForCausalLM with query_pre_attn_scalar 24"},
      {"gemma3", "Gemma3ForCausalLM with query_pre_attn_scalar 24"},
      {"phi3", "Phi3ForCausalLM (fused qkv_proj / gate_up_proj"},
      {"mistral", "MistralForCausalLM with a sliding window"},
      {"llama3", "LlamaForCausalLM with attention biases"}};
  for (const auto& [family, why] : cases) {
    const std::string dir = tmp + "/" + family;
    ASSERT_TRUE(MakeDirs(dir).ok());
    auto config = ReadFile(model::testing::SourcePath("engine/model/testdata/families/") + family +
                           "/config.json");
    ASSERT_TRUE(config.ok()) << config.status();
    ASSERT_TRUE(WriteFileAtomic(dir + "/config.json", *config).ok());
    ASSERT_TRUE(WriteFileAtomic(dir + "/manifest.json", manifest).ok());
    auto s = ExportGguf(dir, dir + "/model.gguf");
    EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << family << s.status();
    EXPECT_NE(s.status().message().find(why), absl::string_view::npos) << s.status();
    EXPECT_NE(s.status().message().find("not expressible in GGUF"), absl::string_view::npos)
        << s.status();
    EXPECT_NE(::access((dir + "/model.gguf").c_str(), F_OK), 0) << family;
  }
  ASSERT_TRUE(RemoveAll(tmp).ok());
}

TEST(ExportFormatsTest, ManifestSpecParsing) {
  auto s = ExportSpecFromManifest(R"({"spec": {"method": "gptq", "bits": 4, "group_size": 32,
                                              "grid": "q4_0"}})");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->grid, quant::GridTarget::kQ4_0);
  EXPECT_EQ(ExportSpecFromManifest("{}").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ExportSpecFromManifest(R"({"spec": {"method": "gptq", "bits": 4, "grid": "q9"}})")
                .status().code(),
            absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace quantd::artifact
