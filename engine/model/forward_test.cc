#include "engine/model/forward.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>

#include <gtest/gtest.h>
#include <omp.h>

#include "common/file_util.h"
#include "engine/format/checkpoint.h"
#include "engine/model/test_util.h"
#include "engine/tokenizer/tokens.h"

namespace quantd::model {
namespace {

using testing::ExamplePath;
using testing::LoadStories260K;

std::vector<int32_t> First(int n) {
  auto t = LoadTokenFile(ExamplePath("tinystories/tinystories_valid_first1000.tok512.u16"));
  EXPECT_TRUE(t.ok()) << t.status();
  t->resize(n);
  return *t;
}

TEST(ForwardTest, MatchesReferenceLogitsOnFirst64Tokens) {
  auto m = LoadStories260K();
  ASSERT_NE(m, nullptr);
  auto ref_bytes = ReadFile(ExamplePath("stories260K/ref_logits_first64.f32"));
  ASSERT_TRUE(ref_bytes.ok()) << ref_bytes.status();
  ASSERT_EQ(ref_bytes->size(), 64u * 512 * 4);
  MatrixF ref(64, 512);
  std::memcpy(ref.data(), ref_bytes->data(), ref_bytes->size());

  const std::vector<int32_t> tokens = First(64);
  EXPECT_EQ(tokens[0], 1);
  EXPECT_EQ(tokens[63], 434);
  auto logits = Forward(m->cfg, m->w, tokens);
  ASSERT_TRUE(logits.ok()) << logits.status();
  ASSERT_EQ(logits->rows(), 64);
  ASSERT_EQ(logits->cols(), 512);
  const float max_abs = (*logits - ref).cwiseAbs().maxCoeff();
  EXPECT_LT(max_abs, 1e-4f);
  EXPECT_NEAR((*logits)(0, 1), 8.404342f, 1e-4f);

  // Mean NLL of the 63 next-token targets (data README: 1.4937349).
  double nll = 0;
  for (int t = 0; t < 63; ++t) {
    const auto row = logits->row(t).cast<double>();
    nll += std::log((row.array() - row.maxCoeff()).exp().sum()) + row.maxCoeff() - row(tokens[t + 1]);
  }
  EXPECT_NEAR(nll / 63, 1.4937349, 1e-5);
}

TEST(ForwardTest, GreedyDecodeReproducesKarpathySample) {
  auto m = LoadStories260K();
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> want = {1,   403, 407, 261, 378, 432, 383, 286, 261, 376, 298,
                                     315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410,
                                     408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385};
  std::vector<int32_t> seq = {1};
  while (seq.size() < want.size()) {
    auto logits = Forward(m->cfg, m->w, seq);
    ASSERT_TRUE(logits.ok()) << logits.status();
    Eigen::Index best;
    logits->row(logits->rows() - 1).maxCoeff(&best);
    seq.push_back(static_cast<int32_t>(best));
  }
  EXPECT_EQ(seq, want);
}

TEST(ForwardTest, Bf16CheckpointStaysClose) {
  const std::string bf16 = "/work/shared/data/stories260K/hf/model.bf16.safetensors";
  if (!FileSize(bf16).ok()) GTEST_SKIP() << bf16 << " not present";
  auto m = LoadStories260K();
  ASSERT_NE(m, nullptr);
  auto ckpt = Checkpoint::Open(bf16);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto t = (*ckpt)->Get("model.embed_tokens.weight");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->dtype, DType::kBF16);
  auto w = LoadLlamaWeights(**ckpt, m->cfg);
  ASSERT_TRUE(w.ok()) << w.status();
  // Every BF16 weight is the F32 weight rounded to 8 mantissa bits.
  EXPECT_LE((w->embed - m->w.embed).cwiseAbs().maxCoeff(),
            m->w.embed.cwiseAbs().maxCoeff() * std::ldexp(1.0f, -8));
  const std::vector<int32_t> tokens = First(512);
  auto a = Forward(m->cfg, m->w, tokens);
  auto b = Forward(m->cfg, *w, tokens);
  ASSERT_TRUE(a.ok() && b.ok());
  const float d = (*a - *b).cwiseAbs().maxCoeff();
  EXPECT_GT(d, 0.0f);
  EXPECT_LT(d, 0.2f);  // data README: at most 0.19
}

TEST(ForwardTest, RejectsBadTokensAndLengths) {
  auto m = LoadStories260K();
  ASSERT_NE(m, nullptr);
  auto r = Forward(m->cfg, m->w, std::vector<int32_t>{1, 512});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("512"), absl::string_view::npos) << r.status();
  EXPECT_EQ(Forward(m->cfg, m->w, std::vector<int32_t>{-1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Forward(m->cfg, m->w, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Forward(m->cfg, m->w, std::vector<int32_t>(513, 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  LlamaWeights broken = m->w;
  broken.layers[2].down.resize(64, 171);
  auto b = Forward(m->cfg, broken, std::vector<int32_t>{1, 2});
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(b.status().message().find("layer 2 down_proj"), absl::string_view::npos) << b.status();
}

// A sink that stops after layer `stop` sees the same inputs for layers ≤ stop as a full pass,
// and nothing after it.
TEST(ForwardTest, SinkCanStopAfterALayer) {
  struct Recorder : ActivationSink {
    int stop = -1;
    std::vector<std::pair<int, MatrixF>> seen;
    void OnLinearInput(int layer, LinearGroup g, const MatrixF& x) override {
      if (g == LinearGroup::kDown) seen.push_back({layer, x});
    }
    int StopAfterLayer() const override { return stop; }
  };
  auto m = LoadStories260K();
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> tokens = First(32);
  Recorder all, first2;
  first2.stop = 1;
  auto full = Forward(m->cfg, m->w, tokens, &all);
  auto part = Forward(m->cfg, m->w, tokens, &first2);
  ASSERT_TRUE(full.ok() && part.ok());
  EXPECT_EQ(full->rows(), 32);
  EXPECT_EQ(part->rows(), 0);
  ASSERT_EQ(all.seen.size(), static_cast<size_t>(m->cfg.num_layers));
  ASSERT_EQ(first2.seen.size(), 2u);
  for (int l = 0; l < 2; ++l) {
    EXPECT_EQ(first2.seen[l].first, l);
    EXPECT_EQ(first2.seen[l].second, all.seen[l].second);
  }
}

TEST(ForwardTest, ReportsSingleThreadSpeed) {
  auto m = LoadStories260K();
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> tokens = First(512);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  ASSERT_TRUE(Forward(m->cfg, m->w, tokens).ok());  // warm-up
  const int reps = 5;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) ASSERT_TRUE(Forward(m->cfg, m->w, tokens).ok());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  omp_set_num_threads(saved);
  const double tps = reps * 512 / s;
  std::printf("stories260K forward, 1 thread, T=512: %.0f tokens/s\n", tps);
  RecordProperty("tokens_per_second", static_cast<int>(tps));
}

}  // namespace
}  // namespace quantd::model
