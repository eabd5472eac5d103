// Round trips of the native artifact: written from a checkpoint with quantized matrices, loaded
// back, and exported to a Hugging Face directory whose fp16/bf16/f32 tensors must equal the
// dequantized weights to within the target precision's rounding.
#include "engine/artifact/artifact.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <unistd.h>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "gtest/gtest.h"
#include "engine/artifact/artifact_test_util.h"
#include "engine/artifact/export_compressed.h"
#include "engine/artifact/export_gguf.h"
#include "engine/artifact/export_gptq.h"
#include "engine/format/safetensors.h"
#include "engine/model/forward.h"
#include "engine/model/quarot.h"
#include "engine/model/test_util.h"
#include "engine/quant/grid_target.h"
#include "engine/quant/quantize.h"

namespace quantd::artifact {
namespace {

class ArtifactTest : public ::testing::Test {
 protected:
  void SetUp() override {
    src_ = model::testing::ExamplePath("stories260K");
    tmp_ = ::testing::TempDir() + "/artifact_test_" + std::to_string(getpid());
    ASSERT_TRUE(MakeDirs(tmp_ + "/native").ok());
    auto ckpt = model::Checkpoint::Open(src_);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    // Quantize two matrices of different shapes (one ragged: down is 64x172) with RTN 4-bit and
    // QuIP 2-bit on an identity Hessian; the rest stay fp32.
    auto dev = quant::MakeCpuDevice(1);
    std::map<std::string, std::string> packed;
    for (const auto& [name, method, bits] :
         {std::tuple<std::string, quant::Method, int>{"model.layers.0.self_attn.q_proj.weight",
                                                      quant::Method::kRtn, 4},
          {"model.layers.1.mlp.down_proj.weight", quant::Method::kQuip, 2}}) {
      auto w = (*ckpt)->ReadMatrix(name);
      ASSERT_TRUE(w.ok()) << w.status();
      MatrixD h = MatrixD::Identity(w->cols(), w->cols());
      quant::QuantSpec spec;
      spec.method = method;
      spec.bits = bits;
      spec.baseline_guard = false;
      auto q = quant::QuantizeMatrix(*dev, *w, h, spec, name);
      ASSERT_TRUE(q.ok()) << q.status();
      packed[name] = q->packed;
    }
    packed_ = packed;
    const absl::Status s = testing::WriteNativeArtifact(src_, packed, "{\"format_version\": 1}\n",
                                                        tmp_ + "/native");
    ASSERT_TRUE(s.ok()) << s;
    auto w = LoadArtifactWeights(tmp_ + "/native", &cfg_);
    ASSERT_TRUE(w.ok()) << w.status();
    native_ = std::move(*w);
  }
  void TearDown() override { (void)RemoveAll(tmp_); }

