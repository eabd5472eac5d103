#include "engine/model/hessian_capture.h"

#include <map>
#include <random>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "engine/model/forward.h"
#include "engine/model/streamed_forward.h"
#include "engine/model/weight_source.h"

namespace quantd::model {
namespace {

LlamaConfig SmallConfig() {
  LlamaConfig c;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 4;
  c.vocab_size = 32;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = false;
  return c;
}

LlamaWeights RandomWeights(const LlamaConfig& c, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 0.3f);
  auto rand = [&](int r, int k) {
    MatrixF m(r, k);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = n(rng);
    return m;
  };
  LlamaWeights w;
  w.embed = rand(c.vocab_size, c.hidden_size);
  w.layers.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    w.layers[l].attn_norm = VectorF::Constant(c.hidden_size, 1.0f) + rand(c.hidden_size, 1) * 0.1f;
    w.layers[l].ffn_norm = VectorF::Constant(c.hidden_size, 1.0f);
    for (Linear lin : kAllLinears) {
      auto [out, in] = LinearShape(c, lin);
      MutableLinear(w, l, lin) = rand(out, in);
    }
  }
  w.final_norm = VectorF::Constant(c.hidden_size, 1.0f);
  w.lm_head = rand(c.vocab_size, c.hidden_size);
  return w;
}

// Records every activation so the test can form XᵀX naively.
class Recorder : public ActivationSink {
 public:
  void OnLinearInput(int layer, LinearGroup g, const MatrixF& x) override {
    seen.push_back({layer, g, x});
  }
  struct Call {
    int layer;
    LinearGroup g;
    MatrixF x;
  };
  std::vector<Call> seen;
};

TEST(HessianCaptureTest, EqualsNaiveXtXOverTwoSequences) {
  const LlamaConfig c = SmallConfig();
  const LlamaWeights w = RandomWeights(c, 7);
  const std::vector<std::vector<int32_t>> seqs = {{1, 5, 9, 31, 0, 4, 4}, {3, 2, 1}};
  HessianCapture cap(c);
  Recorder rec;
  for (const auto& s : seqs) {
    ASSERT_TRUE(Forward(c, w, s, &cap).ok());
    ASSERT_TRUE(Forward(c, w, s, &rec).ok());
  }
  ASSERT_EQ(rec.seen.size(), 2u * c.num_layers * kNumGroups);
  for (int l = 0; l < c.num_layers; ++l) {
    for (LinearGroup g : kAllGroups) {
      const int in = GroupInputDim(c, g);
      MatrixD naive = MatrixD::Zero(in, in);
      int64_t rows = 0;
      for (const auto& call : rec.seen) {
        if (call.layer != l || call.g != g) continue;
        ASSERT_EQ(call.x.cols(), in);
        for (Eigen::Index t = 0; t < call.x.rows(); ++t, ++rows)
          for (int i = 0; i < in; ++i)
            for (int j = 0; j < in; ++j)
              naive(i, j) += static_cast<double>(call.x(t, i)) * static_cast<double>(call.x(t, j));
      }
      EXPECT_EQ(cap.Tokens(l, g), 10) << "layer " << l << " " << GroupName(g);
      EXPECT_EQ(rows, 10);
      const MatrixD& h = cap.Sum(l, g);
      ASSERT_EQ(h.rows(), in);
      EXPECT_LT((h - naive).cwiseAbs().maxCoeff(), 1e-9 * (1 + naive.cwiseAbs().maxCoeff()))
          << "layer " << l << " " << GroupName(g);
    }
  }
}

