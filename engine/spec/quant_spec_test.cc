#include "engine/spec/quant_spec.h"

#include <cmath>
#include <string>
#include <tuple>

#include "gtest/gtest.h"

namespace quantd::runner {
namespace {

// QuantSpecFromProto(p) is INVALID_ARGUMENT, its message naming `needle`.
void ExpectRefused(const quantd::v1::QuantSpec& p, const std::string& needle = "") {
  auto r = QuantSpecFromProto(p);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << needle;
  EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status();
}

TEST(QuantSpecFromProtoTest, GridFillsBitsAndGroupAndIsChecked) {
  quantd::v1::QuantSpec p;
  p.set_method("gptq");
  p.set_grid("q4_0");  // bits 0 and group_size 0: the grid's own
  auto s = QuantSpecFromProto(p);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->grid, quant::GridTarget::kQ4_0);
  EXPECT_EQ(s->bits, 4);
  EXPECT_EQ(s->group_size, 32);
  p.set_grid("q5_1");
  s = QuantSpecFromProto(p);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->bits, 5);
  p.set_bits(3);  // q5_1 holds 5-bit codes
  ExpectRefused(p);
  p.set_bits(0);
  p.set_group_size(64);  // GGUF blocks are 32 wide
  ExpectRefused(p);
  p.set_group_size(0);
  p.set_grid("q9_9");
  ExpectRefused(p);
  p.set_grid("gptq-sym");  // any bits / groups, but rtn and gptq only
  p.set_bits(3);
  EXPECT_TRUE(QuantSpecFromProto(p).ok());
  p.set_method("quip");
  ExpectRefused(p);
  p.set_method("rtn");
  p.set_grid("");
  p.set_bits(5);  // 5 bits only with a q5 grid
  ExpectRefused(p);
}

TEST(QuantSpecFromProtoTest, BitBudgetIsValidatedAtEveryWidth) {
  quantd::v1::QuantSpec p;
  p.set_method("quip-sharp");
  p.set_avg_bits(2.5);
  auto s = QuantSpecFromProto(p);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->bits, 2);  // the narrowest width
  EXPECT_TRUE(HasBitBudget(p));
  const quantd::v1::QuantSpec w = BudgetWidthSpec(p, 4);
  EXPECT_EQ(w.bits(), 4);
  EXPECT_FALSE(HasBitBudget(w));
  EXPECT_EQ(w.method(), "quip-sharp");
  p.set_budget_weight("rel");
  EXPECT_TRUE(QuantSpecFromProto(p).ok());
  // Each refusal names the value.
  for (double bad : {1.5, 4.25, -3.0, std::nan("")}) {
    quantd::v1::QuantSpec b = p;
    b.set_avg_bits(bad);
    ExpectRefused(b, "avg_bits");
  }
  quantd::v1::QuantSpec b = p;
  b.set_bits(3);
  ExpectRefused(b, "bits 3 and avg_bits 2.5");
  b = p;
  b.set_budget_weight("fisher");
  ExpectRefused(b, "fisher");
  b = p;
  b.set_avg_bits(0);
  ExpectRefused(b, "budget_weight \"rel\" applies only with avg_bits");
  b = p;
  b.set_sequential(true);
  ExpectRefused(b, "sequential");
  b = p;
  b.set_method("gptq");
  b.set_grid("q4_0");
  ExpectRefused(b, "grid q4_0");
  b = p;
  b.set_group_size(64);  // quip-sharp has no groups: refused at every width, saying so
  ExpectRefused(b, "with avg_bits 2.5");
}