  std::string src_, tmp_;
  std::map<std::string, std::string> packed_;  // weight name -> packed bytes of native_
  model::LlamaConfig cfg_;
  model::LlamaWeights native_;
};

// The in-memory writer (a wrapper over the layer-streamed one, which enumerates the model's
// tensors from the config) lists exactly the checkpoint's tensors: on the all-F32 stories260K
// its file is byte-identical to the checkpoint-driven writer's, packed matrices included.
TEST_F(ArtifactTest, WeightsWriterMatchesTheCheckpointWriter) {
  auto ckpt = model::Checkpoint::Open(src_);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto fp = model::LoadLlamaWeights(**ckpt, cfg_);
  ASSERT_TRUE(fp.ok()) << fp.status();
  const std::string a = tmp_ + "/from_weights.safetensors", b = tmp_ + "/from_ckpt.safetensors";
  ASSERT_TRUE(WriteArtifactFromWeights(cfg_, *fp, packed_, a).ok());
  ASSERT_TRUE(WriteArtifactModel(**ckpt, packed_, b).ok());
  auto x = ReadFile(a), y = ReadFile(b);
  ASSERT_TRUE(x.ok() && y.ok());
  EXPECT_EQ(x->size(), y->size());
  EXPECT_TRUE(*x == *y) << "the in-memory writer's tensors differ from the checkpoint's";
}

// A packed matrix for a tensor the model lacks is an error from both writers, not dropped.
TEST_F(ArtifactTest, PackedTensorWithoutSourceIsRejected) {
  auto ckpt = model::Checkpoint::Open(src_);
  ASSERT_TRUE(ckpt.ok());
  const std::map<std::string, std::string> packed = {{"model.layers.9.mlp.up_proj.weight", "x"}};
  for (bool from_weights : {false, true}) {
    const absl::Status st =
        from_weights ? WriteArtifactFromWeights(cfg_, native_, packed, tmp_ + "/x.safetensors")
                     : WriteArtifactModel(**ckpt, packed, tmp_ + "/x.safetensors");
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_NE(st.message().find("no source tensor"), std::string::npos) << st;
    EXPECT_FALSE(std::filesystem::exists(tmp_ + "/x.safetensors"));
  }
}

TEST_F(ArtifactTest, QuantizedMatricesAreReplacedAndDequantizedOnLoad) {
  auto ckpt = model::Checkpoint::Open(tmp_ + "/native");
  ASSERT_TRUE(ckpt.ok());
  EXPECT_TRUE((*ckpt)->Get("model.layers.0.self_attn.q_proj.qweight").ok());
  EXPECT_FALSE((*ckpt)->Get("model.layers.0.self_attn.q_proj.weight").ok());
  // The loaded matrix is the dequantized one: close to, but not equal to, the original.
  auto orig = model::Checkpoint::Open(src_);
  auto w0 = (*orig)->ReadMatrix("model.layers.0.self_attn.q_proj.weight");
  const MatrixF& q = model::GetLinear(native_, 0, model::Linear::kQ);
  const double rel = (q - *w0).norm() / w0->norm();
  EXPECT_GT(rel, 1e-4);
  EXPECT_LT(rel, 0.2);
  // Unquantized matrices are bit-identical.
  auto k0 = (*orig)->ReadMatrix("model.layers.0.self_attn.k_proj.weight");
  EXPECT_EQ(model::GetLinear(native_, 0, model::Linear::kK), *k0);
}

// Fine-tuned real scales (quantd_format 2): written next to their .qweight, applied on load and
// by the HF export, refused by the GGUF and compressed-tensors exports; an artifact without
// scales still says quantd_format 1 and loads as before.
TEST_F(ArtifactTest, FinetunedScalesRoundTripAsFormat2) {
  auto ckpt = model::Checkpoint::Open(tmp_ + "/native");
  ASSERT_TRUE(ckpt.ok());
  std::map<std::string, std::string> packed;
  std::map<std::string, RealScales> scales;
  for (auto [l, lin] : {std::pair{0, model::Linear::kQ}, std::pair{1, model::Linear::kDown}}) {
    const std::string name = model::LinearTensorName(l, lin);
    auto v = (*ckpt)->Get(QuantizedTensorName(name));
    ASSERT_TRUE(v.ok());
    packed[name] = std::string(v->data);
    const MatrixF& w = model::GetLinear(native_, l, lin);
    RealScales sc;
    sc.out = VectorF::LinSpaced(w.rows(), 0.8f, 1.2f);
    sc.in = VectorF::LinSpaced(w.cols(), -1.1f, 0.9f);
    scales[name] = sc;
  }
  const std::string dir = tmp_ + "/ft";
  ASSERT_TRUE(MakeDirs(dir).ok());
  for (const char* f : {"config.json", "tok512.bin"}) {
    auto bytes = ReadFile(src_ + "/" + f);
    ASSERT_TRUE(bytes.ok());
    ASSERT_TRUE(WriteFileAtomic(dir + "/" + f, *bytes).ok());
  }
  const nlohmann::json manifest = {
      {"spec", {{"method", "rtn"}, {"bits", 4}, {"group_size", 0}, {"act_order", false},
                {"grid", std::string(quant::GridTargetName(quant::GridTarget::kDefault))}}}};
  ASSERT_TRUE(WriteFileAtomic(dir + "/manifest.json", manifest.dump()).ok());
  ASSERT_TRUE(WriteArtifactFromWeights(cfg_, native_, packed, dir + "/model.safetensors", scales).ok());
  auto file = model::SafetensorsFile::Open(dir + "/model.safetensors");
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)->metadata().at("quantd_format"), "2");
  EXPECT_TRUE(IsScaleTensor("model.layers.0.self_attn.q_proj.qweight_out_scale"));
  EXPECT_FALSE(IsScaleTensor("model.layers.0.self_attn.q_proj.qweight"));

