// The sequential Hessian task (executor.cc): layer l's Hessians captured through the quantized
// layers before it, checked against an in-process reference (Forward + HessianCapture on the
// model with those layers replaced), and its input errors.
#include "worker/executor.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <map>

#include "common/file_util.h"
#include "gtest/gtest.h"
#include "engine/model/forward.h"
#include "engine/model/hessian_capture.h"
#include "engine/model/hessian_shard.h"
#include "engine/model/streamed_forward.h"
#include "engine/format/safetensors.h"
#include "engine/model/test_util.h"
#include "engine/tokenizer/tokens.h"
#include "engine/quant/device.h"
#include "engine/quant/quantize.h"

namespace quantd::runner {
namespace {

using model::testing::ExamplePath;

constexpr int kSeqLen = 64;

// The full symmetric matrix of a shard's packed `upper` tensor.
MatrixD Unpacked(const model::TensorView& upper, int64_t n) {
  auto m = model::UnpackUpper(
      absl::MakeConstSpan(reinterpret_cast<const double*>(upper.data.data()),
                          upper.data.size() / sizeof(double)),
      n);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *m : MatrixD();
}

class SequentialHessianTest : public ::testing::Test {
 protected:
  void SetUp() override {
    m_ = model::testing::LoadStories260K();
    ASSERT_NE(m_, nullptr);
    dir_ = MakeTempDir();
    blobs_["inputs/model/config.json"] = ExamplePath("stories260K/config.json");
    blobs_["inputs/model/model.safetensors"] = ExamplePath("stories260K/model.safetensors");
    blobs_["inputs/calib.u16"] = ExamplePath("tinystories/calib_stories_0_499.u16");
    // Layer 0's matrices at 2 bits (rtn: far from the fp weights, so the prefix matters).
    quant::QuantSpec spec;
    spec.method = quant::Method::kRtn;
    spec.bits = 2;
    auto dev = quant::MakeCpuDevice(1);
    for (model::Linear lin : model::kAllLinears) {
      const std::string name = model::LinearTensorName(0, lin);
      const MatrixF& w = model::GetLinear(m_->w, 0, lin);
      const MatrixD h = MatrixD::Identity(w.cols(), w.cols());
      auto q = quant::QuantizeMatrix(*dev, w, h, spec, name);
      ASSERT_TRUE(q.ok()) << q.status();
      const std::string path = JoinPath(dir_, name + ".qpm");
      ASSERT_TRUE(WriteFileAtomic(path, q->packed).ok());
      blobs_["quantized/" + name] = path;
    }
  }
  void TearDown() override { RemoveAll(dir_).IgnoreError(); }

  static std::string MakeTempDir() {
    char tmpl[] = "/tmp/quantd_executor_XXXXXX";
    return ::mkdtemp(tmpl);
  }

  // A Hessian task of a sequential job for `layer` over two sequences, with `quantized` inputs.
  quantd::v1::Task TaskFor(int layer, const std::vector<std::string>& quantized) const {
    quantd::v1::Task t;
    t.set_kind(quantd::v1::TASK_KIND_HESSIAN);
    t.mutable_spec()->set_method("quip");
    t.mutable_spec()->set_bits(2);
    t.mutable_spec()->set_sequential(true);
    // Each sequence's first row weighted 64 times (issue 24); the reference below does the same.
    t.mutable_spec()->set_token_weighting("sink");
    t.mutable_spec()->set_sink_weight(64);
    t.mutable_hessian()->set_layer(layer);
    t.mutable_hessian()->set_token_begin(0);
    t.mutable_hessian()->set_token_end(2 * kSeqLen);
    t.mutable_hessian()->set_seq_len(kSeqLen);
    for (const char* n : {"inputs/model/config.json", "inputs/model/model.safetensors",
                          "inputs/calib.u16"}) {
      t.add_inputs()->set_name(n);
    }
    for (const std::string& q : quantized) t.add_inputs()->set_name(q);
    return t;
  }
  std::vector<std::string> Layer0Inputs() const {
    std::vector<std::string> out;
    for (model::Linear lin : model::kAllLinears) {
      out.push_back("quantized/" + model::LinearTensorName(0, lin));
    }
    return out;
  }
  absl::StatusOr<TaskResult> Run(const quantd::v1::Task& task, const std::string& scratch = "/tmp") {
    BlobResolver resolve = [this](const std::string& name) -> absl::StatusOr<std::string> {
      auto it = blobs_.find(name);
      if (it == blobs_.end()) return absl::NotFoundError(name);
      return it->second;
    };
    auto dev = quant::MakeCpuDevice(1);
    std::atomic<bool> cancelled{false};
    return ExecuteTask(task, resolve, *dev, cancelled, scratch);
  }

