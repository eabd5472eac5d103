// The fine-tuning backward through the Device seam (backward_device.h): a device whose backward
// ops compute what the CPU computes gives the CPU's bits, whether it runs every op itself (on
// private copies of the inputs, as a GPU does) or declines some (the CPU's op then runs), in
// one block's backward, in the block-wise fine-tuning and in the end-to-end KL stage; a device's
// other errors stop the tuning.
#include "engine/model/backward_device.h"

#include <random>
#include <set>
#include <string>

#include "common/status_macros.h"
#include "engine/model/block_grad.h"
#include "engine/model/finetune.h"
#include "engine/model/finetune_e2e.h"
#include "engine/model/forward_ops.h"
#include "engine/model/test_util.h"
#include "engine/tokenizer/tokens.h"
#include "gtest/gtest.h"

namespace quantd::model {
namespace {

using MF = grad::Mat<float>;

// A stand-in for a device's backward ops: copies every input and in/out argument (as a GPU
// uploads them), runs the CPU's op on the copies and copies the outputs back; declines
// (UNIMPLEMENTED) the ops named in `declined` and fails with `error` (when not OK) on every op.
class StandInOps : public quant::BackwardOps {
 public:
  StandInOps(std::set<std::string> declined, absl::Status error, int* calls, int* declines)
      : declined_(std::move(declined)), error_(std::move(error)), calls_(calls),
        declines_(declines) {}
  std::string name() const override { return "stand-in"; }

  absl::Status ScaledLinearBackward(const MatrixF& x, const MatrixF& c, const VectorF& a,
                                    const VectorF& b, const MatrixF& z, const MatrixF& dy,
                                    MatrixF* dx, VectorF* da, VectorF* db) override {
    QUANTD_RETURN_IF_ERROR(Enter("linear"));
    MatrixF dx2 = dx != nullptr ? *dx : MatrixF();
    VectorF da2 = *da, db2 = *db;
    QUANTD_RETURN_IF_ERROR(cpu_.ScaledLinearBackward(MatrixF(x), MatrixF(c), VectorF(a),
                                                     VectorF(b), MatrixF(z), MatrixF(dy),
                                                     dx != nullptr ? &dx2 : nullptr, &da2, &db2));
    if (dx != nullptr) *dx = dx2;
    *da = da2;
    *db = db2;
    return absl::OkStatus();
  }
  absl::Status RmsNormBackward(const MatrixF& x, const VectorF& w, const VectorF& r,
                               const MatrixF& dy, MatrixF* dx, VectorF* dw) override {
    QUANTD_RETURN_IF_ERROR(Enter("rmsnorm"));
    MatrixF dx2 = *dx;
    VectorF dw2 = *dw;
    QUANTD_RETURN_IF_ERROR(
        cpu_.RmsNormBackward(MatrixF(x), VectorF(w), VectorF(r), MatrixF(dy), &dx2, &dw2));
    *dx = dx2;
    *dw = dw2;
    return absl::OkStatus();
  }
  absl::Status RopeBackward(const MatrixF& cos, const MatrixF& sin, int heads, int hd,
                            MatrixF* m) override {
    QUANTD_RETURN_IF_ERROR(Enter("rope"));
    MatrixF m2 = *m;
    QUANTD_RETURN_IF_ERROR(cpu_.RopeBackward(MatrixF(cos), MatrixF(sin), heads, hd, &m2));
    *m = m2;
    return absl::OkStatus();
  }
  absl::Status AttentionBackward(const MatrixF& q, const MatrixF& k, const MatrixF& v,
                                 absl::Span<const MatrixF> p, const MatrixF& dout, int heads,
                                 int kv_heads, int hd, MatrixF* dq, MatrixF* dk,
                                 MatrixF* dv) override {
    QUANTD_RETURN_IF_ERROR(Enter("attention"));
    const std::vector<MatrixF> p2(p.begin(), p.end());
    MatrixF dq2 = *dq, dk2 = *dk, dv2 = *dv;
    QUANTD_RETURN_IF_ERROR(cpu_.AttentionBackward(MatrixF(q), MatrixF(k), MatrixF(v), p2,
                                                  MatrixF(dout), heads, kv_heads, hd, &dq2, &dk2,
                                                  &dv2));
    *dq = dq2;
    *dk = dk2;
    *dv = dv2;
    return absl::OkStatus();
  }
  absl::Status SiluMulBackward(const MatrixF& g, const MatrixF& u, const MatrixF& dout,
                               MatrixF* dg, MatrixF* du) override {
    QUANTD_RETURN_IF_ERROR(Enter("silu"));
    MatrixF dg2, du2;
    QUANTD_RETURN_IF_ERROR(cpu_.SiluMulBackward(MatrixF(g), MatrixF(u), MatrixF(dout), &dg2, &du2));
    *dg = dg2;
    *du = du2;
    return absl::OkStatus();
  }

