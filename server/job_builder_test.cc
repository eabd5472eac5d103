// The job graph's Hessian staging (HessianStageLayers, layer-block stages) and rtn jobs without
// calibration data (job_builder.cc), against the sizes docs/ARCHITECTURE.md "Hessian data at
// real size" states.
#include "server/job_builder.h"
#include "server/job_finetune.h"

#include <cstdlib>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "engine/model/synthetic_checkpoint.h"
#include "engine/model/test_util.h"
#include "gtest/gtest.h"

namespace quantd::server {
namespace {

constexpr uint64_t kGiB = uint64_t{1} << 30;

TEST(HessianStagesTest, PackedLayerBytesAndStagesOfTheDocumentedShapes) {
  const model::LlamaConfig tiny = model::LlamaShape(2048, 5632, 22, 32, 4, 32000, 2048);
  const model::LlamaConfig l7 = model::LlamaShape(4096, 11008, 32, 32, 32, 32000, 4096);
  const model::LlamaConfig l70 = model::LlamaShape(8192, 28672, 80, 64, 8, 32000, 4096);
  // 8 * sum over (d, q, d, ff) of n(n+1)/2, plus 8 bytes of token count per group.
  EXPECT_EQ(HessianLayerBytes(l7), 8 * (3 * (4096ull * 4097 / 2) + 11008ull * 11009 / 2) + 32);
  EXPECT_NEAR(HessianLayerBytes(tiny) / 1e9, 0.177, 0.001);
  EXPECT_NEAR(HessianLayerBytes(l70) / 1e9, 4.094, 0.001);
  // The table in docs/ARCHITECTURE.md at the 32 GiB default.
  EXPECT_EQ(HessianStageLayers(tiny, 2, 32 * kGiB), 22);
  EXPECT_EQ(HessianStageLayers(tiny, 8, 32 * kGiB), 11);  // 2 stages of 11, not 21 + 1
  EXPECT_EQ(HessianStageLayers(l7, 2, 32 * kGiB), 16);
  EXPECT_EQ(HessianStageLayers(l7, 8, 32 * kGiB), 5);
  EXPECT_EQ(HessianStageLayers(l70, 1, 32 * kGiB), 4);
  EXPECT_EQ(HessianStageLayers(l70, 2, 32 * kGiB), 2);
  EXPECT_EQ(HessianStageLayers(l70, 2, 128 * kGiB), 10);
  // Every stage fits the budget unless one layer alone does not.
  for (const auto* c : {&tiny, &l7, &l70}) {
    for (int64_t s : {1, 2, 4, 8}) {
      for (uint64_t b : {kGiB, 8 * kGiB, 32 * kGiB, 256 * kGiB}) {
        const int k = HessianStageLayers(*c, s, b);
        ASSERT_GE(k, 1);
        ASSERT_LE(k, c->num_layers);
        if (k > 1) EXPECT_LE((s + 1) * k * HessianLayerBytes(*c), b);
      }
    }
  }
  EXPECT_EQ(HessianStageLayers(l70, 8, 1), 1);
  EXPECT_EQ(HessianStageLayers(l7, 8, 1ull << 50), 32);
}

class BuildJobTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/quantd_jobbuilder_XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    auto roots = InputRoots::Create({model::testing::SourcePath("examples")}, false);
    ASSERT_TRUE(roots.ok()) << roots.status();
    roots_ = *roots;
  }
  void TearDown() override { RemoveAll(dir_).IgnoreError(); }

  quantd::v1::SubmitJobRequest Request(const std::string& method, bool calib) {
    quantd::v1::SubmitJobRequest r;
    r.set_name("j");
    r.set_model_dir(model::testing::ExamplePath("stories260K"));
    if (calib) r.set_calib_path(model::testing::ExamplePath("tinystories/calib_stories_0_499.u16"));
    r.set_eval_path(model::testing::ExamplePath("tinystories/eval_stories_500_999.u16"));
    r.set_max_calib_seqs(4);
    r.mutable_spec()->set_method(method);
    r.mutable_spec()->set_bits(4);
    return r;
  }