  model::LlamaConfig cfg;
  auto w = LoadArtifactWeights(dir, &cfg);
  ASSERT_TRUE(w.ok()) << w.status();
  for (auto [l, lin] : {std::pair{0, model::Linear::kQ}, std::pair{1, model::Linear::kDown}}) {
    const RealScales& sc = scales[model::LinearTensorName(l, lin)];
    const MatrixF want = sc.out.asDiagonal() * model::GetLinear(native_, l, lin) * sc.in.asDiagonal();
    EXPECT_LE((model::GetLinear(*w, l, lin) - want).cwiseAbs().maxCoeff(), 1e-6f);
  }
  EXPECT_EQ(model::GetLinear(*w, 0, model::Linear::kK), model::GetLinear(native_, 0, model::Linear::kK));

  ASSERT_TRUE(ExportHfModel(dir, tmp_ + "/ft-hf", HfDType::kF32).ok());
  auto hf = model::Checkpoint::Open(tmp_ + "/ft-hf");
  ASSERT_TRUE(hf.ok());
  auto q = (*hf)->ReadMatrix("model.layers.0.self_attn.q_proj.weight");
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(*q, model::GetLinear(*w, 0, model::Linear::kQ));
  EXPECT_FALSE((*hf)->Get("model.layers.0.self_attn.q_proj.qweight_out_scale").ok());

  auto gguf = ExportGguf(dir, tmp_ + "/ft.gguf");
  EXPECT_EQ(gguf.status().code(), absl::StatusCode::kFailedPrecondition) << gguf.status();
  auto ct = ExportCompressedTensors(dir, tmp_ + "/ft-ct");
  EXPECT_EQ(ct.status().code(), absl::StatusCode::kFailedPrecondition) << ct.status();
  EXPECT_NE(ct.status().message().find("fine-tuned real scales"), std::string::npos) << ct.status();
  auto gq = ExportGptq(dir, tmp_ + "/ft-gptq");
  EXPECT_EQ(gq.status().code(), absl::StatusCode::kFailedPrecondition) << gq.status();
  EXPECT_NE(gq.status().message().find("fine-tuned real scales"), std::string::npos) << gq.status();

  // Scales of the wrong size, or for a matrix that is not packed, are refused.
  auto bad = scales;
  bad.begin()->second.in.resize(3);
  EXPECT_EQ(WriteArtifactFromWeights(cfg_, native_, packed, dir + "/x.safetensors", bad).code(),
            absl::StatusCode::kInvalidArgument);
  bad = scales;
  bad["model.layers.0.self_attn.k_proj.weight"] = scales.begin()->second;
  EXPECT_EQ(WriteArtifactFromWeights(cfg_, native_, packed, dir + "/x.safetensors", bad).code(),
            absl::StatusCode::kInvalidArgument);
  // No scales: format 1.
  ASSERT_TRUE(WriteArtifactFromWeights(cfg_, native_, packed, dir + "/model.safetensors").ok());
  file = model::SafetensorsFile::Open(dir + "/model.safetensors");
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)->metadata().at("quantd_format"), "1");
}