  std::unique_ptr<model::testing::Stories260K> m_;
  std::string dir_;
  std::map<std::string, std::string> blobs_;
};

TEST_F(SequentialHessianTest, CapturesLayerOneThroughTheQuantizedLayerZero) {
  auto r = Run(TaskFor(1, Layer0Inputs()));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->header.tokens(), 2 * kSeqLen);
  ASSERT_FALSE(r->data_path.empty());
  auto file = model::SafetensorsFile::Open(r->data_path);
  ASSERT_TRUE(file.ok()) << file.status();

  // Reference: the fp model with layer 0's linears replaced by their dequantized matrices.
  model::LlamaWeights wq = m_->w;
  for (model::Linear lin : model::kAllLinears) {
    auto packed = ReadFile(blobs_.at("quantized/" + model::LinearTensorName(0, lin)));
    ASSERT_TRUE(packed.ok());
    auto deq = quant::DequantizeMatrix(*packed);
    ASSERT_TRUE(deq.ok()) << deq.status();
    model::MutableLinear(wq, 0, lin) = *deq;
  }
  auto tokens = model::LoadTokenFile(blobs_.at("inputs/calib.u16"));
  ASSERT_TRUE(tokens.ok());
  std::map<model::LinearGroup, MatrixD> batched;
  model::TokenWeighting tw;
  tw.sink_weight = 64;
  {
    model::MemoryWeightSource src(m_->cfg, wq);
    model::LayerHessianStream stream(
        m_->cfg, 1, 2, [&](int, model::LinearGroup g, const MatrixD& sum, int64_t) {
          batched[g] = sum;
          return absl::OkStatus();
        },
        model::RowWeights({kSeqLen, kSeqLen}, tw));
    std::vector<absl::Span<const int32_t>> seqs;
    for (int s = 0; s < 2; ++s) seqs.emplace_back(tokens->data() + s * kSeqLen, kSeqLen);
    ASSERT_TRUE(model::ForwardBatch(m_->cfg, src, seqs, &stream).ok());
  }
  model::HessianCapture ref(m_->cfg, -1, tw), fp(m_->cfg, -1, tw);
  for (int s = 0; s < 2; ++s) {
    absl::Span<const int32_t> seq(tokens->data() + s * kSeqLen, kSeqLen);
    ASSERT_TRUE(model::Forward(m_->cfg, wq, seq, &ref).ok());
    ASSERT_TRUE(model::Forward(m_->cfg, m_->w, seq, &fp).ok());
  }
  for (model::LinearGroup g : model::kAllGroups) {
    const std::string key = "L1." + std::string(model::GroupName(g));
    auto upper = (*file)->Get(key + ".upper");
    ASSERT_TRUE(upper.ok()) << key;
    const MatrixD& want = ref.Sum(1, g);
    ASSERT_EQ(upper->shape, (std::vector<int64_t>{model::PackedUpperSize(want.rows())}));
    const MatrixD got = Unpacked(*upper, want.rows());
    // The reference forward one sequence at a time: equal within the batched forward's bound
    // (docs/ARCHITECTURE.md, "Layer-streamed forward").
    EXPECT_LT((got - want).norm(), 1e-5 * want.norm()) << key;
    // The same layer-streamed forward over wq in memory: the same bits.
    EXPECT_EQ(got, batched.at(g)) << key;
    // And not the fp model's: the quantized prefix changed layer 1's inputs.
    EXPECT_GT((got - fp.Sum(1, g)).cwiseAbs().maxCoeff(), 1e-3 * want.cwiseAbs().maxCoeff())
        << key;
    // Only the task's layer is in the shard.
    EXPECT_FALSE((*file)->Get("L0." + std::string(model::GroupName(g)) + ".upper").ok());
  }
  // A retried task sends the same bytes.
  auto again = Run(TaskFor(1, Layer0Inputs()));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*ReadFile(again->data_path), *ReadFile(r->data_path));
  for (const auto* res : {&*r, &*again}) {
    RemoveAll(std::filesystem::path(res->data_path).parent_path().string()).IgnoreError();
  }
}