TEST(QuantSpecFromProtoTest, FillsDefaultsAndEveryField) {
  quantd::v1::QuantSpec p;
  p.set_method("gptq");
  p.set_bits(3);
  p.set_seed(7);
  p.set_group_size(32);
  p.set_mse_clip(true);
  auto s = QuantSpecFromProto(p);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE(s->act_order);
  // act order with groups uses static groups (quant/quantize.h): accepted.
  p.set_act_order(true);
  ASSERT_TRUE(QuantSpecFromProto(p).ok());
  p.set_group_size(0);
  s = QuantSpecFromProto(p);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->act_order);
  p.set_act_order(false);
  p.set_group_size(32);
  s = QuantSpecFromProto(p);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->method, quant::Method::kGptq);
  EXPECT_EQ(s->bits, 3);
  EXPECT_EQ(s->seed, 7u);
  EXPECT_EQ(s->group_size, 32);
  EXPECT_TRUE(s->mse_clip);
  EXPECT_EQ(s->damp, 0.01);  // wire 0 = default
  EXPECT_TRUE(s->baseline_guard);
  EXPECT_EQ(s->greedy_passes, 0);  // not quip-sharp

  p.Clear();
  p.set_method("quip-sharp");
  p.set_bits(2);
  p.set_greedy_passes(4);
  p.set_codebook_scale(0.9);
  p.set_damp(0.05);
  p.set_no_baseline_guard(true);
  s = QuantSpecFromProto(p);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->greedy_passes, 4);
  EXPECT_EQ(s->codebook_scale, 0.9);
  EXPECT_EQ(s->damp, 0.05);
  EXPECT_FALSE(s->baseline_guard);
  p.clear_greedy_passes();
  EXPECT_EQ(QuantSpecFromProto(p)->greedy_passes, kDefaultGreedyPasses);
  p.set_greedy_passes(0);  // explicitly none
  EXPECT_EQ(QuantSpecFromProto(p)->greedy_passes, 0);
}

TEST(QuantSpecFromProtoTest, HessianScaleForScalarGridsOnly) {
  quantd::v1::QuantSpec p;
  p.set_method("gptq");
  p.set_bits(4);
  p.set_hessian_scale(true);
  auto s = QuantSpecFromProto(p);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->hessian_scale);
  p.set_method("quip-sharp");
  p.set_bits(2);
  ExpectRefused(p, "hessian_scale");
}

TEST(QuantSpecFromProtoTest, QtipOptions) {
  quantd::v1::QuantSpec p;
  p.set_method("qtip");
  p.set_bits(2);
  auto s = QuantSpecFromProto(p);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->method, quant::Method::kQtip);
  EXPECT_EQ(s->trellis_code, quant::TrellisCode::k1Mad);
  EXPECT_EQ(s->trellis_l, 16);
  EXPECT_EQ(s->greedy_passes, 0);
  p.set_trellis_code("hyb");
  p.set_trellis_l(12);
  s = QuantSpecFromProto(p);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->trellis_code, quant::TrellisCode::kHyb);
  EXPECT_EQ(s->trellis_l, 12);
  p.set_trellis_code("5mad");
  ExpectRefused(p);
  p.set_trellis_code("1mad");
  p.set_trellis_l(31);
  ExpectRefused(p);
  p.set_trellis_l(0);
  p.set_method("gptq");  // trellis options on another method
  ExpectRefused(p);
}

TEST(QuantSpecFromProtoTest, RejectsUnknownMethodAndBadBits) {
  quantd::v1::QuantSpec p;
  p.set_method("awq");
  p.set_bits(4);
  ExpectRefused(p);
  p.set_method("quip-sharp");
  p.set_bits(7);
  ExpectRefused(p, "7");
}