// Issue 24: H = Σ_t w_t x_tᵀx_t with w = 64 on each sequence's first row, against an explicit
// fp64 sum over the recorded activations, for both captures: the reference Forward's
// HessianCapture and the layer-streamed ForwardBatch's LayerHessianStream (rows of all
// sequences in one batch, weighted through RowWeights).
TEST(HessianCaptureTest, SinkWeightedSumsEqualNaiveWeightedXtWX) {
  const LlamaConfig c = SmallConfig();
  const LlamaWeights w = RandomWeights(c, 11);
  const std::vector<std::vector<int32_t>> seqs = {{1, 5, 9, 31, 0, 4, 4}, {3, 2, 1}, {7}};
  TokenWeighting tw;
  tw.sink_weight = 64;
  HessianCapture cap(c, -1, tw);
  Recorder rec;
  for (const auto& s : seqs) {
    ASSERT_TRUE(Forward(c, w, s, &cap).ok());
    ASSERT_TRUE(Forward(c, w, s, &rec).ok());
  }
  std::vector<absl::Span<const int32_t>> spans;
  std::vector<int64_t> lengths;
  for (const auto& s : seqs) {
    spans.emplace_back(s);
    lengths.push_back(static_cast<int64_t>(s.size()));
  }
  const std::vector<double> rw = RowWeights(lengths, tw);
  ASSERT_EQ(rw.size(), 11u);
  EXPECT_EQ(rw[0], 64);
  EXPECT_EQ(rw[1], 1);
  EXPECT_EQ(rw[7], 64);
  EXPECT_EQ(rw[10], 64);
  std::map<std::pair<int, int>, MatrixD> streamed;
  MemoryWeightSource src(c, w);
  LayerHessianStream stream(
      c, 0, c.num_layers,
      [&](int layer, LinearGroup g, const MatrixD& sum, int64_t tokens) -> absl::Status {
        EXPECT_EQ(tokens, 11);
        streamed[{layer, static_cast<int>(g)}] = sum;
        return absl::OkStatus();
      },
      rw);
  ASSERT_TRUE(ForwardBatch(c, src, spans, &stream).ok());
  for (int l = 0; l < c.num_layers; ++l) {
    for (LinearGroup g : kAllGroups) {
      const int in = GroupInputDim(c, g);
      MatrixD naive = MatrixD::Zero(in, in);
      for (const auto& call : rec.seen) {
        if (call.layer != l || call.g != g) continue;
        for (Eigen::Index t = 0; t < call.x.rows(); ++t) {
          const double wt = t == 0 ? 64.0 : 1.0;  // position t of this sequence
          for (int i = 0; i < in; ++i)
            for (int j = 0; j < in; ++j)
              naive(i, j) += wt * static_cast<double>(call.x(t, i)) * static_cast<double>(call.x(t, j));
        }
      }
      const double scale = 1 + naive.cwiseAbs().maxCoeff();
      EXPECT_EQ(cap.Tokens(l, g), 11);
      EXPECT_LT((cap.Sum(l, g) - naive).cwiseAbs().maxCoeff(), 1e-9 * scale)
          << "layer " << l << " " << GroupName(g);
      EXPECT_EQ(cap.Sum(l, g), cap.Sum(l, g).transpose());
      // The batched forward's activations differ from the reference's by fp32 GEMM blocking.
      const MatrixD& sh = streamed.at({l, static_cast<int>(g)});
      EXPECT_LT((sh - naive).cwiseAbs().maxCoeff(), 1e-4 * scale)
          << "streamed layer " << l << " " << GroupName(g);
      EXPECT_EQ(sh, sh.transpose());
    }
  }
}

// All tokens equal (sink weight 1): exactly the unweighted sums, bit for bit, in both captures;
// uniform weights c scale XᵀX by c.
TEST(HessianCaptureTest, EqualWeightsChangeNothing) {
  const LlamaConfig c = SmallConfig();
  const LlamaWeights w = RandomWeights(c, 13);
  const std::vector<int32_t> seq = {1, 5, 9, 31, 0, 4};
  TokenWeighting one;
  one.sink_weight = 1;
  EXPECT_TRUE(one.IsUniform());
  EXPECT_TRUE(RowWeights({6}, one).empty());
  HessianCapture plain(c), weighted(c, -1, one);
  ASSERT_TRUE(Forward(c, w, seq, &plain).ok());
  ASSERT_TRUE(Forward(c, w, seq, &weighted).ok());
  for (int l = 0; l < c.num_layers; ++l) {
    for (LinearGroup g : kAllGroups) EXPECT_EQ(plain.Sum(l, g), weighted.Sum(l, g));
  }
  MatrixF x = MatrixF::Random(5, 3);
  MatrixD a = MatrixD::Zero(3, 3), b = MatrixD::Zero(3, 3), c3 = MatrixD::Zero(3, 3);
  AddXtX(x, &a);
  AddWeightedXtX(x, std::vector<double>(5, 1.0), &b);
  EXPECT_EQ(a, b);
  AddWeightedXtX(x, std::vector<double>(5, 3.0), &c3);
  EXPECT_LT((c3 - 3 * a).cwiseAbs().maxCoeff(), 1e-12 * (1 + a.cwiseAbs().maxCoeff()));
}

