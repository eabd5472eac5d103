// Block-wise fine-tuning on stories260K: a crudely quantized copy of the model (every linear
// rounded to a coarse per-row grid, norms kept) is tuned against the fp model on a few short
// calibration sequences. Checks the contract (held-out loss never worse than before, scales
// consistent with the written weights, bad options refused) and that the tuned model's
// perplexity on text outside the calibration set is lower than the untuned one's.
#include "engine/model/finetune.h"

#include <cmath>

#include "engine/model/finetune_test_util.h"
#include "engine/model/perplexity.h"
#include "engine/model/test_util.h"
#include "engine/tokenizer/tokens.h"
#include "gtest/gtest.h"

namespace quantd::model {
namespace {

// Rounds every row of m to 3 levels {−s, 0, s}, s = the row's mean |w|: about 1.6 bits, far
// enough from fp that fine-tuning has something to recover.
MatrixF Ternary(const MatrixF& m) {
  MatrixF out(m.rows(), m.cols());
  for (Eigen::Index r = 0; r < m.rows(); ++r) {
    const float s = m.row(r).cwiseAbs().mean();
    for (Eigen::Index c = 0; c < m.cols(); ++c) {
      const float w = m(r, c);
      out(r, c) = std::abs(w) < 0.5f * s ? 0.0f : (w > 0 ? s : -s);
    }
  }
  return out;
}

// `w` with every linear made Ternary (norms and embeddings kept).
LlamaWeights TernaryModel(const LlamaConfig& cfg, const LlamaWeights& w) {
  LlamaWeights q = w;
  for (int l = 0; l < cfg.num_layers; ++l) {
    for (Linear lin : kAllLinears) MutableLinear(q, l, lin) = Ternary(GetLinear(w, l, lin));
  }
  return q;
}

std::vector<int32_t> StoryTokens(size_t begin, size_t count) {
  auto all = LoadTokenFile(
      testing::ExamplePath("tinystories/tinystories_valid_first1000.tok512.u16"));
  if (!all.ok() || all->size() < begin + count) return {};
  return std::vector<int32_t>(all->begin() + begin, all->begin() + begin + count);
}

TEST(Finetune, LowersHeldOutLossAndPerplexity) {
  auto m = testing::LoadStories260K();
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> calib = StoryTokens(0, 12 * 128);
  const std::vector<int32_t> eval = StoryTokens(200000, 8192);
  if (calib.empty() || eval.empty()) FAIL() << "examples/tinystories tokens not found";
  LlamaWeights q = TernaryModel(m->cfg, m->w);
  const LlamaWeights untuned = q;
  FinetuneOptions o;
  o.seq_len = 128;
  o.epochs = 4;
  o.learning_rate = 3e-3;
  o.holdout_sequences = 2;
  std::vector<LayerScales> scales;
  int calls = 0;
  auto reports = FinetuneBlocks(m->cfg, m->w, &q, calib, o, &scales,
                                [&](const BlockTuneReport&) { ++calls; });
  ASSERT_TRUE(reports.ok()) << reports.status();
  ASSERT_EQ(static_cast<int>(reports->size()), m->cfg.num_layers);
  EXPECT_EQ(calls, m->cfg.num_layers);
  for (const BlockTuneReport& r : *reports) {
    EXPECT_LE(r.heldout_best, r.heldout_before) << "layer " << r.layer;
    EXPECT_GE(r.epochs_run, 1);
    EXPECT_EQ(static_cast<int>(r.heldout_curve.size()), r.epochs_run);
  }
  EXPECT_LT(reports->front().heldout_best, 0.95 * reports->front().heldout_before);
  // The written weights are diag(out)·W_q·diag(in).
  testing::ExpectScaledWeights(m->cfg, scales, untuned, q);
  const auto [before, after] = testing::ExpectPerplexityDrops(m->cfg, untuned, q, eval);
  std::printf("ternary stories260K: ppl %.3f -> %.3f after block fine-tuning\n", before, after);
}

TEST(Finetune, RefusesBadOptionsAndShortData) {
  auto m = testing::LoadStories260K();
  ASSERT_NE(m, nullptr);
  LlamaWeights q = m->w;
  FinetuneOptions o;
  o.learning_rate = 0;
  std::vector<int32_t> tokens(4096, 1);
  EXPECT_EQ(FinetuneBlocks(m->cfg, m->w, &q, tokens, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = FinetuneOptions();
  o.seq_len = 512;
  o.holdout_sequences = 8;  // 4096 tokens = 8 sequences, none left to train on
  auto st = FinetuneBlocks(m->cfg, m->w, &q, tokens, o).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("4096 tokens"), std::string::npos) << st;
  o = FinetuneOptions();
  tokens[3] = m->cfg.vocab_size;  // out of range id
  EXPECT_EQ(FinetuneBlocks(m->cfg, m->w, &q, tokens, o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The block-at-a-time API that the service's fine-tuning tasks use: replaying blocks 0..l-1
// from their tuned parameters and tuning block l gives bit for bit FinetuneBlocks' block l
// (what makes a resumed service job's artifact identical to an undisturbed one).
TEST(Finetune, ReplayedPrefixGivesTheSameBlockBitForBit) {
  auto m = testing::LoadStories260K();
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> calib = StoryTokens(0, 6 * 64);
  ASSERT_FALSE(calib.empty());
  LlamaWeights q = TernaryModel(m->cfg, m->w);
  const LlamaWeights untuned = q;
  FinetuneOptions o;
  o.seq_len = 64;
  o.epochs = 2;
  o.learning_rate = 3e-3;
  std::vector<LayerScales> scales;
  auto reports = FinetuneBlocks(m->cfg, m->w, &q, calib, o, &scales);
  ASSERT_TRUE(reports.ok()) << reports.status();
  std::vector<TunedBlock> tuned(m->cfg.num_layers);
  for (int l = 0; l < m->cfg.num_layers; ++l) {
    tuned[l].attn_norm = q.layers[l].attn_norm;
    tuned[l].ffn_norm = q.layers[l].ffn_norm;
    tuned[l].scales = scales[l];
  }
  for (int l = 0; l < m->cfg.num_layers; ++l) {
    MemoryWeightSource fp_src(m->cfg, m->w), q_src(m->cfg, untuned);
    auto f = BlockFinetuner::Start(m->cfg, fp_src, q_src, calib, o);
    ASSERT_TRUE(f.ok()) << f.status();
    for (int k = 0; k < l; ++k) {
      ASSERT_TRUE(f->ReplayBlock(m->w.layers[k], untuned.layers[k], tuned[k]).ok());
    }
    TunedBlock t;
    auto rep = f->TuneBlock(m->w.layers[l], untuned.layers[l], &t);
    ASSERT_TRUE(rep.ok()) << rep.status();
    EXPECT_EQ(rep->layer, l);
    EXPECT_EQ(rep->heldout_best, (*reports)[l].heldout_best) << "layer " << l;
    EXPECT_EQ(rep->heldout_curve, (*reports)[l].heldout_curve) << "layer " << l;
    EXPECT_TRUE(t.attn_norm == tuned[l].attn_norm) << "layer " << l;
    EXPECT_TRUE(t.ffn_norm == tuned[l].ffn_norm) << "layer " << l;
    for (int i = 0; i < 7; ++i) {
      EXPECT_TRUE(t.scales.out[i] == tuned[l].scales.out[i]) << "layer " << l << " linear " << i;
      EXPECT_TRUE(t.scales.in[i] == tuned[l].scales.in[i]) << "layer " << l << " linear " << i;
    }
  }
  // A wrongly sized parameter is refused, naming it.
  MemoryWeightSource fp_src(m->cfg, m->w), q_src(m->cfg, untuned);
  auto f = BlockFinetuner::Start(m->cfg, fp_src, q_src, calib, o);
  ASSERT_TRUE(f.ok());
  TunedBlock bad = tuned[0];
  bad.scales.in[2].resize(3);
  auto st = f->ReplayBlock(m->w.layers[0], untuned.layers[0], bad);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("input scale of v_proj"), std::string::npos) << st;
}

}  // namespace
}  // namespace quantd::model