// A QuaRot model written from weights: the untied head, unit norms and the online rotation come
// back from the file, the fp tensors are bit-identical, the logits equal the original model's,
// and the HF export refuses it.
TEST_F(ArtifactTest, QuarotArtifactRoundTripsAndIsNotExportedToHf) {
  auto ckpt = model::Checkpoint::Open(src_);
  ASSERT_TRUE(ckpt.ok());
  model::LlamaConfig cfg = cfg_;
  auto fp = model::LoadLlamaWeights(**ckpt, cfg);
  ASSERT_TRUE(fp.ok());
  model::LlamaWeights w = *fp;
  ASSERT_TRUE(model::ApplyQuarot(&cfg, &w, 4).ok());
  const std::string dir = tmp_ + "/quarot";
  ASSERT_TRUE(MakeDirs(dir).ok());
  ASSERT_TRUE(WriteArtifactFromWeights(cfg, w, {}, dir + "/model.safetensors").ok());
  nlohmann::json c = nlohmann::json::parse(*ReadFile(src_ + "/config.json"));
  c["tie_word_embeddings"] = false;
  ASSERT_TRUE(WriteFileAtomic(dir + "/config.json", c.dump()).ok());
  model::LlamaConfig loaded_cfg;
  auto loaded = LoadArtifactWeights(dir, &loaded_cfg);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->online_down.size, w.online_down.size);
  EXPECT_EQ(loaded->online_down.seed, w.online_down.seed);
  EXPECT_EQ(loaded->online_o.size, cfg.num_heads);
  EXPECT_EQ(loaded->online_o.seed, w.online_o.seed);
  EXPECT_EQ(loaded->lm_head, w.lm_head);
  EXPECT_EQ(loaded->layers[2].down, w.layers[2].down);
  const std::vector<int32_t> tokens = {1, 301, 427, 309, 426, 301, 427, 309};
  auto a = model::Forward(cfg_, *fp, tokens), b = model::Forward(loaded_cfg, *loaded, tokens);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_LE((*a - *b).cwiseAbs().maxCoeff(), 1e-4);
  absl::Status s = ExportHfModel(dir, tmp_ + "/quarot_hf");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("QuaRot"), std::string::npos) << s;
  // An online rotation whose size does not match the config is corrupt, not ignored.
  for (bool down : {true, false}) {
    model::LlamaWeights bad = w;
    (down ? bad.online_down : bad.online_o).size += 1;
    ASSERT_TRUE(WriteArtifactFromWeights(cfg, bad, {}, dir + "/model.safetensors").ok());
    auto l = LoadArtifactWeights(dir, &loaded_cfg);
    EXPECT_EQ(l.status().code(), absl::StatusCode::kDataLoss) << l.status();
    EXPECT_NE(l.status().message().find(down ? kOnlineDownTensor : kOnlineOTensor),
              std::string::npos)
        << l.status();
  }
}

// The coordinator's quarot assembly streams: the rotated model one layer at a time, packed
// matrices read from files, the embedding and head in row blocks; the file is byte-identical to
// the whole-model writer's.
TEST_F(ArtifactTest, QuarotArtifactStreamedFromTheSourceIsByteIdentical) {
  auto ckpt = model::Checkpoint::Open(src_);
  ASSERT_TRUE(ckpt.ok());
  model::LlamaConfig cfg;
  auto cfg_or = model::LoadLlamaConfig(src_);
  ASSERT_TRUE(cfg_or.ok());
  cfg = *cfg_or;
  auto fp = model::LoadLlamaWeights(**ckpt, cfg);
  ASSERT_TRUE(fp.ok());
  model::LlamaConfig whole_cfg = cfg;
  model::LlamaWeights whole = *fp;
  ASSERT_TRUE(model::ApplyQuarot(&whole_cfg, &whole, 9).ok());
  // Two linears packed (in the rotated basis, as quarot's quantize tasks store them), the rest fp.
  auto dev = quant::MakeCpuDevice(1);
  std::map<std::string, std::string> packed, packed_files;
  for (const auto& [layer, lin] : {std::pair<int, model::Linear>{0, model::Linear::kV},
                                   {1, model::Linear::kDown}}) {
    const MatrixF& m = model::GetLinear(whole, layer, lin);
    quant::QuantSpec spec;
    spec.method = quant::Method::kRtn;
    spec.bits = 4;
    spec.baseline_guard = false;
    const std::string name = absl::StrCat("model.layers.", layer, ".",
                                          lin == model::Linear::kV ? "self_attn.v_proj"
                                                                   : "mlp.down_proj",
                                          ".weight");
    auto q = quant::QuantizeMatrix(*dev, m, MatrixD::Identity(m.cols(), m.cols()), spec, name);
    ASSERT_TRUE(q.ok()) << q.status();
    packed[name] = q->packed;
    packed_files[name] = tmp_ + "/" + name;
    ASSERT_TRUE(WriteFileAtomic(packed_files[name], q->packed).ok());
  }
  const std::string a = tmp_ + "/whole.safetensors", b = tmp_ + "/streamed.safetensors";
  ASSERT_TRUE(WriteArtifactFromWeights(whole_cfg, whole, packed, a).ok());
  auto src = model::QuarotWeightSource::Create(
      cfg, std::make_unique<model::CheckpointWeightSource>(cfg, **ckpt), 9);
  ASSERT_TRUE(src.ok()) << src.status();
  ASSERT_TRUE(WriteArtifactModelFromSource((*src)->config(), **src, packed_files, b).ok());
  auto x = ReadFile(a), y = ReadFile(b);
  ASSERT_TRUE(x.ok() && y.ok());
  EXPECT_EQ(x->size(), y->size());
  EXPECT_TRUE(*x == *y) << "streamed quarot artifact differs from the whole-model writer's";

  // A packed file for a tensor the model lacks is refused, naming the count.
  packed_files["model.layers.99.mlp.up_proj.weight"] = packed_files.begin()->second;
  EXPECT_EQ(WriteArtifactModelFromSource((*src)->config(), **src, packed_files, b).code(),
            absl::StatusCode::kInvalidArgument);
}