TEST_F(SequentialHessianTest, MissingUnexpectedOrOutOfRangeInputsAreInvalid) {
  std::vector<std::string> missing = Layer0Inputs();
  missing.pop_back();
  auto r = Run(TaskFor(1, missing));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("lacks the quantized"), std::string::npos) << r.status();

  std::vector<std::string> extra = Layer0Inputs();
  extra.push_back("quantized/" + model::LinearTensorName(1, model::Linear::kQ));
  r = Run(TaskFor(1, extra));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("unexpected input"), std::string::npos) << r.status();

  r = Run(TaskFor(m_->cfg.num_layers, Layer0Inputs()));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);

  // Layer 0 needs no quantized input and captures the fp model's first layer.
  r = Run(TaskFor(0, {}));
  ASSERT_TRUE(r.ok()) << r.status();
}

// A job staged in blocks of layers (HessianStageLayers): the task for layers [1, 3) of the fp
// model runs layer 0 without capturing it, and its shard holds exactly layers 1 and 2 as packed
// upper triangles, with the bits of the same forward capturing every layer: a staged job merges
// the same Hessians as a one-stage job. A retry gives the same bytes.
TEST_F(SequentialHessianTest, LayerBlockTaskCapturesItsLayersWithTheFullCapturesBits) {
  ASSERT_GE(m_->cfg.num_layers, 3);
  quantd::v1::Task t = TaskFor(1, {});
  t.mutable_spec()->set_sequential(false);
  t.mutable_spec()->set_method("gptq");
  t.mutable_hessian()->set_layer_count(2);
  const std::string scratch = JoinPath(dir_, "scratch");
  ASSERT_TRUE(MakeDirs(scratch).ok());
  auto r = Run(t, scratch);
  ASSERT_TRUE(r.ok()) << r.status();
  // Written under the scratch dir, in a directory named after this process.
  EXPECT_EQ(std::filesystem::path(r->data_path).parent_path().parent_path().string(), scratch);
  EXPECT_EQ(std::filesystem::path(r->data_path).parent_path().filename().string().rfind(
                absl::StrCat("quantd_shard_", ::getpid(), "_"), 0),
            0u);
  auto file = model::SafetensorsFile::Open(r->data_path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->Names().size(), 2u * 2 * model::kNumGroups);  // 2 layers x (upper, tokens)

  auto tokens = model::LoadTokenFile(blobs_.at("inputs/calib.u16"));
  ASSERT_TRUE(tokens.ok());
  std::map<std::pair<int, model::LinearGroup>, MatrixD> all;
  {
    // The task's spec weights each sequence's first row 64 times (TaskFor); so does the reference.
    model::TokenWeighting tw;
    tw.sink_weight = 64;
    model::MemoryWeightSource src(m_->cfg, m_->w);
    model::LayerHessianStream stream(
        m_->cfg, 0, m_->cfg.num_layers,
        [&](int l, model::LinearGroup g, const MatrixD& sum, int64_t) {
          all[{l, g}] = sum;
          return absl::OkStatus();
        },
        model::RowWeights({kSeqLen, kSeqLen}, tw));
    std::vector<absl::Span<const int32_t>> seqs;
    for (int s = 0; s < 2; ++s) seqs.emplace_back(tokens->data() + s * kSeqLen, kSeqLen);
    ASSERT_TRUE(model::ForwardBatch(m_->cfg, src, seqs, &stream).ok());
  }
  for (int l = 0; l < m_->cfg.num_layers; ++l) {
    for (model::LinearGroup g : model::kAllGroups) {
      const std::string key = absl::StrCat("L", l, ".", std::string(model::GroupName(g)));
      auto upper = (*file)->Get(key + ".upper");
      if (l != 1 && l != 2) {
        EXPECT_FALSE(upper.ok()) << key;
        continue;
      }
      ASSERT_TRUE(upper.ok()) << key;
      const MatrixD& want = all.at({l, g});
      EXPECT_EQ(Unpacked(*upper, want.rows()), want) << key;
      auto tok = (*file)->Get(key + ".tokens");
      ASSERT_TRUE(tok.ok());
      int64_t n;
      memcpy(&n, tok->data.data(), 8);
      EXPECT_EQ(n, 2 * kSeqLen);
    }
  }
  auto again = Run(t, scratch);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*ReadFile(again->data_path), *ReadFile(r->data_path));

  // Out-of-range blocks are refused.
  t.mutable_hessian()->set_layer(m_->cfg.num_layers - 1);
  EXPECT_EQ(Run(t, scratch).status().code(), absl::StatusCode::kInvalidArgument);

  // Shard directories of a live process stay; a dead process's are removed, and so are ones
  // named after the caller's own pid (called at worker start: an earlier process's).
  pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ASSERT_GT(child, 0);
  ASSERT_EQ(::waitpid(child, nullptr, 0), child);
  const std::string dead = JoinPath(scratch, absl::StrCat("quantd_shard_", child, "_abcdef"));
  ASSERT_TRUE(MakeDirs(dead).ok());
  ASSERT_TRUE(WriteFileAtomic(JoinPath(dead, "shard.safetensors"), "partial").ok());
  ASSERT_TRUE(MakeDirs(JoinPath(scratch, "unrelated")).ok());
  const std::string live = JoinPath(scratch, absl::StrCat("quantd_shard_", ::getppid(), "_ghijkl"));
  ASSERT_TRUE(MakeDirs(live).ok());
  EXPECT_EQ(RemoveStaleShards(scratch), 3);  // the dead child's, r's and again's
  EXPECT_FALSE(std::filesystem::exists(dead));
  EXPECT_FALSE(std::filesystem::exists(r->data_path));
  EXPECT_TRUE(std::filesystem::exists(live));
  EXPECT_TRUE(std::filesystem::exists(JoinPath(scratch, "unrelated")));
}