  std::string dir_;
  InputRoots roots_;
};

TEST_F(BuildJobTest, AJobOverTheStageBudgetIsCapturedInLayerBlocks) {
  auto req = Request("gptq", true);
  ASSERT_TRUE(ValidateAndDefault(&req).ok());
  auto cfg = model::LoadLlamaConfig(model::testing::ExamplePath("stories260K"));
  ASSERT_TRUE(cfg.ok());
  ASSERT_EQ(cfg->num_layers, 5);
  // 2 shards: (2 + 1) x 2 layers fit, 3 layers do not -> blocks of 2: [0,2) [2,4) [4,5).
  const uint64_t budget = 3 * 2 * HessianLayerBytes(*cfg) + 100;
  auto row = BuildJob(req, roots_, "j-1", dir_ + "/j1", 2, budget);
  ASSERT_TRUE(row.ok()) << row.status();
  EXPECT_EQ(StagesOf(row->tasks), 3);
  std::map<int, std::set<int>> quantized_layers;  // phase -> layers quantized in it
  int hessian_tasks = 0;
  for (const TaskRow& t : row->tasks) {
    const auto& task = t.task;
    if (task.kind() == quantd::v1::TASK_KIND_HESSIAN) {
      ++hessian_tasks;
      ASSERT_EQ(t.phase % 2, 0);
      const int stage = t.phase / 2;
      EXPECT_EQ(task.hessian().layer(), 2 * stage);
      EXPECT_EQ(task.hessian().layer_count(), stage < 2 ? 2 : 1);
    } else if (task.kind() == quantd::v1::TASK_KIND_QUANTIZE) {
      quantized_layers[t.phase].insert(task.quantize().layer());
      int hessians = 0;  // exactly one, of the matrix's own layer
      for (const auto& in : task.inputs()) {
        if (in.name().rfind("hessians/", 0) != 0) continue;
        ++hessians;
        EXPECT_EQ(in.name().rfind(absl::StrCat("hessians/L", task.quantize().layer(), "."), 0), 0u);
      }
      EXPECT_EQ(hessians, 1) << task.quantize().tensor_name();
    }
  }
  EXPECT_EQ(hessian_tasks, 3 * 2);
  EXPECT_EQ(quantized_layers, (std::map<int, std::set<int>>{{1, {0, 1}}, {3, {2, 3}}, {5, {4}}}));

  // Within the default budget the graph is one stage, as before.
  auto one = BuildJob(req, roots_, "j-2", dir_ + "/j2", 2, 32 * kGiB);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(StagesOf(one->tasks), 1);
  for (const TaskRow& t : one->tasks) EXPECT_EQ(t.task.hessian().layer_count(), 0);
}

TEST_F(BuildJobTest, RtnWithoutCalibrationDataHasNoHessianTasks) {
  auto req = Request("rtn", false);
  ASSERT_TRUE(ValidateAndDefault(&req).ok());
  auto row = BuildJob(req, roots_, "j-3", dir_ + "/j3", 8, 32 * kGiB);
  ASSERT_TRUE(row.ok()) << row.status();
  int quantize = 0, eval = 0;
  for (const TaskRow& t : row->tasks) {
    EXPECT_NE(t.task.kind(), quantd::v1::TASK_KIND_HESSIAN);
    if (t.task.kind() == quantd::v1::TASK_KIND_EVAL) {
      ++eval;
      // With no Hessian capture to run beside, the fp evaluation shares the quantize phase
      // (phase 1) instead of holding up every quantize task alone in phase 0.
      if (t.task.eval().target() == "fp") EXPECT_EQ(t.phase, QuantizePhase(0));
    }
    if (t.task.kind() != quantd::v1::TASK_KIND_QUANTIZE) continue;
    EXPECT_EQ(t.phase, QuantizePhase(0));
    ++quantize;
    for (const auto& in : t.task.inputs()) EXPECT_NE(in.name().rfind("hessians/", 0), 0u);
  }
  EXPECT_EQ(quantize, 5 * 7);
  EXPECT_EQ(eval, 2);
  EXPECT_EQ(row->job.calib_fingerprint(), "");
  auto fps = FingerprintJobInputs(dir_ + "/j3");
  ASSERT_TRUE(fps.ok()) << fps.status();
  EXPECT_EQ(fps->calib, "");

  // So does rtn with a bit budget (its widths are chosen by Hessian-weighted loss).
  auto budget = Request("rtn", false);
  budget.mutable_spec()->set_bits(0);
  budget.mutable_spec()->set_avg_bits(3);
  EXPECT_EQ(ValidateAndDefault(&budget).code(), absl::StatusCode::kInvalidArgument);

  // Every other method needs it.
  auto gptq = Request("gptq", false);
  absl::Status s = ValidateAndDefault(&gptq);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("only rtn runs without calibration data, not gptq"), std::string::npos)
      << s;
}