// Relative precision of each export dtype (half an ulp at the value's binade).
double Tolerance(HfDType d) {
  return d == HfDType::kF16 ? std::ldexp(1.0, -11) : d == HfDType::kBF16 ? std::ldexp(1.0, -8) : 0;
}

class ExportTest : public ArtifactTest, public ::testing::WithParamInterface<HfDType> {};

TEST_P(ExportTest, HfDirectoryHoldsTheDequantizedWeights) {
  const std::string hf = tmp_ + "/hf";
  ASSERT_TRUE(ExportHfModel(tmp_ + "/native", hf, GetParam()).ok());
  // Plain HF checkpoint: no .qweight, every linear under its .weight name.
  auto ckpt = model::Checkpoint::Open(hf);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  for (const std::string& n : (*ckpt)->Names()) {
    EXPECT_EQ(n.find(".qweight"), std::string::npos) << n;
    auto v = (*ckpt)->Get(n);
    const model::DType want = GetParam() == HfDType::kF16    ? model::DType::kF16
                              : GetParam() == HfDType::kBF16 ? model::DType::kBF16
                                                             : model::DType::kF32;
    EXPECT_EQ(v->dtype, want) << n;
  }
  auto w = LoadArtifactWeights(hf, nullptr);  // reads a plain HF dir as well
  ASSERT_TRUE(w.ok()) << w.status();
  const double tol = Tolerance(GetParam());
  for (int l = 0; l < cfg_.num_layers; ++l) {
    for (model::Linear lin : {model::Linear::kQ, model::Linear::kK, model::Linear::kV,
                              model::Linear::kO, model::Linear::kGate, model::Linear::kUp,
                              model::Linear::kDown}) {
      const MatrixF& a = model::GetLinear(native_, l, lin);
      const MatrixF& b = model::GetLinear(*w, l, lin);
      ASSERT_EQ(a.rows(), b.rows());
      ASSERT_EQ(a.cols(), b.cols());
      for (int64_t i = 0; i < a.size(); ++i) {
        ASSERT_LE(std::fabs(a.data()[i] - b.data()[i]), tol * std::fabs(a.data()[i]) + 1e-7)
            << "layer " << l << " " << model::LinearName(lin) << " element " << i;
      }
    }
  }
  // config.json says the dtype; tokenizer copied; manifest kept under another name.
  auto cfg_text = ReadFile(hf + "/config.json");
  ASSERT_TRUE(cfg_text.ok());
  auto cfg = nlohmann::json::parse(*cfg_text);
  EXPECT_EQ(cfg["torch_dtype"], GetParam() == HfDType::kF16    ? "float16"
                                : GetParam() == HfDType::kBF16 ? "bfloat16"
                                                               : "float32");
  EXPECT_EQ(cfg["hidden_size"], 64);
  EXPECT_EQ(*ReadFile(hf + "/tok512.bin"), *ReadFile(src_ + "/tok512.bin"));
  EXPECT_TRUE(std::filesystem::exists(hf + "/quantd_manifest.json"));
  EXPECT_FALSE(std::filesystem::exists(hf + "/manifest.json"));
  // The logits of the exported model follow the native ones within the export precision.
  std::vector<int32_t> tokens = {1, 301, 427, 309, 426, 301, 427, 309, 394, 265, 262, 415};
  auto la = model::Forward(cfg_, native_, tokens);
  auto lb = model::Forward(cfg_, *w, tokens);
  ASSERT_TRUE(la.ok() && lb.ok());
  const double max_diff = (*la - *lb).cwiseAbs().maxCoeff();
  EXPECT_LE(max_diff, GetParam() == HfDType::kF32 ? 1e-5 : GetParam() == HfDType::kF16 ? 0.02 : 0.3)
      << max_diff;
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ExportTest,
                         ::testing::Values(HfDType::kF16, HfDType::kBF16, HfDType::kF32));

