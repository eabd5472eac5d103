// The model families quantd runs, against transformers: tiny random models of each family saved
// by transformers 5 with its logits for a fixed prompt (tests/fixtures/make_family_fixtures.py,
// committed under engine/model/testdata/families). Both forward passes (the reference Forward
// and the layer-streamed ForwardBatch) must reproduce them within 1e-4 relative.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/file_util.h"
#include "engine/format/checkpoint.h"
#include "engine/model/config.h"
#include "engine/model/forward.h"
#include "engine/model/quarot.h"
#include "engine/model/streamed_forward.h"
#include "engine/model/test_util.h"
#include "engine/model/weight_source.h"
#include "engine/model/weights.h"
#include "engine/tokenizer/tokens.h"

namespace quantd::model {
namespace {

std::string FixtureDir(const std::string& family) {
  return testing::SourcePath("engine/model/testdata/families/" + family);
}

struct Fixture {
  LlamaConfig cfg;
  std::vector<int32_t> tokens;
  std::vector<float> ref;  // [T][vocab]
  // longrope: the logits of the prefix run alone (short factors), [P][vocab]; else empty.
  std::vector<float> ref_prefix;
  double scale = 0;        // max |ref|
  std::unique_ptr<Checkpoint> ckpt;
};

Fixture Load(const std::string& family) {
  Fixture f;
  const std::string dir = FixtureDir(family);
  auto cfg = LoadLlamaConfig(dir);
  EXPECT_TRUE(cfg.ok()) << cfg.status();
  if (cfg.ok()) f.cfg = *cfg;
  auto tokens = LoadTokenFile(dir + "/tokens.u16");
  EXPECT_TRUE(tokens.ok()) << tokens.status();
  if (tokens.ok()) f.tokens = *tokens;
  auto bytes = ReadFile(dir + "/ref_logits.f32");
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  if (bytes.ok()) {
    f.ref.resize(bytes->size() / 4);
    std::memcpy(f.ref.data(), bytes->data(), f.ref.size() * 4);  // little-endian hosts only
  }
  for (float v : f.ref) f.scale = std::max<double>(f.scale, std::abs(v));
  if (auto p = ReadFile(dir + "/ref_prefix_logits.f32"); p.ok()) {
    f.ref_prefix.resize(p->size() / 4);
    std::memcpy(f.ref_prefix.data(), p->data(), f.ref_prefix.size() * 4);
  }
  auto ckpt = Checkpoint::Open(dir);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  if (ckpt.ok()) f.ckpt = std::move(*ckpt);
  return f;
}

// max |a - ref| over the first a.rows() rows of ref, / max |f.ref|.
double RelDiff(const MatrixF& a, const Fixture& f, const std::vector<float>& ref) {
  double d = 0;
  for (Eigen::Index i = 0; i < a.size(); ++i) {
    d = std::max<double>(d, std::abs(a.data()[i] - ref[i]));
  }
  return d / f.scale;
}
double RelDiff(const MatrixF& a, const Fixture& f) { return RelDiff(a, f, f.ref); }

class FamiliesTest : public ::testing::TestWithParam<const char*> {};

// Both forwards equal transformers' logits within 1e-4 relative. The batched one runs the prompt
// together with a prefix of it (each sequence starts at position 0 and slides its own window);
// the prefix's logits are the first rows of the prompt's (causal), or with longrope, where the
// prefix is short enough for the short factors and the prompt is not, transformers' logits of
// the prefix alone.
TEST_P(FamiliesTest, BothForwardsMatchTransformers) {
  const Fixture f = Load(GetParam());
  ASSERT_TRUE(f.ckpt != nullptr && !f.tokens.empty());
  const LlamaConfig& cfg = f.cfg;
  const int T = static_cast<int>(f.tokens.size());
  ASSERT_EQ(f.ref.size(), static_cast<size_t>(T) * cfg.vocab_size);

  auto w = LoadLlamaWeights(*f.ckpt, cfg);
  ASSERT_TRUE(w.ok()) << w.status();
  auto logits = Forward(cfg, *w, f.tokens);
  ASSERT_TRUE(logits.ok()) << logits.status();
  const double rel = RelDiff(*logits, f);
  std::printf("%s reference forward: max|quantd - transformers| / max|logit| = %.3g (max %.3g)\n",
              GetParam(), rel, f.scale);
  EXPECT_LE(rel, 1e-4);

  CheckpointWeightSource src(cfg, *f.ckpt);
  const int prefix = T * 2 / 3;
  const std::vector<absl::Span<const int32_t>> seqs = {
      absl::MakeConstSpan(f.tokens), absl::MakeConstSpan(f.tokens).first(prefix)};
  auto batched = ForwardBatchLogits(cfg, src, seqs);
  ASSERT_TRUE(batched.ok()) << batched.status();
  ASSERT_EQ(batched->rows(), T + prefix);
  const double rel_full = RelDiff(MatrixF(batched->topRows(T)), f);
  const bool own_prefix = !f.ref_prefix.empty();
  if (own_prefix) {
    ASSERT_EQ(f.ref_prefix.size(), static_cast<size_t>(prefix) * cfg.vocab_size);
    // The factors matter: the prompt's first rows are not the prefix's logits.
    EXPECT_GT(RelDiff(MatrixF(batched->topRows(prefix)), f, f.ref_prefix), 1e-2);
  }
  const double rel_prefix =
      RelDiff(MatrixF(batched->bottomRows(prefix)), f, own_prefix ? f.ref_prefix : f.ref);
  std::printf("%s batched forward: %.3g (prompt), %.3g (prefix)\n", GetParam(), rel_full,
              rel_prefix);
  EXPECT_LE(rel_full, 1e-4);
  EXPECT_LE(rel_prefix, 1e-4);

  // The sliding window bites on these prompts: full attention gives other logits.
  if (cfg.sliding_window > 0) {
    LlamaConfig full = cfg;
    full.sliding_window = 0;
    auto wrong = Forward(full, *w, f.tokens);
    ASSERT_TRUE(wrong.ok());
    EXPECT_GT(RelDiff(*wrong, f), 1e-2) << "the fixture does not exercise the window";
  }
}

// QuaRot keeps the function of every family it accepts (the biases rotate with their
// projection's outputs) and refuses Gemma 2 and 3 with the reason.
TEST_P(FamiliesTest, QuarotKeepsTheFunctionOrRefuses) {
  const Fixture f = Load(GetParam());
  ASSERT_TRUE(f.ckpt != nullptr);
  auto w = LoadLlamaWeights(*f.ckpt, f.cfg);
  ASSERT_TRUE(w.ok()) << w.status();
  LlamaConfig rcfg = f.cfg;
  LlamaWeights rw = *w;
  const absl::Status s = ApplyQuarot(&rcfg, &rw, 7);
  if (f.cfg.sandwich_norms) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find(std::string(ArchitectureName(f.cfg.family))), std::string::npos) << s;
    EXPECT_EQ(QuarotSupported(f.cfg).code(), absl::StatusCode::kInvalidArgument);
    return;
  }
  ASSERT_TRUE(s.ok()) << s;
  auto want = Forward(f.cfg, *w, f.tokens);
  auto got = Forward(rcfg, rw, f.tokens);
  ASSERT_TRUE(want.ok() && got.ok());
  const double rel = (*got - *want).cwiseAbs().maxCoeff() / want->cwiseAbs().maxCoeff();
  std::printf("%s quarot-rotated fp model vs original: %.3g\n", GetParam(), rel);
  EXPECT_LE(rel, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FamiliesTest,
                         ::testing::Values("llama3", "mistral", "qwen2", "qwen3", "gemma2", "gemma3",
                                           "phi3"),
                         [](const ::testing::TestParamInfo<const char*>& i) {
                           return std::string(i.param);
                         });

// What each fixture's config.json turns on.
TEST(FamiliesConfigTest, FixtureConfigsDescribeTheirFamily) {
  auto load = [](const char* fam) {
    auto c = LoadLlamaConfig(FixtureDir(fam));
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : LlamaConfig{};
  };
  const LlamaConfig llama = load("llama3"), mistral = load("mistral"), qwen2 = load("qwen2"),
                    qwen3 = load("qwen3"), gemma = load("gemma2");
  EXPECT_EQ(llama.family, Family::kLlama);
  EXPECT_TRUE(llama.qkv_bias && llama.o_bias && llama.tie_word_embeddings);
  EXPECT_EQ(llama.rope.type, RopeType::kLlama3);
  EXPECT_EQ(mistral.family, Family::kMistral);
  EXPECT_EQ(mistral.sliding_window, 8);
  EXPECT_EQ(mistral.LayerWindow(0), 8);
  EXPECT_EQ(mistral.LayerWindow(1), 8);
  EXPECT_EQ(qwen2.family, Family::kQwen2);
  EXPECT_TRUE(qwen2.qkv_bias);
  EXPECT_FALSE(qwen2.o_bias);
  EXPECT_EQ(qwen2.LayerWindow(0), 0);  // max_window_layers 1
  EXPECT_EQ(qwen2.LayerWindow(1), 8);
  EXPECT_EQ(qwen3.family, Family::kQwen3);
  EXPECT_TRUE(qwen3.qk_norm);
  EXPECT_EQ(qwen3.head_dim, 16);
  EXPECT_FALSE(qwen3.qkv_bias);
  EXPECT_EQ(gemma.family, Family::kGemma2);
  EXPECT_TRUE(gemma.norm_plus_one && gemma.sandwich_norms);
  EXPECT_EQ(gemma.act, Activation::kGeluTanh);
  EXPECT_FLOAT_EQ(gemma.embed_scale, std::sqrt(32.0f));
  EXPECT_EQ(gemma.attn_softcap, 5.0);
  EXPECT_EQ(gemma.final_softcap, 10.0);
  EXPECT_FLOAT_EQ(gemma.AttentionScale(), 1.0f / std::sqrt(24.0f));
  EXPECT_EQ(gemma.LayerWindow(0), 8);  // alternating: even layers slide
  EXPECT_EQ(gemma.LayerWindow(1), 0);
  const LlamaConfig g3 = load("gemma3");
  EXPECT_EQ(g3.family, Family::kGemma3);
  EXPECT_TRUE(g3.norm_plus_one && g3.sandwich_norms && g3.qk_norm && g3.has_local_rope);
  EXPECT_EQ(g3.attn_softcap, 0.0);
  EXPECT_EQ(g3.final_softcap, 0.0);
  EXPECT_EQ(g3.LayerWindow(0), 8);  // sliding_window_pattern 2
  EXPECT_EQ(g3.LayerWindow(1), 0);
  EXPECT_EQ(g3.LayerRope(0).theta, 1e4);
  EXPECT_EQ(g3.LayerRope(1).type, RopeType::kLinear);
  EXPECT_EQ(g3.LayerRope(1).theta, 1e6);
  const LlamaConfig phi3 = load("phi3");
  EXPECT_EQ(phi3.family, Family::kPhi3);
  EXPECT_TRUE(phi3.fused_qkv && phi3.fused_gate_up);
  EXPECT_FALSE(phi3.tie_word_embeddings || phi3.qkv_bias);
  EXPECT_EQ(phi3.rope.type, RopeType::kLongrope);
  EXPECT_EQ(phi3.rope.original_max_position_embeddings, 16);
  EXPECT_EQ(phi3.rope.partial_rotary_factor, 0.75);
  EXPECT_EQ(RotaryDim(phi3.rope, phi3.head_dim), 6);
  EXPECT_DOUBLE_EQ(phi3.rope.attention_factor, std::sqrt(2.0));  // factor 256 / 16
  EXPECT_EQ(phi3.LayerWindow(0), 8);
  EXPECT_EQ(phi3.LayerWindow(1), 8);
  std::vector<std::string> names;
  for (const StoredLinear& s : StoredLinears(phi3)) names.push_back(StoredTensorName(1, s));
  EXPECT_EQ(names, (std::vector<std::string>{"model.layers.1.self_attn.qkv_proj.weight",
                                             "model.layers.1.self_attn.o_proj.weight",
                                             "model.layers.1.mlp.gate_up_proj.weight",
                                             "model.layers.1.mlp.down_proj.weight"}));
}

// Phi-3: the attention factor, the partial rotation and the fused layout each matter here.
TEST(FamiliesConfigTest, Phi3NeedsLongropeAndPartialRotary) {
  const Fixture f = Load("phi3");
  ASSERT_TRUE(f.ckpt != nullptr);
  auto w = LoadLlamaWeights(*f.ckpt, f.cfg);
  ASSERT_TRUE(w.ok()) << w.status();
  LlamaConfig no_scaling = f.cfg, full_rotary = f.cfg;
  no_scaling.rope.attention_factor = 1.0;
  full_rotary.rope.partial_rotary_factor = 1.0;
  full_rotary.rope.short_factor.resize(4, 1.0);
  full_rotary.rope.long_factor.resize(4, 1.0);
  for (const LlamaConfig& wrong_cfg : {no_scaling, full_rotary}) {
    auto wrong = Forward(wrong_cfg, *w, f.tokens);
    ASSERT_TRUE(wrong.ok());
    EXPECT_GT(RelDiff(*wrong, f), 1e-2);
  }
  // q, k and v are the row blocks of qkv_proj.
  auto qkv = f.ckpt->ReadMatrix("model.layers.0.self_attn.qkv_proj.weight");
  ASSERT_TRUE(qkv.ok());
  EXPECT_EQ(MatrixF(qkv->topRows(32)), w->layers[0].q);
  EXPECT_EQ(MatrixF(qkv->bottomRows(16)), w->layers[0].v);
}

// Gemma 3: with one RoPE for every layer (the local one ignored) the logits are wrong, so the
// fixture checks the per-layer-kind RoPE.
TEST(FamiliesConfigTest, Gemma3NeedsBothRopes) {
  const Fixture f = Load("gemma3");
  ASSERT_TRUE(f.ckpt != nullptr);
  auto w = LoadLlamaWeights(*f.ckpt, f.cfg);
  ASSERT_TRUE(w.ok()) << w.status();
  LlamaConfig one = f.cfg;
  one.has_local_rope = false;
  auto wrong = Forward(one, *w, f.tokens);
  ASSERT_TRUE(wrong.ok());
  EXPECT_GT(RelDiff(*wrong, f), 1e-2);
}

}  // namespace
}  // namespace quantd::model