TEST(TokenWeightingFromProtoTest, DefaultsByMethodAndRefusals) {
  quantd::v1::QuantSpec p;
  p.set_method("gptq");
  // A stored spec without a weighting predates it (jobs stored before issue 24): unweighted, so
  // a resumed old job captures what it captured before.
  auto legacy = TokenWeightingFromProto(p);
  ASSERT_TRUE(legacy.ok()) << legacy.status();
  EXPECT_TRUE(legacy->IsUniform());
  // At submit the default is filled in: sink-weighted for a method that reads Hessians.
  ASSERT_TRUE(FillTokenWeightingDefaults(&p).ok());
  auto w = TokenWeightingFromProto(p);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->sink_weight, kDefaultSinkWeight);
  EXPECT_EQ(w->sink_positions, 1);
  quantd::v1::QuantSpec r;
  r.set_method("rtn");  // reads no Hessian: unweighted unless asked
  ASSERT_TRUE(FillTokenWeightingDefaults(&r).ok());
  EXPECT_EQ(r.token_weighting(), "none");
  EXPECT_TRUE(TokenWeightingFromProto(r)->IsUniform());
  p.set_method("rtn");
  p.set_token_weighting("sink");
  p.set_sink_weight(8);
  EXPECT_EQ(TokenWeightingFromProto(p)->sink_weight, 8);
  // Defaults written into the spec name what is used.
  quantd::v1::QuantSpec q;
  q.set_method("quip-sharp");
  ASSERT_TRUE(FillTokenWeightingDefaults(&q).ok());
  EXPECT_EQ(q.token_weighting(), "sink");
  EXPECT_EQ(q.sink_weight(), kDefaultSinkWeight);
  q.set_token_weighting("none");
  q.set_sink_weight(0);
  ASSERT_TRUE(FillTokenWeightingDefaults(&q).ok());
  EXPECT_EQ(q.token_weighting(), "none");
  EXPECT_EQ(q.sink_weight(), 0);
  // Refusals name the value.
  for (auto [mode, weight, named] :
       {std::tuple<const char*, double, const char*>{"outlier", 0, "outlier"},
        {"sink", 0.25, "0.25"},
        {"sink", 1e6, "1e+06"},
        {"sink", std::nan(""), "nan"},
        {"none", 4, "sink_weight 4"}}) {
    quantd::v1::QuantSpec b;
    b.set_method("gptq");
    b.set_token_weighting(mode);
    b.set_sink_weight(weight);
    auto r = TokenWeightingFromProto(b);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << mode << " " << weight;
    EXPECT_NE(r.status().message().find(named), std::string::npos) << r.status();
  }
  // "sink+massive": the ratio's default is written into the spec; out-of-range ratios, and a
  // ratio with another mode, are refused naming the value.
  quantd::v1::QuantSpec m;
  m.set_method("gptq");
  m.set_token_weighting("sink+massive");
  ASSERT_TRUE(FillTokenWeightingDefaults(&m).ok());
  EXPECT_EQ(m.token_weighting(), "sink+massive");
  EXPECT_EQ(m.sink_weight(), kDefaultSinkWeight);
  EXPECT_EQ(m.massive_ratio(), model::kDefaultMassiveRatio);
  auto mw = TokenWeightingFromProto(m);
  ASSERT_TRUE(mw.ok()) << mw.status();
  EXPECT_TRUE(mw->Massive());
  EXPECT_EQ(mw->massive_ratio, model::kDefaultMassiveRatio);
  m.set_massive_ratio(300);
  EXPECT_EQ(TokenWeightingFromProto(m)->massive_ratio, 300);
  for (auto [mode, ratio, named] :
       {std::tuple<const char*, double, const char*>{"sink+massive", 1.5, "massive_ratio 1.5"},
        {"sink+massive", 1e7, "massive_ratio 1e+07"},
        {"sink+massive", std::nan(""), "massive_ratio nan"},
        {"sink", 50, "massive_ratio 50"},
        {"none", 50, "massive_ratio 50"}}) {
    quantd::v1::QuantSpec b;
    b.set_method("gptq");
    b.set_token_weighting(mode);
    b.set_massive_ratio(ratio);
    auto r = TokenWeightingFromProto(b);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << mode << " " << ratio;
    EXPECT_NE(r.status().message().find(named), std::string::npos) << r.status();
  }
}

}  // namespace
}  // namespace quantd::runner