// rtn without calibration data: a quantize task without a Hessian input stores the bytes it
// would with any Hessian and reports the relative weight error; other methods refuse.
TEST_F(SequentialHessianTest, RtnQuantizesWithoutAHessian) {
  quantd::v1::Task t;
  t.set_kind(quantd::v1::TASK_KIND_QUANTIZE);
  t.mutable_spec()->set_method("rtn");
  t.mutable_spec()->set_bits(4);
  t.mutable_quantize()->set_layer(1);
  t.mutable_quantize()->set_linear("down_proj");
  t.mutable_quantize()->set_tensor_name(model::LinearTensorName(1, model::Linear::kDown));
  t.mutable_quantize()->set_seed(7);
  for (const char* n : {"inputs/model/config.json", "inputs/model/model.safetensors"}) {
    t.add_inputs()->set_name(n);
  }
  auto r = Run(t);
  ASSERT_TRUE(r.ok()) << r.status();
  const MatrixF& w = model::GetLinear(m_->w, 1, model::Linear::kDown);
  quant::QuantSpec spec;
  spec.method = quant::Method::kRtn;
  spec.bits = 4;
  spec.seed = 7;
  auto dev = quant::MakeCpuDevice(1);
  MatrixD h = MatrixD::Identity(w.cols(), w.cols()) * 3.0;
  h(0, 1) = h(1, 0) = 0.5;
  auto ref = quant::QuantizeMatrix(*dev, w, h, spec, t.quantize().tensor_name());
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(r->data, ref->packed);
  auto what = quant::DequantizeMatrix(r->data);
  ASSERT_TRUE(what.ok());
  const double err = (what->cast<double>() - w.cast<double>()).squaredNorm() /
                     w.cast<double>().squaredNorm();
  EXPECT_NEAR(r->header.proxy_loss(), err, 1e-12);
  EXPECT_GT(r->header.proxy_loss(), 0);
  EXPECT_NE(r->header.note().find("no calibration data"), std::string::npos);

  t.mutable_spec()->set_method("gptq");
  EXPECT_EQ(Run(t).status().code(), absl::StatusCode::kInvalidArgument);

  // A task must carry its kind's own message (Task.work), not another kind's.
  t.mutable_spec()->set_method("rtn");
  t.mutable_hessian()->set_seq_len(8);  // replaces the quantize message
  auto wrong = Run(t);
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(wrong.status().message().find("carries no 'quantize' message"), std::string::npos)
      << wrong.status();
}

}  // namespace
}  // namespace quantd::runner