// Fine-tuning (issue 27): defaults filled in, one task per block in its own phase after the
// quantize phase with the inputs the worker replays from, evaluation and publish after them;
// unsupported requests refused naming why.
TEST_F(BuildJobTest, FinetuneAddsOnePhasePerBlockBeforeTheEvaluation) {
  auto req = Request("quip-sharp", true);
  req.mutable_spec()->mutable_finetune()->set_enabled(true);
  req.mutable_spec()->mutable_finetune()->set_epochs(2);
  req.mutable_spec()->mutable_finetune()->set_e2e("off");  // the block stage only (see below)
  ASSERT_TRUE(ValidateAndDefault(&req).ok());
  const auto& ft = req.spec().finetune();
  EXPECT_EQ(ft.epochs(), 2);
  EXPECT_DOUBLE_EQ(ft.learning_rate(), 3e-3);
  EXPECT_EQ(ft.batch_sequences(), 2);
  EXPECT_EQ(ft.holdout_sequences(), 2);
  EXPECT_EQ(ft.patience(), 1);
  // The options are part of the spec fingerprint (resume check).
  auto other = req;
  other.mutable_spec()->mutable_finetune()->set_epochs(3);
  EXPECT_NE(SpecFingerprint(req.spec()), SpecFingerprint(other.spec()));
  auto plain = Request("quip-sharp", true);
  ASSERT_TRUE(ValidateAndDefault(&plain).ok());
  EXPECT_NE(SpecFingerprint(req.spec()), SpecFingerprint(plain.spec()));

  auto row = BuildJob(req, roots_, "j-ft", dir_ + "/jft", 2, 32 * kGiB);
  ASSERT_TRUE(row.ok()) << row.status();
  EXPECT_EQ(StagesOf(row->tasks), 1);
  int blocks = 0;
  for (const TaskRow& t : row->tasks) {
    if (t.task.kind() == quantd::v1::TASK_KIND_EVAL && t.task.eval().target() == "quantized") {
      EXPECT_EQ(t.phase, EvaluatePhase(1, 5));
      EXPECT_EQ(t.phase, 7);
    }
    if (t.task.kind() != quantd::v1::TASK_KIND_FINETUNE) continue;
    const int b = t.task.finetune().block();
    EXPECT_EQ(b, blocks++);
    EXPECT_EQ(t.phase, FinetunePhase(1, b));
    int quantized = 0, tuned = 0, calib = 0;
    for (const auto& in : t.task.inputs()) {
      quantized += in.name().rfind("quantized/", 0) == 0;
      tuned += in.name().rfind("finetuned/", 0) == 0;
      calib += in.name() == "inputs/calib.u32";
    }
    EXPECT_EQ(quantized, 7 * (b + 1));
    EXPECT_EQ(tuned, b);
    EXPECT_EQ(calib, 1);
    EXPECT_EQ(t.task.finetune().token_end() - t.task.finetune().token_begin(), 4 * 512);
    EXPECT_GT(t.task.memory_bytes(), 0u);
  }
  EXPECT_EQ(blocks, 5);
  EXPECT_EQ(FinetunePhasesOf(row->tasks), 5);
  for (int p = 2; p < 7; ++p) EXPECT_EQ(PhaseName(p, 1, 5), "finetune") << p;
  EXPECT_EQ(PhaseName(1, 1, 5), "quantize");
  EXPECT_EQ(PhaseName(7, 1, 5), "evaluate");
  EXPECT_EQ(PhaseName(8, 1, 5), "publish");
  EXPECT_EQ(PhaseName(2, 1), "evaluate");  // without fine-tuning: unchanged

  auto refused = [&](auto edit, const std::string& want) {
    auto r = Request("quip-sharp", true);
    r.mutable_spec()->mutable_finetune()->set_enabled(true);
    edit(&r);
    absl::Status s = ValidateAndDefault(&r);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << want;
    EXPECT_NE(s.message().find(want), std::string::npos) << s;
  };
  using Req = quantd::v1::SubmitJobRequest;
  refused([](Req* r) { r->mutable_spec()->set_method("quarot"); },
          "finetune is not supported with quarot");
  refused([](Req* r) { r->mutable_spec()->mutable_finetune()->set_epochs(1001); },
          "finetune epochs 1001 is outside [1, 1000]");
  refused([](Req* r) { r->mutable_spec()->mutable_finetune()->set_learning_rate(-1); },
          "finetune learning_rate -1 is not in (0, 1]");
  refused([](Req* r) { r->mutable_spec()->mutable_finetune()->set_holdout_sequences(-2); },
          "finetune holdout_sequences -2");
  refused([](Req* r) { r->mutable_spec()->mutable_finetune()->set_batch_sequences(5000); },
          "finetune batch_sequences 5000");
  refused([](Req* r) { r->mutable_spec()->mutable_finetune()->set_patience(-1); },
          "finetune patience -1");
  refused(
      [](Req* r) {
        r->mutable_spec()->set_bits(0);
        r->mutable_spec()->set_avg_bits(3);
      },
      "finetune is not supported with a bit budget");
  refused(
      [](Req* r) {
        r->mutable_spec()->mutable_finetune()->set_enabled(false);
        r->mutable_spec()->mutable_finetune()->set_epochs(3);
      },
      "finetune options are set but finetune.enabled is false");
  // Too few calibration sequences to hold 2 out and train on any: refused at build time.
  auto few = Request("quip-sharp", true);
  few.mutable_spec()->mutable_finetune()->set_enabled(true);
  few.set_max_calib_seqs(2);
  ASSERT_TRUE(ValidateAndDefault(&few).ok());
  auto bad = BuildJob(few, roots_, "j-ft2", dir_ + "/jft2", 2, 32 * kGiB);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("holdout_sequences 2 leaves none of the 2"),
            std::string::npos)
      << bad.status();
}

