#include "engine/model/perplexity.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <gtest/gtest.h>

#include "engine/model/forward.h"
#include "engine/model/test_util.h"
#include "engine/model/weight_source.h"
#include "engine/tokenizer/tokens.h"

namespace quantd::model {
namespace {

using testing::ExamplePath;
using testing::LoadStories260K;

std::vector<int32_t> Load(const std::string& rel) {
  auto t = LoadTokenFile(ExamplePath(rel));
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *t : std::vector<int32_t>{};
}

// Reference numbers from shared/data/README.md (numpy fp64 forward).
TEST(PerplexityTest, AllThousandStoriesIn512Windows) {
  auto m = LoadStories260K();
  ASSERT_NE(m, nullptr);
  const auto tokens = Load("tinystories/tinystories_valid_first1000.tok512.u16");
  ASSERT_EQ(tokens.size(), 390336u);
  auto r = Perplexity(m->cfg, m->w, tokens, PerplexityOptions{});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->targets, 390335);
  EXPECT_EQ(r->windows, (390335 + 511) / 512);
  EXPECT_NEAR(r->ppl, 4.7385, 4.7385 * 1e-3);
  EXPECT_NEAR(r->mean_nll, 1.555712, 1e-4);
}

TEST(PerplexityTest, EvalStories500To999) {
  auto m = LoadStories260K();
  ASSERT_NE(m, nullptr);
  const auto tokens = Load("tinystories/eval_stories_500_999.u16");
  auto r = Perplexity(m->cfg, m->w, tokens, PerplexityOptions{});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->targets, 193144);
  EXPECT_NEAR(r->ppl, 5.4540, 5.4540 * 1e-3);
}

// Brute force: the NLL of every target, computed by the documented window rule.
TEST(PerplexityTest, StrideAndMaxTokensFollowTheDocumentedRule) {
  auto m = LoadStories260K();
  ASSERT_NE(m, nullptr);
  auto tokens = Load("tinystories/tinystories_valid_first1000.tok512.u16");
  PerplexityOptions o;
  o.context = 64;
  o.stride = 24;
  o.max_tokens = 300;
  auto r = Perplexity(m->cfg, m->w, tokens, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->targets, 299);

  double total = 0;
  int64_t counted = 0, prev_end = 0;
  int windows = 0;
  for (int64_t b = 0; prev_end < 299; b += 24, ++windows) {
    const int64_t e = std::min<int64_t>(b + 64, 299);
    auto logits = Forward(m->cfg, m->w, absl::MakeConstSpan(tokens).subspan(b, e - b));
    ASSERT_TRUE(logits.ok());
    for (int64_t p = std::max(b, prev_end); p < e; ++p, ++counted) {
      const auto row = logits->row(p - b).cast<double>();
      total += std::log((row.array() - row.maxCoeff()).exp().sum()) + row.maxCoeff() -
               row(tokens[p + 1]);
    }
    prev_end = e;
  }
  EXPECT_EQ(counted, 299);
  EXPECT_EQ(r->windows, windows);
  EXPECT_NEAR(r->mean_nll, total / 299, 1e-9);

  // Deterministic regardless of scheduling.
  auto r2 = Perplexity(m->cfg, m->w, tokens, o);
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(r->mean_nll, r2->mean_nll);
}

// A start token (issue 24): each window is [start] + context - 1 stream tokens and scores the
// same targets; checked against an explicit sum of per-window forward passes, and the
// layer-streamed overload agrees.
TEST(PerplexityTest, StartTokenHeadsEveryWindow) {
  auto m = LoadStories260K();
  ASSERT_NE(m, nullptr);
  auto tokens = Load("tinystories/tinystories_valid_first1000.tok512.u16");
  tokens.resize(200);
  PerplexityOptions o;
  o.context = 64;
  o.start_token = 1;  // llama2.c BOS
  auto r = Perplexity(m->cfg, m->w, tokens, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->targets, 199);
  EXPECT_EQ(r->windows, (199 + 62) / 63);
  double total = 0;
  for (int64_t b = 0; b < 199; b += 63) {
    const int64_t e = std::min<int64_t>(b + 63, 199);
    std::vector<int32_t> in = {1};
    in.insert(in.end(), tokens.begin() + b, tokens.begin() + e);
    auto logits = Forward(m->cfg, m->w, in);
    ASSERT_TRUE(logits.ok());
    for (int64_t p = b; p < e; ++p) {
      const Eigen::VectorXd row = logits->row(p - b + 1).transpose().cast<double>();
      const double mx = row.maxCoeff();
      total += std::log((row.array() - mx).exp().sum()) + mx - row[tokens[p + 1]];
    }
  }
  EXPECT_NEAR(r->mean_nll, total / 199, 1e-5);
  MemoryWeightSource src(m->cfg, m->w);
  auto rs = Perplexity(m->cfg, src, tokens, o);
  ASSERT_TRUE(rs.ok()) << rs.status();
  EXPECT_NEAR(rs->mean_nll, r->mean_nll, 1e-5);
  EXPECT_EQ(rs->targets, 199);
  // Without it the windows hold 64 stream tokens and the numbers differ.
  o.start_token = -1;
  auto plain = Perplexity(m->cfg, m->w, tokens, o);
  ASSERT_TRUE(plain.ok());
  EXPECT_NE(plain->mean_nll, r->mean_nll);
  o.start_token = m->cfg.vocab_size;  // not a token of the model
  EXPECT_EQ(Perplexity(m->cfg, m->w, tokens, o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PerplexityTest, RejectsBadOptions) {
  auto m = LoadStories260K();
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> t = {1, 2, 3};
  PerplexityOptions o;
  o.context = 513;
  EXPECT_EQ(Perplexity(m->cfg, m->w, t, o).status().code(), absl::StatusCode::kInvalidArgument);
  o.context = 8;
  o.stride = 9;
  EXPECT_EQ(Perplexity(m->cfg, m->w, t, o).status().code(), absl::StatusCode::kInvalidArgument);
  o.stride = 0;
  EXPECT_EQ(Perplexity(m->cfg, m->w, std::vector<int32_t>{1}, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Perplexity(m->cfg, m->w, std::vector<int32_t>{1, 999}, o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quantd::model
