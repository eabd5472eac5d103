#include "engine/model/quarot.h"

#include <cstdio>

#include "gtest/gtest.h"
#include "engine/model/forward.h"
#include "engine/model/hessian_capture.h"
#include "engine/model/test_util.h"
#include "engine/tokenizer/tokens.h"
#include "engine/quant/rht.h"

namespace quantd::model {
namespace {

using testing::ExamplePath;
using testing::LoadStories260K;

// The dense matrix of an Rht (x ↦ R x), from its action on the identity.
MatrixD RhtMatrix(int n, uint64_t seed) {
  auto r = quant::MakeRht(n, seed);
  MatrixD m = MatrixD::Identity(n, n);
  r->ApplyRows(&m);  // rows e_i ← R e_i: m = Rᵀ
  return m.transpose();
}

TEST(QuarotTest, RotationsAreOrthogonal) {
  const QuarotSeeds s = QuarotSeedsFrom(3);
  for (auto [n, seed] : std::vector<std::pair<int, uint64_t>>{
           {64, s.residual}, {8, s.head}, {172, s.down}, {576, s.residual}, {64, s.head},
           {1536, s.down}, {8, s.o}, {9, s.o}}) {
    const MatrixD r = RhtMatrix(n, seed);
    EXPECT_LE((r.transpose() * r - MatrixD::Identity(n, n)).cwiseAbs().maxCoeff(), 1e-6) << n;
  }
}

// The dense (R ⊗ B) for square R [a×a], B [b×b].
MatrixD Kron(const MatrixD& r, const MatrixD& b) {
  MatrixD k(r.rows() * b.rows(), r.cols() * b.cols());
  for (Eigen::Index i = 0; i < r.rows(); ++i) {
    for (Eigen::Index j = 0; j < r.cols(); ++j) {
      k.block(i * b.rows(), j * b.cols(), b.rows(), b.cols()) = r(i, j) * b;
    }
  }
  return k;
}

// ApplyAcrossHeads against the dense Kronecker product (R ⊗ I), for a Hadamard size (8) and a
// size with no Hadamard matrix (9, SmolLM2-135M's head count: Rht's orthogonal fallback).
TEST(QuarotTest, AcrossHeadsIsTheKroneckerProductWithIdentity) {
  for (int heads : {8, 9}) {
    const int hd = 5;
    auto r = quant::MakeRht(heads, 11);
    ASSERT_TRUE(r.ok());
    const MatrixD x = MatrixD::Random(3, heads * hd);
    MatrixD y = x;
    ApplyAcrossHeads(*r, hd, &y);
    const MatrixD want = x * Kron(RhtMatrix(heads, 11), MatrixD::Identity(hd, hd)).transpose();
    EXPECT_LE((y - want).cwiseAbs().maxCoeff(), 1e-12) << heads;
    MatrixF yf = x.cast<float>();
    ApplyAcrossHeads(*r, hd, &yf);
    EXPECT_LE((yf.cast<double>() - want).cwiseAbs().maxCoeff(), 1e-5) << heads;
    MatrixD wrong = MatrixD::Ones(2, heads * hd + 1);
    ApplyAcrossHeads(*r, hd, &wrong);  // a row of the wrong length is left alone
    EXPECT_EQ(wrong, MatrixD::Ones(2, heads * hd + 1));
  }
}

// The rotated model computes the original function: logits on the first 64 evaluation tokens
// of TinyStories 500-999 agree to fp32 tolerance, and the capture of the rotated model sees
// the rotated activations (H' = R H Rᵀ for the down_proj input).
TEST(QuarotTest, RotatedStories260KKeepsItsLogits) {
  auto m = LoadStories260K();
  ASSERT_NE(m, nullptr);
  auto tokens = LoadTokenFile(ExamplePath("tinystories/eval_stories_500_999.u16"));
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  ASSERT_GE(tokens->size(), 64u);
  const absl::Span<const int32_t> t(tokens->data(), 64);
  HessianCapture cap_fp(m->cfg);
  auto ref = Forward(m->cfg, m->w, t, &cap_fp);
  ASSERT_TRUE(ref.ok()) << ref.status();

  LlamaConfig cfg = m->cfg;
  LlamaWeights w = m->w;
  ASSERT_TRUE(ApplyQuarot(&cfg, &w, 17).ok());
  EXPECT_FALSE(cfg.tie_word_embeddings);
  EXPECT_EQ(w.online_down.size, 172);
  EXPECT_EQ(w.online_o.size, cfg.num_heads);
  EXPECT_EQ(w.layers[0].attn_norm.minCoeff(), 1.0f);
  EXPECT_EQ(w.final_norm.maxCoeff(), 1.0f);
  // The weights really changed.
  EXPECT_GT((w.layers[0].q - m->w.layers[0].q).norm(), 0.1 * m->w.layers[0].q.norm());
  HessianCapture cap_rot(cfg);
  auto rot = Forward(cfg, w, t, &cap_rot);
  ASSERT_TRUE(rot.ok()) << rot.status();
  const double max_diff = (*rot - *ref).cwiseAbs().maxCoeff();
  std::printf("quarot stories260K: max |logit difference| over 64 tokens = %.3g (logit range %.3g)\n",
              max_diff, ref->cwiseAbs().maxCoeff());
  EXPECT_LE(max_diff, 2e-4);
  // Without the online rotation the model is wrong: the down_proj weights expect it.
  LlamaWeights no_online = w;
  no_online.online_down = {};
  auto broken = Forward(cfg, no_online, t);
  ASSERT_TRUE(broken.ok());
  EXPECT_GT((*broken - *ref).cwiseAbs().maxCoeff(), 100 * max_diff);
  LlamaWeights no_online_o = w;
  no_online_o.online_o = {};
  auto broken_o = Forward(cfg, no_online_o, t);
  ASSERT_TRUE(broken_o.ok());
  EXPECT_GT((*broken_o - *ref).cwiseAbs().maxCoeff(), 100 * max_diff);

  const MatrixD rd = RhtMatrix(172, QuarotSeedsFrom(17).down);
  const MatrixD h = cap_fp.Sum(2, LinearGroup::kDown), h_rot = cap_rot.Sum(2, LinearGroup::kDown);
  EXPECT_LE((rd * h * rd.transpose() - h_rot).norm(), 1e-4 * h.norm());
  // o_proj's input is rotated by R_o ⊗ R_head: across heads online, within each head by v.
  const QuarotSeeds s = QuarotSeedsFrom(17);
  const MatrixD ro = Kron(RhtMatrix(cfg.num_heads, s.o), RhtMatrix(cfg.head_dim, s.head));
  const MatrixD ho = cap_fp.Sum(2, LinearGroup::kO), ho_rot = cap_rot.Sum(2, LinearGroup::kO);
  EXPECT_LE((ro * ho * ro.transpose() - ho_rot).norm(), 1e-4 * ho.norm());

  // A wrong online size is rejected, not silently ignored.
  no_online.online_down = {171, 1};
  EXPECT_EQ(Forward(cfg, no_online, t).status().code(), absl::StatusCode::kInvalidArgument);
  no_online_o.online_o = {cfg.num_heads + 1, 1};
  EXPECT_EQ(Forward(cfg, no_online_o, t).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ApplyQuarot(&cfg, &w, 17).code(), absl::StatusCode::kInvalidArgument);
}

TEST(QuarotTest, QuarotLinearMatchesTheWholeModelTransform) {
  auto m = LoadStories260K();
  ASSERT_NE(m, nullptr);
  LlamaConfig cfg = m->cfg;
  LlamaWeights w = m->w;
  ASSERT_TRUE(ApplyQuarot(&cfg, &w, 5).ok());
  for (Linear lin : kAllLinears) {
    const VectorF& norm =
        GroupOf(lin) == LinearGroup::kGateUp ? m->w.layers[1].ffn_norm : m->w.layers[1].attn_norm;
    auto one = QuarotLinear(m->cfg, lin, GetLinear(m->w, 1, lin), norm, 5);
    ASSERT_TRUE(one.ok()) << one.status();
    EXPECT_EQ(*one, GetLinear(w, 1, lin)) << LinearName(lin);
  }
  EXPECT_EQ(QuarotLinear(m->cfg, Linear::kQ, MatrixF(3, 3), m->w.final_norm, 5).status().code(),
            absl::StatusCode::kInvalidArgument);
}


// The layer-streamed rotation hands out ApplyQuarot's model to the bit: every layer tensor,
// embedding rows, head rows (tied head with model.norm fused in), the norms and the online
// rotations; biases included (random q/k/v and o biases on stories260K).
TEST(QuarotTest, StreamedSourceIsBitIdenticalToTheWholeModelTransform) {
  auto m = LoadStories260K();
  ASSERT_NE(m, nullptr);
  LlamaConfig cfg = m->cfg;
  LlamaWeights fp = m->w;
  ASSERT_TRUE(cfg.tie_word_embeddings);  // the head is the embedding: the tied path
  cfg.qkv_bias = true;
  cfg.o_bias = true;
  for (LayerWeights& lw : fp.layers) {
    lw.q_bias = VectorF::Random(cfg.num_heads * cfg.head_dim);
    lw.k_bias = VectorF::Random(cfg.num_kv_heads * cfg.head_dim);
    lw.v_bias = VectorF::Random(cfg.num_kv_heads * cfg.head_dim);
    lw.o_bias = VectorF::Random(cfg.hidden_size);
  }
  fp.final_norm = VectorF::Random(cfg.hidden_size).cwiseAbs();  // not all ones: the fusion shows
  LlamaConfig whole_cfg = cfg;
  LlamaWeights whole = fp;
  ASSERT_TRUE(ApplyQuarot(&whole_cfg, &whole, 23).ok());

  auto src = QuarotWeightSource::Create(cfg, std::make_unique<MemoryWeightSource>(cfg, fp), 23);
  ASSERT_TRUE(src.ok()) << src.status();
  QuarotWeightSource& q = **src;
  EXPECT_FALSE(q.config().tie_word_embeddings);
  EXPECT_EQ(q.online_down().size, whole.online_down.size);
  EXPECT_EQ(q.online_down().seed, whole.online_down.seed);
  EXPECT_EQ(q.online_o().size, whole.online_o.size);
  EXPECT_EQ(q.online_o().seed, whole.online_o.seed);
  for (int l = cfg.num_layers - 1; l >= 0; --l) {  // any order: each layer stands alone
    auto lw = q.Layer(l);
    ASSERT_TRUE(lw.ok()) << lw.status();
    const LayerWeights& a = **lw;
    const LayerWeights& b = whole.layers[l];
    for (Linear lin : kAllLinears) {
      EXPECT_EQ(GetLinear(a, lin), GetLinear(b, lin)) << "layer " << l << " " << LinearName(lin);
    }
    EXPECT_EQ(a.q_bias, b.q_bias);
    EXPECT_EQ(a.k_bias, b.k_bias);
    EXPECT_EQ(a.v_bias, b.v_bias);
    EXPECT_EQ(a.o_bias, b.o_bias);
    EXPECT_NE(a.v_bias, fp.layers[l].v_bias);  // rotated, really
    EXPECT_EQ(a.attn_norm, b.attn_norm);
    EXPECT_EQ(a.ffn_norm, b.ffn_norm);
  }
  const std::vector<int32_t> toks = {5, 0, 511, 17, 17, 300};
  MatrixF e;
  ASSERT_TRUE(q.Embed(toks, &e).ok());
  for (size_t i = 0; i < toks.size(); ++i) EXPECT_EQ(e.row(i), whole.embed.row(toks[i]));
  MatrixF h;
  ASSERT_TRUE(q.Head(100, 37, &h).ok());  // a block of head rows rotates as in the whole head
  EXPECT_EQ(h, whole.lm_head.middleRows(100, 37));
  auto norm = q.FinalNorm();
  ASSERT_TRUE(norm.ok());
  EXPECT_EQ(*norm, whole.final_norm);

  // The rotated model's own online rotation cannot be rotated again.
  MemoryWeightSource* rotated = new MemoryWeightSource(whole_cfg, whole);
  EXPECT_EQ(QuarotWeightSource::Create(whole_cfg, std::unique_ptr<WeightSource>(rotated), 23)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quantd::model