// The end-to-end KL stage (on by default with fine-tuning): its defaults, one FINETUNE_E2E task
// in one more phase after the blocks' with every quantized matrix and tuned block as inputs, a
// memory estimate covering the fp log-probabilities, its options in the fingerprint; bad
// values refused naming them.
TEST_F(BuildJobTest, FinetuneE2eAddsOnePhaseAfterTheBlocks) {
  auto req = Request("quip-sharp", true);
  req.mutable_spec()->mutable_finetune()->set_enabled(true);
  ASSERT_TRUE(ValidateAndDefault(&req).ok());
  const auto& ft = req.spec().finetune();
  EXPECT_EQ(ft.e2e(), "on");
  EXPECT_EQ(ft.e2e_epochs(), 2);
  EXPECT_DOUBLE_EQ(ft.e2e_learning_rate(), 1e-3);
  EXPECT_FALSE(ft.e2e_head());
  auto off = Request("quip-sharp", true);
  off.mutable_spec()->mutable_finetune()->set_enabled(true);
  off.mutable_spec()->mutable_finetune()->set_e2e("off");
  ASSERT_TRUE(ValidateAndDefault(&off).ok());
  EXPECT_EQ(off.spec().finetune().e2e_epochs(), 0);  // nothing filled for a stage that is off
  EXPECT_NE(SpecFingerprint(req.spec()), SpecFingerprint(off.spec()));
  auto lr = req;
  lr.mutable_spec()->mutable_finetune()->set_e2e_learning_rate(2e-3);
  EXPECT_NE(SpecFingerprint(req.spec()), SpecFingerprint(lr.spec()));

  auto row = BuildJob(req, roots_, "j-fte", dir_ + "/jfte", 2, 32 * kGiB);
  ASSERT_TRUE(row.ok()) << row.status();
  EXPECT_TRUE(row->job.has_finetune_e2e());
  EXPECT_FALSE(row->job.finetune_e2e().done());
  EXPECT_EQ(FinetunePhasesOf(row->tasks), 6);
  int e2e = 0;
  for (const TaskRow& t : row->tasks) {
    if (t.task.kind() == quantd::v1::TASK_KIND_EVAL && t.task.eval().target() == "quantized") {
      EXPECT_EQ(t.phase, EvaluatePhase(1, 6));
    }
    if (t.task.kind() != quantd::v1::TASK_KIND_FINETUNE_E2E) continue;
    ++e2e;
    EXPECT_EQ(t.phase, FinetunePhase(1, 5));
    ASSERT_TRUE(t.task.has_finetune_e2e());
    EXPECT_EQ(t.task.finetune_e2e().seq_len(), 512);
    EXPECT_EQ(t.task.finetune_e2e().token_end() - t.task.finetune_e2e().token_begin(), 4 * 512);
    int quantized = 0, tuned = 0;
    for (const auto& in : t.task.inputs()) {
      quantized += in.name().rfind("quantized/", 0) == 0;
      tuned += in.name().rfind("finetuned/", 0) == 0;
    }
    EXPECT_EQ(quantized, 7 * 5);
    EXPECT_EQ(tuned, 5);
    // At least the fp log-probabilities (tokens x vocab floats) and three fp32 model copies.
    EXPECT_GE(t.task.memory_bytes(), 4u * 4 * 512 * 512 + 3u * 4 * 5 * 64 * 64);
  }
  EXPECT_EQ(e2e, 1);
  for (int p = 2; p < 8; ++p) EXPECT_EQ(PhaseName(p, 1, 6), "finetune") << p;
  EXPECT_EQ(PhaseName(8, 1, 6), "evaluate");

  auto refused = [&](auto edit, const std::string& want) {
    auto r = Request("quip-sharp", true);
    r.mutable_spec()->mutable_finetune()->set_enabled(true);
    edit(r.mutable_spec()->mutable_finetune());
    absl::Status s = ValidateAndDefault(&r);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << want;
    EXPECT_NE(s.message().find(want), std::string::npos) << s;
  };
  using Ft = quantd::v1::FinetuneSpec;
  refused([](Ft* f) { f->set_e2e("maybe"); }, "finetune e2e 'maybe' is not one of: on, off");
  refused([](Ft* f) { f->set_e2e_epochs(1001); }, "finetune e2e_epochs 1001 is outside [1, 1000]");
  refused([](Ft* f) { f->set_e2e_learning_rate(3); }, "finetune e2e_learning_rate 3 is not in (0, 1]");
  refused(
      [](Ft* f) {
        f->set_e2e("off");
        f->set_e2e_epochs(3);
      },
      "finetune e2e options (epochs, learning rate, head) are set but e2e is off");
  // The head of a model that ties it to the embedding: refused at build time.
  auto head = Request("quip-sharp", true);
  head.mutable_spec()->mutable_finetune()->set_enabled(true);
  head.mutable_spec()->mutable_finetune()->set_e2e_head(true);
  ASSERT_TRUE(ValidateAndDefault(&head).ok());
  auto bad = BuildJob(head, roots_, "j-fte2", dir_ + "/jfte2", 2, 32 * kGiB);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  EXPECT_NE(bad.status().message().find("ties its head to the embedding"), std::string::npos)
      << bad.status();
}

}  // namespace
}  // namespace quantd::server
