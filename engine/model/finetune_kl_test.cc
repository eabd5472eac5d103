// End-to-end (KL) fine-tuning, engine/model/finetune_e2e.h (the file is named _kl_ because
// tests/finetune_e2e_test is the service's end-to-end test): the whole-model gradient
// (log-softmax/KL, head, final norm and every block chained) against central finite differences
// in fp64 on stories260K, then the tuning itself on a crudely quantized stories260K (held-out KL
// and perplexity lower, scales consistent with the written weights), the head option, refusals.
#include "engine/model/finetune_e2e.h"

#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <random>

#include "engine/format/checkpoint.h"
#include "engine/model/forward_ops.h"
#include "engine/model/tuned_block_file.h"
#include "common/file_util.h"
#include "engine/model/finetune_test_util.h"
#include "engine/model/perplexity.h"
#include "engine/model/test_util.h"
#include "engine/tokenizer/tokens.h"
#include "gtest/gtest.h"

namespace quantd::model {
namespace {

using MD = grad::Mat<double>;
using VD = grad::Vec<double>;

std::vector<int32_t> StoryTokens(size_t begin, size_t count) {
  auto all = LoadTokenFile(
      testing::ExamplePath("tinystories/tinystories_valid_first1000.tok512.u16"));
  if (!all.ok() || all->size() < begin + count) return {};
  return std::vector<int32_t>(all->begin() + begin, all->begin() + begin + count);
}

grad::ModelParams<double> ParamsD(const LlamaConfig& cfg, const LlamaWeights& w) {
  grad::ModelParams<double> p;
  for (const LayerWeights& lw : w.layers) p.blocks.push_back(grad::ParamsFromWeights<double>(lw));
  p.final_norm = w.final_norm.cast<double>();
  p.head = (cfg.tie_word_embeddings ? w.embed : w.lm_head).cast<double>();
  return p;
}

// Checks the analytic gradient g (n doubles) of `loss` at theta on `samples` random coordinates
// (all of them when n ≤ samples): relative 1e-4 in the max norm over the coordinates checked.
void ExpectGradSampled(const std::string& what, double* theta, Eigen::Index n, const double* g,
                       const std::function<double()>& loss, std::mt19937_64* rng,
                       int samples = 6) {
  std::vector<long> idx;
  std::uniform_int_distribution<long> pick(0, static_cast<long>(n) - 1);
  for (long k = 0; k < std::min<long>(samples, n); ++k) idx.push_back(n <= samples ? k : pick(*rng));
  const auto [max_err, max_fd] = testing::CentralDifferenceError(theta, g, idx, loss);
  EXPECT_GT(max_fd, 0.0) << what;
  EXPECT_LE(max_err, 1e-4 * max_fd) << what << ": max |analytic − fd| " << max_err
                                    << ", max |fd| " << max_fd;
}

TEST(FinetuneE2e, KlGradientMatchesFiniteDifferences) {
  auto m = testing::LoadStories260K();
  ASSERT_NE(m, nullptr);
  auto dims = grad::ModelDimsFor(m->cfg);
  ASSERT_TRUE(dims.ok()) << dims.status();
  const int t = 8;
  const std::vector<int32_t> tokens = StoryTokens(1000, t);
  ASSERT_EQ(static_cast<int>(tokens.size()), t);
  MatrixF cosf, sinf;
  ops::RopeTables(m->cfg, t, &cosf, &sinf);
  const MD cos = cosf.cast<double>(), sin = sinf.cast<double>();
  MD x0(t, m->cfg.hidden_size);
  for (int i = 0; i < t; ++i) x0.row(i) = m->w.embed.row(tokens[i]).cast<double>();

  // The reference: the model as loaded; the tuned copy: every tunable perturbed.
  const grad::ModelParams<double> ref_p = ParamsD(m->cfg, m->w);
  MD ref;
  grad::SequenceLogProbs<double>(*dims, ref_p, cos, sin, x0, &ref);
  grad::ModelParams<double> p = ref_p;
  std::mt19937_64 rng(7);
  std::normal_distribution<double> n(0.0, 0.3);
  auto perturb = [&](auto* v) {
    for (Eigen::Index i = 0; i < v->size(); ++i) v->data()[i] *= 1.0 + n(rng);
  };
  for (auto& b : p.blocks) {
    perturb(&b.attn_norm);
    perturb(&b.ffn_norm);
    for (auto& l : b.lin) {
      perturb(&l.a);
      perturb(&l.b);
    }
  }
  perturb(&p.final_norm);
  perturb(&p.head);

  grad::ModelGrads<double> g;
  g.Zero(p, true);
  const double kl = grad::SequenceKl<double>(*dims, p, cos, sin, x0, ref, 1.0, &g);
  EXPECT_GT(kl, 0.01);
  auto loss = [&] { return grad::SequenceKl<double>(*dims, p, cos, sin, x0, ref, 1.0, nullptr); };
  EXPECT_NEAR(loss(), kl, 1e-12 * kl);
  // At the reference itself the KL and its gradient vanish.
  grad::ModelGrads<double> g0;
  g0.Zero(ref_p, true);
  EXPECT_NEAR(grad::SequenceKl<double>(*dims, ref_p, cos, sin, x0, ref, 1.0, &g0), 0.0, 1e-12);
  EXPECT_LE(g0.head.cwiseAbs().maxCoeff(), 1e-12);

  ExpectGradSampled("head", p.head.data(), p.head.size(), g.head.data(), loss, &rng, 12);
  ExpectGradSampled("final_norm", p.final_norm.data(), p.final_norm.size(), g.final_norm.data(),
                    loss, &rng);
  for (size_t l = 0; l < p.blocks.size(); ++l) {
    const std::string at = "layer " + std::to_string(l) + " ";
    auto& b = p.blocks[l];
    const auto& gb = g.blocks[l];
    ExpectGradSampled(at + "attn_norm", b.attn_norm.data(), b.attn_norm.size(),
                      gb.attn_norm.data(), loss, &rng);
    ExpectGradSampled(at + "ffn_norm", b.ffn_norm.data(), b.ffn_norm.size(), gb.ffn_norm.data(),
                      loss, &rng);
    for (Linear lin : kAllLinears) {
      const int i = static_cast<int>(lin);
      const std::string name = at + std::string(LinearName(lin));
      ExpectGradSampled(name + " a", b.lin[i].a.data(), b.lin[i].a.size(), gb.a[i].data(), loss,
                        &rng, 3);
      ExpectGradSampled(name + " b", b.lin[i].b.data(), b.lin[i].b.size(), gb.b[i].data(), loss,
                        &rng, 3);
    }
  }
}

// Rounds every row of m to the 4 levels {±0.5s, ±1.5s}, s = 0.8 × the row's mean |w|: a crude
// 2-bit grid, far enough from fp that tuning has something to recover.
MatrixF TwoBit(const MatrixF& m) {
  MatrixF out(m.rows(), m.cols());
  for (Eigen::Index r = 0; r < m.rows(); ++r) {
    const float s = 0.8f * m.row(r).cwiseAbs().mean();
    for (Eigen::Index c = 0; c < m.cols(); ++c) {
      const float v = std::clamp(std::floor(m(r, c) / s) + 0.5f, -1.5f, 1.5f);
      out(r, c) = v * s;
    }
  }
  return out;
}

// Every decoder linear of `w` on TwoBit's grid.
LlamaWeights TwoBitModel(const LlamaConfig& cfg, const LlamaWeights& w) {
  LlamaWeights q = w;
  for (int l = 0; l < cfg.num_layers; ++l) {
    for (Linear lin : kAllLinears) MutableLinear(q, l, lin) = TwoBit(GetLinear(w, l, lin));
  }
  return q;
}

TEST(FinetuneE2e, LowersHeldOutKlAndPerplexity) {
  auto m = testing::LoadStories260K();
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> calib = StoryTokens(0, 12 * 128);
  const std::vector<int32_t> eval = StoryTokens(200000, 8192);
  if (calib.empty() || eval.empty()) FAIL() << "examples/tinystories tokens not found";
  LlamaWeights q = TwoBitModel(m->cfg, m->w);
  const LlamaWeights untuned = q;
  E2eOptions o;
  o.seq_len = 128;
  o.epochs = 3;
  o.learning_rate = 3e-3;
  std::vector<LayerScales> scales;
  int calls = 0;
  auto rep = FinetuneEndToEnd(m->cfg, m->w, &q, calib, o, &scales,
                              [&](const E2eReport&) { ++calls; });
  ASSERT_TRUE(rep.ok()) << rep.status();
  EXPECT_EQ(calls, rep->epochs_run);
  EXPECT_EQ(static_cast<int>(rep->heldout_curve.size()), rep->epochs_run);
  EXPECT_LT(rep->heldout_best, 0.9 * rep->heldout_before);
  testing::ExpectScaledWeights(m->cfg, scales, untuned, q);
  const auto [before, after] = testing::ExpectPerplexityDrops(m->cfg, untuned, q, eval);
  std::printf("2-bit grid stories260K: held-out KL %.4f -> %.4f, ppl %.3f -> %.3f after "
              "end-to-end fine-tuning\n",
              rep->heldout_before, rep->heldout_best, before, after);
}

// The service's KL task (worker/finetune_task.cc) rebuilds the block-tuned model from the
// untuned quantized layers and the blocks' tuned parameters read back from their files
// (ApplyTunedBlock), starts from the blocks' scales and stores a TunedModel file: bit for bit
// the bench's in-process FinetuneBlocks + FinetuneEndToEnd. A set cancel flag stops it with
// CANCELLED.
TEST(FinetuneE2e, RebuiltFromTunedBlockFilesGivesTheInProcessResultBitForBit) {
  auto m = testing::LoadStories260K();
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> calib = StoryTokens(0, 8 * 64);
  ASSERT_FALSE(calib.empty());
  LlamaWeights q = TwoBitModel(m->cfg, m->w);
  const LlamaWeights untuned = q;
  FinetuneOptions bo;
  bo.seq_len = 64;
  bo.epochs = 2;
  bo.learning_rate = 3e-3;
  E2eOptions eo;
  eo.seq_len = 64;
  eo.epochs = 2;
  // In process, as quantd-bench finetune --e2e 1.
  std::vector<LayerScales> scales;
  ASSERT_TRUE(FinetuneBlocks(m->cfg, m->w, &q, calib, bo, &scales).ok());
  std::vector<TunedBlock> blocks(m->cfg.num_layers);
  for (int l = 0; l < m->cfg.num_layers; ++l) {
    blocks[l] = {q.layers[l].attn_norm, q.layers[l].ffn_norm, scales[l]};
  }
  auto rep = FinetuneEndToEnd(m->cfg, m->w, &q, calib, eo, &scales);
  ASSERT_TRUE(rep.ok()) << rep.status();
  // As the service: each block through its file, applied to the untuned layer.
  const std::string dir =
      ::testing::TempDir() + "/finetune_kl_test_" + std::to_string(::getpid());
  ASSERT_TRUE(MakeDirs(dir).ok());
  LlamaWeights r = untuned;
  std::vector<LayerScales> rscales(m->cfg.num_layers);
  for (int l = 0; l < m->cfg.num_layers; ++l) {
    const std::string path = dir + "/block" + std::to_string(l) + ".safetensors";
    ASSERT_TRUE(WriteTunedBlock(path, blocks[l]).ok());
    auto t = ReadTunedBlock(path, m->cfg, l);
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_TRUE(ApplyTunedBlock(*t, &r.layers[l]).ok());
    rscales[l] = t->scales;
  }
  std::atomic<bool> cancelled{true};
  LlamaWeights c = r;
  std::vector<LayerScales> cscales = rscales;
  EXPECT_EQ(FinetuneEndToEnd(m->cfg, m->w, &c, calib, eo, &cscales, nullptr, nullptr, &cancelled)
                .status()
                .code(),
            absl::StatusCode::kCancelled);
  cancelled = false;
  auto rrep = FinetuneEndToEnd(m->cfg, m->w, &r, calib, eo, &rscales, nullptr, nullptr, &cancelled);
  ASSERT_TRUE(rrep.ok()) << rrep.status();
  EXPECT_EQ(rrep->heldout_curve, rep->heldout_curve);
  EXPECT_EQ(rrep->heldout_best, rep->heldout_best);
  TunedModel tm;
  for (int l = 0; l < m->cfg.num_layers; ++l) {
    tm.blocks.push_back({r.layers[l].attn_norm, r.layers[l].ffn_norm, rscales[l]});
  }
  tm.final_norm = r.final_norm;
  ASSERT_TRUE(WriteTunedModel(dir + "/model.safetensors", tm).ok());
  auto back = ReadTunedModel(dir + "/model.safetensors", m->cfg);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->head.size(), 0);
  EXPECT_TRUE(back->final_norm == q.final_norm);
  for (int l = 0; l < m->cfg.num_layers; ++l) {
    EXPECT_TRUE(back->blocks[l].attn_norm == q.layers[l].attn_norm) << l;
    EXPECT_TRUE(back->blocks[l].ffn_norm == q.layers[l].ffn_norm) << l;
    for (int i = 0; i < 7; ++i) {
      EXPECT_TRUE(back->blocks[l].scales.out[i] == scales[l].out[i]) << l << " " << i;
      EXPECT_TRUE(back->blocks[l].scales.in[i] == scales[l].in[i]) << l << " " << i;
      EXPECT_TRUE(GetLinear(r, l, kAllLinears[i]) == GetLinear(q, l, kAllLinears[i])) << l;
    }
  }
  // A file for another model is refused, naming what does not fit.
  LlamaConfig more = m->cfg;
  more.num_layers = m->cfg.num_layers - 1;
  auto wrong = ReadTunedModel(dir + "/model.safetensors", more);
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kDataLoss) << wrong.status();
  RemoveAll(dir).IgnoreError();
}