 private:
  absl::Status Enter(const std::string& op) {
    ++*calls_;
    if (!error_.ok()) return error_;
    if (declined_.count(op) == 0) return absl::OkStatus();
    ++*declines_;
    return absl::UnimplementedError(op);
  }
  CpuBackwardOps cpu_;
  std::set<std::string> declined_;
  absl::Status error_;
  int* calls_;
  int* declines_;
};

// A device that is the CPU device except for its backward ops (StandInOps).
class StandInDevice : public quant::Device {
 public:
  explicit StandInDevice(std::set<std::string> declined = {}, absl::Status error = {})
      : declined_(std::move(declined)), error_(std::move(error)) {}
  std::string name() const override { return "stand-in"; }
  absl::Status AccumulateGram(const MatrixF& x, MatrixD* h) override {
    return cpu_->AccumulateGram(x, h);
  }
  absl::Status Gemm(const MatrixF& a, const MatrixF& b, MatrixF* c) override {
    return cpu_->Gemm(a, b, c);
  }
  absl::Status Gemm(const MatrixD& a, const MatrixD& b, MatrixD* c) override {
    return cpu_->Gemm(a, b, c);
  }
  absl::Status Cholesky(const MatrixD& a, MatrixD* l) override { return cpu_->Cholesky(a, l); }
  absl::Status SolveLower(const MatrixD& l, bool t, MatrixD* b) override {
    return cpu_->SolveLower(l, t, b);
  }
  absl::Status HadamardRows(MatrixD* rows) override { return cpu_->HadamardRows(rows); }
  quant::MemoryInfo GetMemoryInfo() const override { return cpu_->GetMemoryInfo(); }
  bool host_memory() const override { return false; }
  absl::StatusOr<std::unique_ptr<quant::BackwardOps>> NewBackwardOps() override {
    ++sessions;
    return std::unique_ptr<quant::BackwardOps>(
        new StandInOps(declined_, error_, &calls, &declines));
  }

  int sessions = 0, calls = 0, declines = 0;