TEST(HessianCaptureTest, SingleLayerCaptureMatchesTheFullOneAndStopsThere) {
  const LlamaConfig c = SmallConfig();
  ASSERT_GE(c.num_layers, 2);
  const LlamaWeights w = RandomWeights(c, 9);
  const std::vector<int32_t> seq = {1, 5, 9, 31, 0, 4};
  HessianCapture full(c), one(c, 0);
  EXPECT_EQ(full.StopAfterLayer(), -1);
  EXPECT_EQ(one.StopAfterLayer(), 0);
  ASSERT_TRUE(Forward(c, w, seq, &full).ok());
  auto logits = Forward(c, w, seq, &one);
  ASSERT_TRUE(logits.ok());
  EXPECT_EQ(logits->rows(), 0);  // stopped after layer 0
  for (int l = 0; l < c.num_layers; ++l) {
    for (LinearGroup g : kAllGroups) {
      if (l == 0) {
        EXPECT_EQ(one.Tokens(l, g), 6);
        EXPECT_EQ(one.Sum(l, g), full.Sum(l, g)) << GroupName(g);  // same additions, same order
      } else {
        EXPECT_EQ(one.Tokens(l, g), 0) << "layer " << l;
        EXPECT_EQ(one.Sum(l, g).size(), 0) << "layer " << l;
      }
    }
  }
}

TEST(HessianCaptureTest, ConcurrentForwardsAccumulateEverything) {
  const LlamaConfig c = SmallConfig();
  const LlamaWeights w = RandomWeights(c, 11);
  HessianCapture serial(c), parallel(c);
  std::vector<std::vector<int32_t>> seqs;
  for (int i = 0; i < 8; ++i) seqs.push_back({1, i, (3 * i) % 32, 7, i + 2});
  for (const auto& s : seqs) ASSERT_TRUE(Forward(c, w, s, &serial).ok());
  std::vector<std::thread> threads;
  for (const auto& s : seqs)
    threads.emplace_back([&, s] { (void)Forward(c, w, s, &parallel); });
  for (auto& t : threads) t.join();
  for (int l = 0; l < c.num_layers; ++l)
    for (LinearGroup g : kAllGroups) {
      EXPECT_EQ(parallel.Tokens(l, g), 40);
      EXPECT_LT((parallel.Sum(l, g) - serial.Sum(l, g)).cwiseAbs().maxCoeff(), 1e-9);
    }
}

// Issue 24, "sink+massive": the rule flags exactly the planted rows (one entry hundreds of times
// the typical row's largest), per sequence of a batch, and nothing when every row is alike.
TEST(HessianCaptureTest, MassiveRowsPickThePlantedTokens) {
  std::mt19937 rng(5);
  std::normal_distribution<float> n(0.0f, 1.0f);
  MatrixF r(11, 8);  // sequences of 6 and 5 rows
  for (Eigen::Index i = 0; i < r.size(); ++i) r.data()[i] = n(rng);
  r(3, 2) = 500.0f;   // sequence 0, position 3
  r(8, 5) = -800.0f;  // sequence 1, position 2
  EXPECT_EQ(MassiveRows(r, {6, 5}, 100), (std::vector<int64_t>{3, 8}));
  EXPECT_TRUE(MassiveRows(r, {6, 5}, 1e5).empty());
  MatrixF same = MatrixF::Constant(6, 8, 0.5f);
  same.col(3).setConstant(900.0f);  // a massive channel in every row: no row stands out
  EXPECT_TRUE(MassiveRows(same, {6}, 2).empty());
  TokenWeighting tw;
  tw.sink_weight = 16;
  tw.massive_ratio = 100;
  EXPECT_TRUE(tw.Massive());
  const std::vector<double> w = LayerRowWeights(r, {6, 5}, tw, RowWeights({6, 5}, tw));
  const std::vector<double> want = {16, 1, 1, 16, 1, 1, 16, 1, 16, 1, 1};
  EXPECT_EQ(w, want);
  TokenWeighting sink_only = tw;
  sink_only.massive_ratio = 0;
  EXPECT_EQ(LayerRowWeights(r, {6, 5}, sink_only, RowWeights({6, 5}, sink_only)),
            RowWeights({6, 5}, sink_only));
}

// Records the residual entering each layer and every linear input, per sequence.
class ResidualRecorder : public Recorder {
 public:
  void OnResidual(int layer, const MatrixF& x) override { residuals.push_back({layer, x}); }
  std::vector<std::pair<int, MatrixF>> residuals;
};

