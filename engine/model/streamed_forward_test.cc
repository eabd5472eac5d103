// The layer-streamed, batched forward against the reference Forward (one sequence at a time,
// whole model in memory): logits, NLL, perplexity and Hessian sums, from single-file, sharded
// and bf16 checkpoints. SmolLM2-135M is checked when scripts/fetch_smollm2.sh has cached it.
#include "engine/model/streamed_forward.h"

#include <cmath>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/format/checkpoint.h"
#include "engine/model/forward_device.h"
#include "engine/model/hessian_capture.h"
#include "engine/model/perplexity.h"
#include "engine/model/test_util.h"
#include "engine/tokenizer/tokens.h"
#include "nlohmann/json.hpp"

namespace quantd::model {
namespace {

using testing::ExamplePath;
using testing::LoadStories260K;

std::vector<int32_t> Stream() {
  auto t = LoadTokenFile(ExamplePath("tinystories/tinystories_valid_first1000.tok512.u16"));
  EXPECT_TRUE(t.ok()) << t.status();
  return *t;
}

// Sequences of different lengths cut from the stream (different starts, so not all begin
// with BOS).
std::vector<absl::Span<const int32_t>> Cut(const std::vector<int32_t>& s,
                                           const std::vector<std::pair<int, int>>& ranges) {
  std::vector<absl::Span<const int32_t>> out;
  for (auto [b, n] : ranges) out.emplace_back(s.data() + b, static_cast<size_t>(n));
  return out;
}

// max |a - b| / max(1, |b|) over all elements.
double MaxRel(const MatrixF& a, const MatrixF& b) {
  return ((a - b).array().abs() / b.array().abs().max(1.0f)).maxCoeff();
}

MatrixF ReferenceLogits(const LlamaConfig& cfg, const LlamaWeights& w,
                        const std::vector<absl::Span<const int32_t>>& seqs) {
  int64_t n = 0;
  for (auto s : seqs) n += static_cast<int64_t>(s.size());
  MatrixF out(n, cfg.vocab_size);
  int64_t r = 0;
  for (auto s : seqs) {
    auto l = Forward(cfg, w, s);
    EXPECT_TRUE(l.ok()) << l.status();
    out.middleRows(r, l->rows()) = *l;
    r += l->rows();
  }
  return out;
}

TEST(StreamedForwardTest, BatchedLogitsMatchTheReferencePerSequence) {
  auto m = LoadStories260K();
  ASSERT_NE(m, nullptr);
  auto ckpt = Checkpoint::Open(ExamplePath("stories260K"));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  CheckpointWeightSource src(m->cfg, **ckpt);
  const std::vector<int32_t> s = Stream();
  const auto seqs = Cut(s, {{0, 64}, {1000, 200}, {77, 37}, {5000, 512}});
  auto got = ForwardBatchLogits(m->cfg, src, seqs);
  ASSERT_TRUE(got.ok()) << got.status();
  const MatrixF want = ReferenceLogits(m->cfg, m->w, seqs);
  ASSERT_EQ(got->rows(), want.rows());
  EXPECT_LE(MaxRel(*got, want), 1e-4);
  std::printf("stories260K batched vs reference logits: max rel diff %.3g\n", MaxRel(*got, want));

  // The in-memory source gives the same bits as the checkpoint source.
  MemoryWeightSource mem(m->cfg, m->w);
  auto again = ForwardBatchLogits(m->cfg, mem, seqs);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *got);
}

TEST(StreamedForwardTest, ChunkedNllMatchesFullSoftmax) {
  auto m = LoadStories260K();
  ASSERT_NE(m, nullptr);
  MemoryWeightSource src(m->cfg, m->w);
  const std::vector<int32_t> s = Stream();
  const auto seqs = Cut(s, {{0, 100}, {300, 50}});
  auto hidden = ForwardBatch(m->cfg, src, seqs);
  ASSERT_TRUE(hidden.ok()) << hidden.status();
  const MatrixF ref = ReferenceLogits(m->cfg, m->w, seqs);
  std::vector<int32_t> targets;
  for (auto q : seqs) {
    for (size_t i = 0; i < q.size(); ++i) targets.push_back(i % 3 == 2 ? -1 : q.data()[i + 1]);
  }
  for (int chunk : {0, 100, 7}) {  // one chunk, several, many with a ragged tail
    auto nll = RowNll(m->cfg, src, *hidden, targets, chunk);
    ASSERT_TRUE(nll.ok()) << nll.status();
    for (int64_t r = 0; r < ref.rows(); ++r) {
      if (targets[r] < 0) {
        EXPECT_EQ((*nll)[r], 0.0);
        continue;
      }
      const auto row = ref.row(r).cast<double>();
      const double want =
          std::log((row.array() - row.maxCoeff()).exp().sum()) + row.maxCoeff() - row(targets[r]);
      ASSERT_NEAR((*nll)[r], want, 1e-4) << "row " << r << " chunk " << chunk;
    }
  }
  std::vector<int32_t> bad = targets;
  bad[3] = 512;
  EXPECT_EQ(RowNll(m->cfg, src, *hidden, bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(StreamedForwardTest, PerplexityMatchesTheReferenceInAnyBatching) {
  auto m = LoadStories260K();
  ASSERT_NE(m, nullptr);
  MemoryWeightSource src(m->cfg, m->w);
  const std::vector<int32_t> s = Stream();
  PerplexityOptions o;
  o.context = 128;
  o.stride = 96;
  o.max_tokens = 1500;
  auto ref = Perplexity(m->cfg, m->w, s, o);
  ASSERT_TRUE(ref.ok()) << ref.status();
  for (int64_t batch : {0, 1, 300, 100000}) {
    o.batch_tokens = batch;
    auto got = Perplexity(m->cfg, src, s, o);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->targets, ref->targets);
    EXPECT_EQ(got->windows, ref->windows);
    EXPECT_NEAR(got->mean_nll, ref->mean_nll, 1e-6) << "batch_tokens " << batch;
  }
  o.batch_tokens = -1;
  EXPECT_EQ(Perplexity(m->cfg, src, s, o).status().code(), absl::StatusCode::kInvalidArgument);
}

// Relative Frobenius distance.
double RelDiff(const MatrixD& a, const MatrixD& b) { return (a - b).norm() / b.norm(); }

TEST(StreamedForwardTest, LayerStreamedHessiansMatchTheReferenceCapture) {
  auto m = LoadStories260K();
  ASSERT_NE(m, nullptr);
  auto ckpt = Checkpoint::Open(ExamplePath("stories260K"));
  ASSERT_TRUE(ckpt.ok());
  const std::vector<int32_t> s = Stream();
  const auto seqs = Cut(s, {{0, 256}, {256, 256}, {512, 256}});
  HessianCapture ref(m->cfg);
  for (auto q : seqs) ASSERT_TRUE(Forward(m->cfg, m->w, q, &ref).ok());

  for (auto [first, last] : {std::pair{0, m->cfg.num_layers}, std::pair{2, 3}}) {
    CheckpointWeightSource src(m->cfg, **ckpt);
    std::vector<int> order;
    double worst = 0;
    LayerHessianStream stream(
        m->cfg, first, last,
        [&](int layer, LinearGroup g, const MatrixD& sum, int64_t tokens) -> absl::Status {
          order.push_back(layer * kNumGroups + static_cast<int>(g));
          EXPECT_EQ(tokens, ref.Tokens(layer, g));
          worst = std::max(worst, RelDiff(sum, ref.Sum(layer, g)));
          return absl::OkStatus();
        });
    auto h = ForwardBatch(m->cfg, src, seqs, &stream);
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(h->rows(), last == m->cfg.num_layers ? 768 : 0);
    ASSERT_EQ(order.size(), static_cast<size_t>((last - first) * kNumGroups));
    for (size_t i = 0; i < order.size(); ++i) {
      EXPECT_EQ(order[i], first * kNumGroups + static_cast<int>(i));
    }
    EXPECT_LE(worst, 1e-5) << "layers [" << first << "," << last << ")";
    std::printf("stories260K layers [%d,%d): Hessian rel Frobenius diff %.3g\n", first, last,
                worst);
  }

  // The same run twice gives the same bits (a retried task sends the same bytes).
  std::vector<MatrixD> a, b;
  for (auto* out : {&a, &b}) {
    CheckpointWeightSource src(m->cfg, **ckpt);
    LayerHessianStream stream(m->cfg, 0, m->cfg.num_layers,
                              [&](int, LinearGroup, const MatrixD& sum, int64_t) {
                                out->push_back(sum);
                                return absl::OkStatus();
                              });
    ASSERT_TRUE(ForwardBatch(m->cfg, src, seqs, &stream).ok());
  }
  EXPECT_EQ(a, b);

  // An emit error stops the forward.
  CheckpointWeightSource src(m->cfg, **ckpt);
  LayerHessianStream failing(m->cfg, 0, 2, [](int layer, LinearGroup, const MatrixD&, int64_t) {
    return layer == 1 ? absl::ResourceExhaustedError("disk full") : absl::OkStatus();
  });
  EXPECT_EQ(ForwardBatch(m->cfg, src, seqs, &failing).status().code(),
            absl::StatusCode::kResourceExhausted);
}

// A stand-in for a device's ForwardOps: its matrices are not host matrices (HostMatrix and
// HostGram give nullptr, so the forward must Upload/Download), it computes with the CPU's ops on
// its private copies, and it declines (UNIMPLEMENTED) the ops named in `declined`, so the
// forward's host fallbacks run. Counts the transfers.
class ForeignOps : public quant::ForwardOps {
 public:
  explicit ForeignOps(std::set<std::string> declined) : declined_(std::move(declined)) {}
  struct M : quant::DeviceMatrix {
    std::unique_ptr<quant::DeviceMatrix> in;
    int64_t rows() const override { return in->rows(); }
    int64_t cols() const override { return in->cols(); }
  };
  struct G : quant::DeviceGram {
    std::unique_ptr<quant::DeviceGram> in;
    int64_t n() const override { return in->n(); }
  };
  static const quant::DeviceMatrix& I(const quant::DeviceMatrix& m) {
    return *static_cast<const M&>(m).in;
  }
  static quant::DeviceMatrix* I(quant::DeviceMatrix* m) { return static_cast<M*>(m)->in.get(); }
  absl::Status Decline(const std::string& op) {
    if (!declined_.count(op)) return absl::OkStatus();
    ++declines;
    return absl::UnimplementedError(op);
  }

  std::string name() const override { return "foreign"; }
  MatrixF* HostMatrix(quant::DeviceMatrix&) override { return nullptr; }
  const MatrixD* HostGram(const quant::DeviceGram&) override { return nullptr; }
  std::unique_ptr<quant::DeviceMatrix> NewMatrix() override {
    auto m = std::make_unique<M>();
    m->in = cpu_.NewMatrix();
    return m;
  }
  absl::Status Upload(const MatrixF& h, quant::DeviceMatrix* d) override {
    ++uploads;
    return cpu_.Upload(h, I(d));
  }
  absl::Status Download(const quant::DeviceMatrix& d, MatrixF* h) override {
    ++downloads;
    return cpu_.Download(I(d), h);
  }
  absl::StatusOr<std::unique_ptr<quant::DeviceMatrix>> BindWeight(
      const MatrixF& w, quant::WeightDtype dtype) override {
    dtypes.insert(dtype);
    auto m = std::make_unique<M>();
    m->in = cpu_.NewMatrix();
    QUANTD_RETURN_IF_ERROR(cpu_.Upload(w, m->in.get()));  // a copy, as a device makes
    return std::unique_ptr<quant::DeviceMatrix>(std::move(m));
  }
  absl::Status MatMulT(const quant::DeviceMatrix& x, const quant::DeviceMatrix& w,
                       quant::DeviceMatrix* out, bool acc) override {
    return cpu_.MatMulT(I(x), I(w), I(out), acc);
  }
  absl::Status RmsNorm(const quant::DeviceMatrix& x, const VectorF& w, float eps, float off,
                       quant::DeviceMatrix* out) override {
    return cpu_.RmsNorm(I(x), w, eps, off, I(out));
  }
  absl::Status ApplyRope(const quant::DeviceMatrix& c, const quant::DeviceMatrix& s, int heads,
                         int hd, int64_t r0, int64_t rows, quant::DeviceMatrix* m) override {
    QUANTD_RETURN_IF_ERROR(Decline("rope"));
    return cpu_.ApplyRope(I(c), I(s), heads, hd, r0, rows, I(m));
  }
  absl::Status Scale(float s, quant::DeviceMatrix* m) override { return cpu_.Scale(s, I(m)); }
  absl::Status Add(const quant::DeviceMatrix& y, quant::DeviceMatrix* x) override {
    return cpu_.Add(I(y), I(x));
  }
  absl::Status Attention(const quant::DeviceMatrix& q, const quant::DeviceMatrix& k,
                         const quant::DeviceMatrix& v, absl::Span<const int64_t> off, int nh,
                         int nkv, int hd, int window, float softcap,
                         quant::DeviceMatrix* out) override {
    QUANTD_RETURN_IF_ERROR(Decline("attention"));
    return cpu_.Attention(I(q), I(k), I(v), off, nh, nkv, hd, window, softcap, I(out));
  }
  absl::Status SiluMul(const quant::DeviceMatrix& u, quant::DeviceMatrix* g) override {
    QUANTD_RETURN_IF_ERROR(Decline("silu"));
    return cpu_.SiluMul(I(u), I(g));
  }
  absl::Status Softcap(float cap, quant::DeviceMatrix* m) override {
    return cpu_.Softcap(cap, I(m));
  }
  absl::StatusOr<std::unique_ptr<quant::DeviceGram>> NewGram(int64_t n) override {
    auto g = std::make_unique<G>();
    QUANTD_ASSIGN_OR_RETURN(g->in, cpu_.NewGram(n));
    return std::unique_ptr<quant::DeviceGram>(std::move(g));
  }
  absl::Status AccumulateGram(const quant::DeviceMatrix& x, absl::Span<const double> w,
                              quant::DeviceGram* g) override {
    return cpu_.AccumulateGram(I(x), w, static_cast<G*>(g)->in.get());
  }
  absl::Status ReadGram(const quant::DeviceGram& g, MatrixD* out) override {
    ++gram_reads;
    return cpu_.ReadGram(*static_cast<const G&>(g).in, out);
  }
  absl::Status NllChunk(const quant::DeviceMatrix& l, int c0, absl::Span<const int32_t> t,
                        quant::NllState* st) override {
    QUANTD_RETURN_IF_ERROR(Decline("nll"));
    return cpu_.NllChunk(I(l), c0, t, st);
  }

  int uploads = 0, downloads = 0, gram_reads = 0, declines = 0;
  std::set<quant::WeightDtype> dtypes;

 private:
  CpuForwardOps cpu_;
  std::set<std::string> declined_;
};

// The forward on a device's ops gives the CPU's bits when the device computes what the CPU
// does, whether it runs every op itself (activations stay on it: one upload, one download per
// forward) or declines some (the forward then runs them on host copies).
TEST(StreamedForwardTest, DeviceOpsAndTheirFallbacksGiveTheCpuBits) {
  auto m = LoadStories260K();
  ASSERT_NE(m, nullptr);
  auto ckpt = Checkpoint::Open(ExamplePath("stories260K"));
  ASSERT_TRUE(ckpt.ok());
  const std::vector<int32_t> s = Stream();
  const auto seqs = Cut(s, {{0, 200}, {300, 77}, {500, 256}});
  std::vector<int32_t> targets;
  for (auto q : seqs) {
    for (size_t i = 0; i < q.size(); ++i) {
      targets.push_back(i + 1 < q.size() ? q[i + 1] : -1);
    }
  }
  const std::vector<double> weights = RowWeights({200, 77, 256}, TokenWeighting{16, 1});
  auto run = [&](quant::ForwardOps* ops, std::vector<MatrixD>* sums, MatrixF* hidden,
                 std::vector<double>* nll) {
    CheckpointWeightSource src(m->cfg, **ckpt);
    LayerHessianStream stream(m->cfg, 0, m->cfg.num_layers,
                              [&](int, LinearGroup, const MatrixD& sum, int64_t) {
                                sums->push_back(sum);
                                return absl::OkStatus();
                              },
                              weights);
    auto h = ForwardBatch(m->cfg, src, seqs, &stream, ops);
    ASSERT_TRUE(h.ok()) << h.status();
    *hidden = *h;
    auto n = RowNll(m->cfg, src, *h, targets, 100, ops);  // several vocabulary chunks
    ASSERT_TRUE(n.ok()) << n.status();
    *nll = *n;
  };
  std::vector<MatrixD> cpu_sums;
  MatrixF cpu_hidden;
  std::vector<double> cpu_nll;
  run(nullptr, &cpu_sums, &cpu_hidden, &cpu_nll);
  ASSERT_EQ(cpu_sums.size(), static_cast<size_t>(m->cfg.num_layers * kNumGroups));

  for (const std::set<std::string>& declined :
       {std::set<std::string>{}, std::set<std::string>{"rope", "attention", "silu", "nll"}}) {
    ForeignOps ops(declined);
    std::vector<MatrixD> sums;
    MatrixF hidden;
    std::vector<double> nll;
    run(&ops, &sums, &hidden, &nll);
    EXPECT_EQ(sums, cpu_sums) << declined.size() << " ops declined";
    EXPECT_EQ(hidden, cpu_hidden);
    EXPECT_EQ(nll, cpu_nll);
    EXPECT_EQ(ops.gram_reads, m->cfg.num_layers * kNumGroups);
    EXPECT_EQ(ops.dtypes, std::set<quant::WeightDtype>{quant::WeightDtype::kF32});
    if (declined.empty()) {
      // Nothing but the embedding goes up and the final hidden states come down.
      EXPECT_EQ(ops.uploads, 1);
      EXPECT_EQ(ops.downloads, 1);
      EXPECT_EQ(ops.declines, 0);
    } else {
      EXPECT_GT(ops.declines, 0);
      EXPECT_GT(ops.downloads, 1);
    }
  }
}

// The CPU device has no forward ops of its own: a session on it (or on no device) runs the
// CPU's, whose matrices are host matrices.
TEST(StreamedForwardTest, SessionsOnTheCpuDeviceRunTheCpuOps) {
  std::unique_ptr<quant::Device> cpu = quant::MakeCpuDevice(1);
  for (quant::Device* d : {cpu.get(), static_cast<quant::Device*>(nullptr)}) {
    auto s = ForwardOpsSession::Open(d);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_TRUE(s->on_host());
    EXPECT_EQ(s->ops().name(), "cpu");
    auto m = s->ops().NewMatrix();
    EXPECT_NE(s->ops().HostMatrix(*m), nullptr);
  }
}

// Writes stories260K as three shards with an index, like the Hub's sharded checkpoints.
std::string WriteSharded(const Checkpoint& src, const std::string& dir) {
  EXPECT_TRUE(MakeDirs(dir).ok());
  std::vector<std::vector<TensorToWrite>> shards(3);
  nlohmann::json index;
  int i = 0;
  for (const std::string& name : src.Names()) {
    auto t = src.Get(name);
    EXPECT_TRUE(t.ok());
    const int k = i++ % 3;
    shards[k].push_back({name, t->dtype, t->shape, std::string(t->data)});
    index["weight_map"][name] = "model-0000" + std::to_string(k + 1) + "-of-00003.safetensors";
  }
  for (int k = 0; k < 3; ++k) {
    EXPECT_TRUE(WriteSafetensors(JoinPath(dir, "model-0000" + std::to_string(k + 1) +
                                                   "-of-00003.safetensors"),
                                 shards[k])
                    .ok());
  }
  EXPECT_TRUE(WriteFileAtomic(JoinPath(dir, "model.safetensors.index.json"), index.dump()).ok());
  return dir;
}

TEST(StreamedForwardTest, ShardedAndBf16CheckpointsStreamLikeTheirLoadedWeights) {
  auto m = LoadStories260K();
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> s = Stream();
  const auto seqs = Cut(s, {{0, 64}, {64, 64}});
  std::vector<std::string> paths;
  auto single = Checkpoint::Open(ExamplePath("stories260K"));
  ASSERT_TRUE(single.ok());
  char tmpl[] = "/tmp/streamed_fwd_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  paths.push_back(WriteSharded(**single, JoinPath(tmpl, "sharded")));
  const std::string bf16 = "/work/shared/data/stories260K/hf/model.bf16.safetensors";
  if (FileSize(bf16).ok()) paths.push_back(bf16);
  for (const std::string& p : paths) {
    auto ckpt = Checkpoint::Open(p);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    auto w = LoadLlamaWeights(**ckpt, m->cfg);
    ASSERT_TRUE(w.ok()) << w.status();
    CheckpointWeightSource src(m->cfg, **ckpt);
    MemoryWeightSource mem(m->cfg, *w);
    auto a = ForwardBatchLogits(m->cfg, src, seqs);
    auto b = ForwardBatchLogits(m->cfg, mem, seqs);
    ASSERT_TRUE(a.ok() && b.ok()) << p;
    EXPECT_EQ(*a, *b) << p;
    // The source names the stored dtype, in which a device may run the GEMMs.
    const auto want = p == bf16 ? quant::WeightDtype::kBF16 : quant::WeightDtype::kF32;
    ASSERT_TRUE(src.Layer(0).ok());
    EXPECT_EQ(src.LayerDtype(), want) << p;
    MatrixF head;
    ASSERT_TRUE(src.Head(0, 4, &head).ok());
    EXPECT_EQ(src.HeadDtype(), want) << p;
  }
  RemoveAll(tmpl).IgnoreError();
}

TEST(StreamedForwardTest, RejectsBadBatchesAndWeights) {
  auto m = LoadStories260K();
  ASSERT_NE(m, nullptr);
  MemoryWeightSource src(m->cfg, m->w);
  const std::vector<int32_t> ok = {1, 2, 3}, bad = {1, 512}, empty, too_long(513, 1);
  using Seqs = std::vector<absl::Span<const int32_t>>;
  EXPECT_EQ(ForwardBatch(m->cfg, src, Seqs{}).status().code(), absl::StatusCode::kInvalidArgument);
  for (const auto* v : {&bad, &empty, &too_long}) {
    auto r = ForwardBatch(m->cfg, src, Seqs{ok, *v});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << v->size();
  }
  LlamaWeights broken = m->w;
  broken.layers[2].down.resize(64, 171);
  MemoryWeightSource bsrc(m->cfg, broken);
  auto r = ForwardBatch(m->cfg, bsrc, Seqs{ok});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("layer 2 down_proj"), absl::string_view::npos) << r.status();
}

TEST(StreamedForwardTest, Smollm2BatchedLogitsAndHessiansMatchTheReference) {
  const std::string dir = testing::Smollm2Dir();
  if (!FileSize(dir + "/config.json").ok()) {
    GTEST_SKIP() << dir << " absent; run scripts/fetch_smollm2.sh to enable this test";
  }
  auto cfg = LoadLlamaConfig(dir);
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(cfg.ok() && ckpt.ok());
  auto w = LoadLlamaWeights(**ckpt, *cfg);
  ASSERT_TRUE(w.ok()) << w.status();
  std::vector<int32_t> s(400);
  for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<int32_t>((i * 7919 + 13) % 20000);
  const auto seqs = Cut(s, {{0, 128}, {128, 96}});
  CheckpointWeightSource src(*cfg, **ckpt);
  auto got = ForwardBatchLogits(*cfg, src, seqs);
  ASSERT_TRUE(got.ok()) << got.status();
  const MatrixF want = ReferenceLogits(*cfg, *w, seqs);
  EXPECT_LE(MaxRel(*got, want), 1e-4);
  std::printf("SmolLM2 batched vs reference logits: max rel diff %.3g\n", MaxRel(*got, want));

  HessianCapture ref(*cfg, 3);
  for (auto q : seqs) ASSERT_TRUE(Forward(*cfg, *w, q, &ref).ok());
  double worst = 0;
  LayerHessianStream stream(*cfg, 0, 4,
                            [&](int layer, LinearGroup g, const MatrixD& sum, int64_t) {
                              if (layer == 3) worst = std::max(worst, RelDiff(sum, ref.Sum(3, g)));
                              return absl::OkStatus();
                            });
  CheckpointWeightSource src2(*cfg, **ckpt);
  ASSERT_TRUE(ForwardBatch(*cfg, src2, seqs, &stream).ok());
  EXPECT_LE(worst, 1e-5);
  std::printf("SmolLM2 layer 3 Hessian rel Frobenius diff %.3g\n", worst);
}

}  // namespace
}  // namespace quantd::model