// The head option on an untied model: the transformers fixture engine/model/testdata/rope_llama3
// (2 layers, GQA, untied head), its linears and head on the crude grid, random tokens.
TEST(FinetuneE2e, TunesAnUntiedHead) {
  const char* src = std::getenv("QUANTD_SOURCE_DIR");
  const std::string dir = std::string(src != nullptr ? src : QUANTD_TEST_SOURCE_DIR) +
                          "/engine/model/testdata/rope_llama3";
  auto cfg = LoadLlamaConfig(dir);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  ASSERT_FALSE(cfg->tie_word_embeddings);
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto fp = LoadLlamaWeights(**ckpt, *cfg);
  ASSERT_TRUE(fp.ok()) << fp.status();
  LlamaWeights q = TwoBitModel(*cfg, *fp);
  q.lm_head = TwoBit(fp->lm_head);
  std::mt19937_64 rng(3);
  std::uniform_int_distribution<int32_t> tok(0, cfg->vocab_size - 1);
  std::vector<int32_t> tokens(10 * 64);
  for (int32_t& t : tokens) t = tok(rng);
  E2eOptions o;
  o.seq_len = 64;
  o.epochs = 8;
  o.learning_rate = 3e-3;
  o.patience = 2;
  o.tune_head = true;
  const MatrixF head_before = q.lm_head;
  auto rep = FinetuneEndToEnd(*cfg, *fp, &q, tokens, o);
  ASSERT_TRUE(rep.ok()) << rep.status();
  EXPECT_LT(rep->heldout_best, 0.9 * rep->heldout_before);
  EXPECT_GT((q.lm_head - head_before).cwiseAbs().maxCoeff(), 1e-3f);
  std::printf("rope_llama3 fixture, 2-bit grid, head tuned: held-out KL %.4f -> %.4f\n",
              rep->heldout_before, rep->heldout_best);
}

TEST(FinetuneE2e, RefusesBadInput) {
  auto m = testing::LoadStories260K();
  ASSERT_NE(m, nullptr);
  LlamaWeights q = m->w;
  std::vector<int32_t> tokens(1024, 1);
  E2eOptions o;
  o.seq_len = 128;
  o.tune_head = true;  // stories260K ties its head to the embedding
  auto st = FinetuneEndToEnd(m->cfg, m->w, &q, tokens, o).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  o.tune_head = false;
  o.learning_rate = 2;
  EXPECT_EQ(FinetuneEndToEnd(m->cfg, m->w, &q, tokens, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.learning_rate = 1e-3;
  o.holdout_sequences = 8;  // 1024 tokens = 8 sequences of 128
  st = FinetuneEndToEnd(m->cfg, m->w, &q, tokens, o).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("1024 tokens"), std::string::npos) << st;
  o.holdout_sequences = 2;
  std::vector<LayerScales> wrong(1);
  EXPECT_EQ(FinetuneEndToEnd(m->cfg, m->w, &q, tokens, o, &wrong).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quantd::model