// A token whose embedding holds one massive entry is flagged in every layer its residual keeps
// it, and both captures (reference Forward, layer-streamed ForwardBatch) equal the naive
// Σ w_t x_tᵀx_t with w = 16 on the first and on the flagged rows. With every token the same
// the weighting flags nothing: the sums are bit for bit the sink-only ones.
TEST(HessianCaptureTest, MassiveWeightedSumsEqualNaiveAndEqualTokensChangeNothing) {
  const LlamaConfig c = SmallConfig();
  LlamaWeights w = RandomWeights(c, 17);
  w.embed(31, 4) = 3000.0f;  // token 31 carries a massive activation from the embedding on
  const std::vector<std::vector<int32_t>> seqs = {{1, 5, 9, 31, 0, 4, 4}, {3, 31, 1}};
  TokenWeighting tw;
  tw.sink_weight = 16;
  tw.massive_ratio = 100;
  HessianCapture cap(c, -1, tw);
  ResidualRecorder rec;
  for (const auto& s : seqs) {
    ASSERT_TRUE(Forward(c, w, s, &cap).ok());
    ASSERT_TRUE(Forward(c, w, s, &rec).ok());
  }
  // The planted token is flagged at layer 0 in both sequences, and nothing else is.
  ASSERT_EQ(rec.residuals.size(), seqs.size() * c.num_layers);
  EXPECT_EQ(MassiveRows(rec.residuals[0].second, {7}, 100), (std::vector<int64_t>{3}));
  EXPECT_EQ(MassiveRows(rec.residuals[c.num_layers].second, {3}, 100),
            (std::vector<int64_t>{1}));
  EXPECT_GE(cap.MassiveFlags(), 2);
  // Naive weights from the recorded residuals, per (sequence, layer).
  std::vector<std::vector<int64_t>> lengths = {{7}, {3}};
  std::map<std::pair<int, int>, MatrixD> streamed;
  MemoryWeightSource src(c, w);
  LayerHessianStream stream(
      c, 0, c.num_layers,
      [&](int layer, LinearGroup g, const MatrixD& sum, int64_t tokens) -> absl::Status {
        EXPECT_EQ(tokens, 10);
        streamed[{layer, static_cast<int>(g)}] = sum;
        return absl::OkStatus();
      },
      RowWeights({7, 3}, tw));
  stream.WeightMassiveRows({7, 3}, tw);
  std::vector<absl::Span<const int32_t>> spans(seqs.begin(), seqs.end());
  ASSERT_TRUE(ForwardBatch(c, src, spans, &stream).ok());
  EXPECT_EQ(stream.MassiveFlags(), cap.MassiveFlags());
  for (int l = 0; l < c.num_layers; ++l) {
    for (LinearGroup g : kAllGroups) {
      const int in = GroupInputDim(c, g);
      MatrixD naive = MatrixD::Zero(in, in);
      int seq_index = 0;
      for (const auto& call : rec.seen) {
        if (call.layer != l || call.g != g) continue;
        // Calls come sequence by sequence; this one's residual at layer l.
        const MatrixF& res = rec.residuals[seq_index * c.num_layers + l].second;
        const std::vector<double> wt = LayerRowWeights(
            res, {res.rows()}, tw, RowWeights({res.rows()}, tw));
        for (Eigen::Index t = 0; t < call.x.rows(); ++t) {
          for (int i = 0; i < in; ++i)
            for (int j = 0; j < in; ++j)
              naive(i, j) += wt[t] * static_cast<double>(call.x(t, i)) * static_cast<double>(call.x(t, j));
        }
        ++seq_index;
      }
      const double scale = 1 + naive.cwiseAbs().maxCoeff();
      EXPECT_LT((cap.Sum(l, g) - naive).cwiseAbs().maxCoeff(), 1e-9 * scale)
          << "layer " << l << " " << GroupName(g);
      EXPECT_LT((streamed.at({l, static_cast<int>(g)}) - naive).cwiseAbs().maxCoeff(), 1e-4 * scale)
          << "streamed layer " << l << " " << GroupName(g);
    }
  }
  // Every token the same (even the massive one): every residual row is the same, so no row
  // stands out and the sums are exactly the sink-only capture's.
  TokenWeighting sink_only = tw;
  sink_only.massive_ratio = 0;
  const std::vector<int32_t> same(6, 31);
  HessianCapture massive(c, -1, tw), sink(c, -1, sink_only);
  ASSERT_TRUE(Forward(c, w, same, &massive).ok());
  ASSERT_TRUE(Forward(c, w, same, &sink).ok());
  EXPECT_EQ(massive.MassiveFlags(), 0);
  for (int l = 0; l < c.num_layers; ++l) {
    for (LinearGroup g : kAllGroups) EXPECT_EQ(massive.Sum(l, g), sink.Sum(l, g));
  }
  // Sink weight 1: uniform whatever the ratio, the unweighted sums bit for bit.
  TokenWeighting one = tw;
  one.sink_weight = 1;
  EXPECT_TRUE(one.IsUniform());
  EXPECT_FALSE(one.Massive());
  HessianCapture plain(c), unit(c, -1, one);
  ASSERT_TRUE(Forward(c, w, seqs[0], &plain).ok());
  ASSERT_TRUE(Forward(c, w, seqs[0], &unit).ok());
  for (int l = 0; l < c.num_layers; ++l) {
    for (LinearGroup g : kAllGroups) EXPECT_EQ(plain.Sum(l, g), unit.Sum(l, g));
  }
}

}  // namespace
}  // namespace quantd::model