 private:
  std::unique_ptr<quant::Device> cpu_ = quant::MakeCpuDevice(1);
  std::set<std::string> declined_;
  absl::Status error_;
};

const std::set<std::string> kAllOps = {"linear", "rmsnorm", "rope", "attention", "silu"};

std::vector<int32_t> StoryTokens(size_t count) {
  auto all = LoadTokenFile(
      testing::ExamplePath("tinystories/tinystories_valid_first1000.tok512.u16"));
  if (!all.ok() || all->size() < count) return {};
  return std::vector<int32_t>(all->begin(), all->begin() + count);
}

void ExpectSameGrads(const grad::BlockGrads<float>& a, const grad::BlockGrads<float>& b,
                     const std::string& what) {
  EXPECT_EQ(a.attn_norm, b.attn_norm) << what;
  EXPECT_EQ(a.ffn_norm, b.ffn_norm) << what;
  for (int i = 0; i < grad::kBlockLinears; ++i) {
    EXPECT_EQ(a.a[i], b.a[i]) << what << " linear " << i;
    EXPECT_EQ(a.b[i], b.b[i]) << what << " linear " << i;
  }
}

TEST(BackwardDevice, BlockGradientsOnADeviceAreTheCpuBits) {
  auto m = testing::LoadStories260K();
  ASSERT_NE(m, nullptr);
  auto d = grad::BlockDimsFor(m->cfg, 1);
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_LT(d->kv_heads, d->heads);  // GQA: KV heads sum over their query heads
  const int t = 40;
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  grad::BlockParams<float> p = grad::ParamsFromWeights<float>(m->w.layers[1]);
  for (auto& lin : p.lin) {
    for (Eigen::Index i = 0; i < lin.a.size(); ++i) lin.a(i) += 0.1f * normal(rng);
    for (Eigen::Index i = 0; i < lin.b.size(); ++i) lin.b(i) += 0.1f * normal(rng);
  }
  MF x(t, d->hidden), dy(t, d->hidden);
  for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = normal(rng);
  for (Eigen::Index i = 0; i < dy.size(); ++i) dy.data()[i] = normal(rng);
  MatrixF cos, sin;
  ops::RopeTables(m->cfg, t, &cos, &sin);
  grad::BlockCache<float> cache;
  MF y;
  grad::BlockForward<float>(*d, p, cos, sin, x, &cache, &y);
  grad::BlockGrads<float> want;
  want.Zero(p);
  MF want_dx;
  grad::BlockBackward<float>(*d, p, cos, sin, cache, dy, &want, &want_dx);

  std::unique_ptr<quant::Device> cpu = quant::MakeCpuDevice(1);
  StandInDevice all, declining(kAllOps), some({"attention", "rope"});
  for (quant::Device* dev : {cpu.get(), static_cast<quant::Device*>(&all),
                             static_cast<quant::Device*>(&declining),
                             static_cast<quant::Device*>(&some)}) {
    auto s = BackwardOpsSession::Open(dev);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(s->on_host(), dev == cpu.get());
    grad::BlockGrads<float> g;
    g.Zero(p);
    MF dx;
    ASSERT_TRUE(
        grad::BlockBackwardOn<float>(*d, p, cos, sin, cache, dy, &g, &dx, &s->ops()).ok());
    ExpectSameGrads(g, want, dev->name());
    EXPECT_EQ(dx, want_dx) << dev->name();
  }
  // Every op of the block went to the device: 7 linears, 2 norms, 2 RoPEs, attention, SiLU·mul.
  EXPECT_EQ(all.calls, 13);
  EXPECT_EQ(all.declines, 0);
  EXPECT_EQ(declining.declines, 13);
  EXPECT_EQ(some.declines, 3);
}

// Block-wise and end-to-end fine-tuning with their backward on a device: the same reports and
// tuned weights as on the CPU, bit for bit.
TEST(BackwardDevice, FinetuningOnADeviceGivesTheCpuResults) {
  auto m = testing::LoadStories260K();
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> calib = StoryTokens(6 * 64);
  ASSERT_FALSE(calib.empty()) << "examples/tinystories tokens not found";
  LlamaWeights start = m->w;  // a perturbed copy, so there is something to tune
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int l = 0; l < m->cfg.num_layers; ++l) {
    for (Linear lin : kAllLinears) {
      MatrixF& w = MutableLinear(start, l, lin);
      for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] *= 1.0f + 0.3f * normal(rng);
    }
  }
  FinetuneOptions o;
  o.seq_len = 64;
  o.epochs = 2;
  o.learning_rate = 3e-3;
  o.batch_sequences = 2;
  o.holdout_sequences = 1;
  E2eOptions e;
  e.seq_len = 64;
  e.epochs = 1;
  e.batch_sequences = 2;
  e.holdout_sequences = 1;
  struct Run {
    std::vector<BlockTuneReport> blocks;
    E2eReport kl;
    LlamaWeights q;
  };
  auto run = [&](quant::Device* dev) {
    Run r;
    r.q = start;
    auto b = FinetuneBlocks(m->cfg, m->w, &r.q, calib, o, nullptr, nullptr, dev);
    EXPECT_TRUE(b.ok()) << b.status();
    if (b.ok()) r.blocks = *b;
    auto k = FinetuneEndToEnd(m->cfg, m->w, &r.q, calib, e, nullptr, nullptr, dev);
    EXPECT_TRUE(k.ok()) << k.status();
    if (k.ok()) r.kl = *k;
    return r;
  };
  const Run cpu = run(nullptr);
  ASSERT_EQ(static_cast<int>(cpu.blocks.size()), m->cfg.num_layers);
  EXPECT_LT(cpu.blocks[0].heldout_best, cpu.blocks[0].heldout_before);
  StandInDevice all, declining(kAllOps);
  for (StandInDevice* dev : {&all, &declining}) {
    const Run got = run(dev);
    ASSERT_EQ(got.blocks.size(), cpu.blocks.size());
    for (size_t l = 0; l < got.blocks.size(); ++l) {
      EXPECT_EQ(got.blocks[l].heldout_curve, cpu.blocks[l].heldout_curve) << "layer " << l;
      EXPECT_EQ(got.blocks[l].heldout_best, cpu.blocks[l].heldout_best) << "layer " << l;
    }
    EXPECT_EQ(got.kl.heldout_curve, cpu.kl.heldout_curve);
    EXPECT_EQ(got.kl.train_first, cpu.kl.train_first);
    for (int l = 0; l < m->cfg.num_layers; ++l) {
      EXPECT_EQ(got.q.layers[l].attn_norm, cpu.q.layers[l].attn_norm) << "layer " << l;
      for (Linear lin : kAllLinears) {
        EXPECT_EQ(GetLinear(got.q, l, lin), GetLinear(cpu.q, l, lin)) << "layer " << l;
      }
    }
    EXPECT_EQ(got.q.final_norm, cpu.q.final_norm);
    // One session per tuned block and one for the KL stage; every op went to the device.
    EXPECT_EQ(dev->sessions, m->cfg.num_layers + 1);
    EXPECT_GT(dev->calls, 0);
    EXPECT_EQ(dev->declines, dev == &declining ? dev->calls : 0);
  }
}

// An error other than UNIMPLEMENTED is the device's failure, not a fallback: the tuning stops
// with it.
TEST(BackwardDevice, DeviceErrorsStopTheTuning) {
  auto m = testing::LoadStories260K();
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> calib = StoryTokens(4 * 64);
  ASSERT_FALSE(calib.empty());
  StandInDevice oom({}, absl::ResourceExhaustedError("out of GPU memory"));
  FinetuneOptions o;
  o.seq_len = 64;
  o.epochs = 1;
  o.holdout_sequences = 1;
  LlamaWeights q = m->w;
  auto b = FinetuneBlocks(m->cfg, m->w, &q, calib, o, nullptr, nullptr, &oom);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted) << b.status();
  E2eOptions e;
  e.seq_len = 64;
  e.epochs = 1;
  e.holdout_sequences = 1;
  auto k = FinetuneEndToEnd(m->cfg, m->w, &q, calib, e, nullptr, nullptr, &oom);
  EXPECT_EQ(k.status().code(), absl::StatusCode::kResourceExhausted) << k.status();
}

}  // namespace
}  // namespace quantd::model
