// GGUF export of stories260K quantized onto each GGUF grid: the file must parse, carry the llama
// and tokenizer metadata llama.cpp reads, and dequantize (through our GGUF reader, then undoing
// llama.cpp's Q/K permutation) to exactly the weights the artifact holds; refusals name the
// reason and the formats a version supports. The independent readers (gguf-py, llama.cpp) are
// in tests/engine_exports_test.py and bench/gguf_llama_cpp.sh.
#include "engine/artifact/export_gguf.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <map>
#include <string>

#include "common/file_util.h"
#include "engine/artifact/artifact.h"
#include "engine/artifact/export_formats.h"
#include "engine/format/checkpoint.h"
#include "engine/model/gguf_convert.h"
#include "engine/model/weights.h"
#include "engine/quant/quantize.h"
#include "engine/tokenizer/gguf_tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace quantd::artifact {
namespace {

std::string SourceDir() {
  const char* s = std::getenv("QUANTD_SOURCE_DIR");
  return s != nullptr ? s : QUANTD_TEST_SOURCE_DIR;
}

struct Case {
  quant::GridTarget grid;
  model::GgmlType type;
  quant::Method method;
};

class ExportGgufTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    src_ = SourceDir() + "/examples/stories260K";
    tmp_ = ::testing::TempDir() + "/export_gguf_test_" + std::to_string(getpid());
    ASSERT_TRUE(MakeDirs(tmp_ + "/native").ok());
  }
  void TearDown() override { ASSERT_TRUE(RemoveAll(tmp_).ok()); }

  // Writes the native artifact: every linear quantized with `spec` on an identity Hessian.
  void WriteNative(const quant::QuantSpec& spec, const std::string& manifest_spec) {
    auto ckpt = model::Checkpoint::Open(src_);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    auto dev = quant::MakeCpuDevice(1);
    for (int l = 0; l < 5; ++l) {
      for (model::Linear lin : model::kAllLinears) {
        const std::string name = model::LinearTensorName(l, lin);
        auto w = (*ckpt)->ReadMatrix(name);
        ASSERT_TRUE(w.ok()) << w.status();
        auto q = quant::QuantizeMatrix(*dev, *w, MatrixD::Identity(w->cols(), w->cols()), spec, name);
        ASSERT_TRUE(q.ok()) << q.status();
        packed_[name] = q->packed;
      }
    }
    ASSERT_TRUE(WriteArtifactModel(**ckpt, packed_, tmp_ + "/native/model.safetensors").ok());
    for (const char* f : {"config.json", "tok512.bin"}) {
      auto bytes = ReadFile(src_ + "/" + f);
      ASSERT_TRUE(bytes.ok());
      ASSERT_TRUE(WriteFileAtomic(tmp_ + "/native/" + f, *bytes).ok());
    }
    ASSERT_TRUE(WriteFileAtomic(tmp_ + "/native/manifest.json",
                                "{\"name\": \"s\", \"version\": 3, \"spec\": " + manifest_spec + "}")
                    .ok());
  }

  std::string src_, tmp_;
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

// Models the GGUF "llama" architecture cannot express (biases, q/k norms, Gemma's norms, active
// sliding windows) are refused before any tensor is read, naming the architecture; the
// issue 23 family fixtures' configs are enough.
TEST(ExportGgufFamiliesTest, NonLlamaFamiliesAreRefused) {
  char tmpl[] = "/tmp/quantd_gguf_family_XXXXXX";
  const std::string tmp = ::mkdtemp(tmpl);
  const std::string manifest =
      R"({"name": "f", "version": 1, "spec": {"method": "gptq", "bits": 4, "group_size": 32,
          "grid": "q4_0"}})";
  for (const char* family : {"qwen2", "qwen3", "gemma2", "gemma3"}) {
    const std::string dir = tmp + "/" + family;
    ASSERT_TRUE(MakeDirs(dir).ok());
    auto config = ReadFile(SourceDir() + "/engine/model/testdata/families/" + family + "/config.json");
    ASSERT_TRUE(config.ok()) << config.status();
    ASSERT_TRUE(WriteFileAtomic(dir + "/config.json", *config).ok());
    ASSERT_TRUE(WriteFileAtomic(dir + "/manifest.json", manifest).ok());
    auto s = ExportGguf(dir, dir + "/model.gguf");
    EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << family << s.status();
    EXPECT_NE(s.status().message().find("is not written to GGUF yet"), absl::string_view::npos)
        << s.status();
    EXPECT_NE(s.status().message().find("ForCausalLM"), absl::string_view::npos) << s.status();
    EXPECT_NE(::access((dir + "/model.gguf").c_str(), F_OK), 0) << family;
  }
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