// Export writes config.json in the layout the user gave: a transformers 5 config keeps
// rope_parameters and gets "dtype"; an older one keeps rope_theta and gets "torch_dtype".
TEST_F(ArtifactTest, ExportKeepsTheConfigLayout) {
  const nlohmann::json v4 = nlohmann::json::parse(*ReadFile(src_ + "/config.json"));
  nlohmann::json v5 = v4;
  v5.erase("rope_theta");
  v5.erase("torch_dtype");
  v5["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 10000.0}};
  v5["dtype"] = "float32";
  for (const nlohmann::json& in : {v4, v5}) {
    ASSERT_TRUE(WriteFileAtomic(tmp_ + "/native/config.json", in.dump(2)).ok());
    const std::string hf = tmp_ + "/hf_layout";
    ASSERT_TRUE(ExportHfModel(tmp_ + "/native", hf, HfDType::kBF16).ok());
    nlohmann::json out = nlohmann::json::parse(*ReadFile(hf + "/config.json"));
    nlohmann::json want = in;
    want[in.contains("dtype") ? "dtype" : "torch_dtype"] = "bfloat16";
    EXPECT_EQ(out, want) << out.dump(2);
    auto cfg = model::LoadLlamaConfig(hf);
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    EXPECT_EQ(cfg->rope, cfg_.rope);
    ASSERT_TRUE(RemoveAll(hf).ok());
  }
}

TEST_F(ArtifactTest, ExportRejectsCorruptPackedMatrices) {
  // Flip one byte in the middle of the safetensors data: a packed matrix's CRC catches it.
  auto bytes = ReadFile(tmp_ + "/native/model.safetensors");
  ASSERT_TRUE(bytes.ok());
  auto ckpt = model::Checkpoint::Open(tmp_ + "/native");
  auto q = (*ckpt)->Get("model.layers.1.mlp.down_proj.qweight");
  ASSERT_TRUE(q.ok());
  std::string corrupt = *bytes;
  // Locate the packed tensor's bytes inside the file by content and corrupt its middle.
  const size_t pos = corrupt.find(std::string(q->data));
  ASSERT_NE(pos, std::string::npos);
  corrupt[pos + q->data.size() / 2] ^= 0x5a;
  ckpt->reset();
  ASSERT_TRUE(WriteFileAtomic(tmp_ + "/native/model.safetensors", corrupt).ok());
  absl::Status st = ExportHfModel(tmp_ + "/native", tmp_ + "/hf_bad");
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_FALSE(std::filesystem::exists(tmp_ + "/hf_bad/config.json"));
}

TEST_F(ArtifactTest, ExportRefusesValuesThatOverflowFp16) {
  auto ckpt = model::Checkpoint::Open(src_);
  std::vector<model::TensorToWrite> t;
  for (const std::string& n : (*ckpt)->Names()) {
    auto v = (*ckpt)->Get(n);
    std::string data(v->data);
    if (n == "model.norm.weight") {
      const float big = 1e6f;
      std::memcpy(data.data(), &big, 4);
    }
    t.push_back({n, v->dtype, v->shape, data});
  }
  ASSERT_TRUE(model::WriteSafetensors(tmp_ + "/native/model.safetensors", t).ok());
  absl::Status st = ExportHfModel(tmp_ + "/native", tmp_ + "/hf16", HfDType::kF16);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find("model.norm.weight"), std::string::npos) << st;
  EXPECT_TRUE(ExportHfModel(tmp_ + "/native", tmp_ + "/hfbf", HfDType::kBF16).ok());
}

}  // namespace
}  // namespace quantd::artifact
