#include "engine/quant/quantize.h"
#include "engine/quant/packed_matrix.h"
#include "engine/quant/rtn.h"

#include <algorithm>
#include <limits>
#include <memory>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "engine/quant/codebook.h"
#include "engine/quant/ldlq.h"
#include "engine/quant/synthetic.h"

namespace quantd::quant {
namespace {

using ::testing::HasSubstr;

bool CodebooksBuilt() { return MakeCodebook("e8p").ok(); }

struct Combo {
  Method method;
  int bits;
  int group_size;
};

std::vector<Combo> AllCombos() {
  std::vector<Combo> out;
  for (int b : {2, 3, 4, 8}) out.push_back({Method::kRtn, b, 0});
  for (int b : {2, 3, 4, 8}) out.push_back({Method::kGptq, b, 0});
  out.push_back({Method::kRtn, 4, 64});
  out.push_back({Method::kGptq, 4, 64});
  out.push_back({Method::kGptq, 3, 128});
  for (int b : {2, 3, 4}) out.push_back({Method::kQuip, b, 0});
  for (int b : {2, 3, 4}) out.push_back({Method::kQuipSharp, b, 0});
  for (int b : {2, 3, 4}) out.push_back({Method::kQtip, b, 0});
  return out;
}

TEST(QuantizeTest, MethodNamesRoundTrip) {
  for (Method m : {Method::kRtn, Method::kGptq, Method::kQuip, Method::kQuipSharp, Method::kQtip}) {
    EXPECT_EQ(*ParseMethod(MethodName(m)), m);
  }
  EXPECT_EQ(ParseMethod("awq").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(QuantizeTest, ValidateSpecNamesTheBadValue) {
  EXPECT_TRUE(ValidateSpec(QuantSpec{}).ok());
  QuantSpec s;
  s.bits = 8;
  EXPECT_THAT(ValidateSpec(s).message(), HasSubstr("bits = 8"));
  s = QuantSpec{};
  s.group_size = 64;
  EXPECT_EQ(ValidateSpec(s).code(), absl::StatusCode::kInvalidArgument);
  s.method = Method::kGptq;
  EXPECT_TRUE(ValidateSpec(s).ok());
  s.group_size = -1;
  EXPECT_THAT(ValidateSpec(s).message(), HasSubstr("-1"));
  s = QuantSpec{};
  s.damp = 0;
  EXPECT_EQ(ValidateSpec(s).code(), absl::StatusCode::kInvalidArgument);
  s = QuantSpec{};
  s.codebook_scale = std::numeric_limits<double>::quiet_NaN();
  EXPECT_EQ(ValidateSpec(s).code(), absl::StatusCode::kInvalidArgument);
  s = QuantSpec{};
  s.greedy_passes = -2;
  EXPECT_EQ(ValidateSpec(s).code(), absl::StatusCode::kInvalidArgument);
  s = QuantSpec{};
  s.hessian_scale = true;  // quip-sharp has no scalar grid to choose
  EXPECT_THAT(ValidateSpec(s).message(), HasSubstr("hessian_scale"));
  s.method = Method::kGptq;
  s.bits = 4;
  EXPECT_TRUE(ValidateSpec(s).ok());
}

TEST(QuantizeTest, AllMethodsRoundTripOnAllShapes) {
  auto dev = MakeCpuDevice(2);
  const bool have_cb = CodebooksBuilt();
  struct Shape { int m, n; };
  for (Shape sh : {Shape{64, 64}, Shape{32, 64}, Shape{172, 64}, Shape{64, 172}, Shape{16, 97}}) {
    MatrixF w = SyntheticWeight(sh.m, sh.n, sh.m * 1000 + sh.n);
    MatrixD h = SyntheticHessian(sh.n, sh.n);
    for (const Combo& c : AllCombos()) {
      if (c.method == Method::kQuipSharp && !have_cb) continue;
      QuantSpec spec;
      spec.method = c.method;
      spec.bits = c.bits;
      spec.group_size = c.group_size;
      spec.seed = 42;
      spec.baseline_guard = false;  // each method's own pipeline; the guard has its own test
      spec.trellis_l = 12;          // qtip: a small trellis keeps this test fast
      const std::string what = std::string(MethodName(c.method)) + " b" + std::to_string(c.bits) +
                               " g" + std::to_string(c.group_size) + " " + std::to_string(sh.m) +
                               "x" + std::to_string(sh.n);
      absl::StatusOr<QuantizedMatrix> q = QuantizeMatrix(*dev, w, h, spec, "layer");
      ASSERT_TRUE(q.ok()) << what << ": " << q.status();
      // Bit-exact determinism.
      absl::StatusOr<QuantizedMatrix> q2 = QuantizeMatrix(*dev, w, h, spec, "layer");
      ASSERT_TRUE(q2.ok());
      EXPECT_EQ(q->packed, q2->packed) << what;
      // The proxy loss is the loss of exactly what DequantizeMatrix returns.
      absl::StatusOr<MatrixF> wq = DequantizeMatrix(q->packed);
      ASSERT_TRUE(wq.ok()) << what << ": " << wq.status();
      ASSERT_EQ(wq->rows(), sh.m);
      ASSERT_EQ(wq->cols(), sh.n);
      EXPECT_EQ(RelativeProxyLoss(w.cast<double>(), wq->cast<double>(), h), q->proxy_loss) << what;
      EXPECT_GT(q->proxy_loss, 0) << what;
      EXPECT_LT(q->proxy_loss, c.bits == 2 ? 0.5 : 0.2) << what;
      absl::StatusOr<PackedInfo> info = InspectPacked(q->packed);
      ASSERT_TRUE(info.ok());
      EXPECT_EQ(info->method, c.method);
      EXPECT_EQ(info->bits, c.bits);
      EXPECT_EQ(info->m, sh.m);
      EXPECT_EQ(info->n, sh.n);
      EXPECT_EQ(info->seed, 42u);
      EXPECT_TRUE(q->note.empty()) << what << ": " << q->note;
    }
  }
}

TEST(QuantizeTest, MoreBitsLowerLossAndHessianMethodsBeatRtn) {
  auto dev = MakeCpuDevice(2);
  MatrixF w = SyntheticWeight(64, 128, 1);
  MatrixD h = SyntheticHessian(128, 2);
  auto loss = [&](Method m, int bits) {
    QuantSpec s;
    s.method = m;
    s.bits = bits;
    s.baseline_guard = false;
    return QuantizeMatrix(*dev, w, h, s, "l")->proxy_loss;
  };
  for (int b : {2, 3, 4}) {
    EXPECT_LT(loss(Method::kGptq, b), loss(Method::kRtn, b)) << b;
    EXPECT_LT(loss(Method::kQuip, b), loss(Method::kRtn, b)) << b;
  }
  EXPECT_LT(loss(Method::kGptq, 4), loss(Method::kGptq, 2));
  EXPECT_LT(loss(Method::kQuip, 4), loss(Method::kQuip, 2));
  if (CodebooksBuilt()) {
    EXPECT_LT(loss(Method::kQuipSharp, 2), loss(Method::kQuip, 2));
    EXPECT_LT(loss(Method::kQuipSharp, 4), loss(Method::kQuipSharp, 2));
  }
}

TEST(QuantizeTest, CorruptOrTruncatedPackedIsRejected) {
  auto dev = MakeCpuDevice(1);
  MatrixF w = SyntheticWeight(32, 64, 3);
  MatrixD h = SyntheticHessian(64, 4);
  QuantSpec s;
  s.method = Method::kQuip;
  absl::StatusOr<QuantizedMatrix> q = QuantizeMatrix(*dev, w, h, s, "l");
  ASSERT_TRUE(q.ok());
  const std::string& p = q->packed;
  for (size_t cut : {size_t{0}, size_t{3}, size_t{12}, p.size() / 2, p.size() - 1}) {
    absl::StatusOr<MatrixF> r = DequantizeMatrix(p.substr(0, cut));
    EXPECT_FALSE(r.ok()) << cut;
    EXPECT_TRUE(r.status().code() == absl::StatusCode::kDataLoss ||
                r.status().code() == absl::StatusCode::kInvalidArgument)
        << r.status();
  }
  for (size_t pos : {size_t{6}, size_t{20}, size_t{40}, p.size() - 10, p.size() - 2}) {
    std::string bad = p;
    bad[pos] ^= 0x04;
    EXPECT_EQ(DequantizeMatrix(bad).status().code(), absl::StatusCode::kDataLoss) << pos;
    EXPECT_EQ(InspectPacked(bad).status().code(), absl::StatusCode::kDataLoss) << pos;
  }
  std::string magic = p;
  magic[0] = 'X';
  EXPECT_EQ(DequantizeMatrix(magic).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DequantizeMatrix(p + "x").status().code(), absl::StatusCode::kDataLoss);
}

TEST(QuantizeTest, BadInputsNameTheLayer) {
  auto dev = MakeCpuDevice(1);
  MatrixF w = SyntheticWeight(8, 16, 5);
  MatrixD h = SyntheticHessian(16, 6);
  QuantSpec s;
  s.method = Method::kGptq;
  MatrixF wn = w;
  wn(2, 2) = std::numeric_limits<float>::quiet_NaN();
  absl::StatusOr<QuantizedMatrix> q = QuantizeMatrix(*dev, wn, h, s, "l7.v_proj");
  EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(q.status().message(), HasSubstr("l7.v_proj"));
  MatrixD hn = h;
  hn(1, 0) = std::numeric_limits<double>::infinity();
  q = QuantizeMatrix(*dev, w, hn, s, "l7.v_proj");
  EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
  for (Method m : {Method::kGptq, Method::kQuip}) {
    s.method = m;
    q = QuantizeMatrix(*dev, w, MatrixD(-h), s, "l8.gate_proj");
    EXPECT_EQ(q.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(q.status().message(), HasSubstr("l8.gate_proj"));
  }
  q = QuantizeMatrix(*dev, w, MatrixD::Identity(15, 15), s, "l9");
  EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
}

// Act order must be exactly plain GPTQ on the explicitly permuted problem, with the result put
// back in the original column order; and with a few high-energy inputs placed last (where the
// natural order rounds them after every other column has been fixed) it must lower the loss.
TEST(QuantizeTest, ActOrderEqualsGptqOnThePermutedProblem) {
  auto dev = MakeCpuDevice(1);
  const int m = 24, n = 48;
  MatrixF w = SyntheticWeight(m, n, 21);
  MatrixD h = SyntheticHessian(n, 22);
  for (int j = n - 6; j < n; ++j) {  // outlier inputs at the end
    h.row(j) *= 8.0;
    h.col(j) *= 8.0;
  }
  QuantSpec s;
  s.method = Method::kGptq;
  s.bits = 3;
  QuantSpec a = s;
  a.act_order = true;
  auto natural = QuantizeMatrix(*dev, w, h, s, "l");
  auto ordered = QuantizeMatrix(*dev, w, h, a, "l");
  ASSERT_TRUE(natural.ok()) << natural.status();
  ASSERT_TRUE(ordered.ok()) << ordered.status();

  // The reference: sort by H_ii descending (stable), quantize in natural order, unpermute.
  std::vector<int> perm(n);
  for (int j = 0; j < n; ++j) perm[j] = j;
  std::stable_sort(perm.begin(), perm.end(), [&](int x, int y) { return h(x, x) > h(y, y); });
  for (int j = 0; j < 6; ++j) ASSERT_GE(perm[j], n - 6);  // the outliers come first
  MatrixF wp(m, n);
  MatrixD hp(n, n);
  for (int j = 0; j < n; ++j) wp.col(j) = w.col(perm[j]);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) hp(i, j) = h(perm[i], perm[j]);
  }
  auto ref = QuantizeMatrix(*dev, wp, hp, s, "l");
  ASSERT_TRUE(ref.ok()) << ref.status();
  auto ref_w = DequantizeMatrix(ref->packed);
  auto got_w = DequantizeMatrix(ordered->packed);
  ASSERT_TRUE(ref_w.ok() && got_w.ok());
  for (int j = 0; j < n; ++j) {
    ASSERT_EQ(got_w->col(perm[j]), ref_w->col(j)) << "column " << perm[j];
  }
  EXPECT_NEAR(ordered->proxy_loss, ref->proxy_loss, 1e-12);
  EXPECT_LT(ordered->proxy_loss, natural->proxy_loss);

  // With groups the grids are static: each is the min-max grid of its group's ORIGINAL weights
  // (what RTN fits), whatever order the sweep takes.
  a.group_size = 16;
  auto grouped = QuantizeMatrix(*dev, w, h, a, "l");
  ASSERT_TRUE(grouped.ok()) << grouped.status();
  auto gc = DecodePacked(grouped->packed);
  ASSERT_TRUE(gc.ok());
  auto rtn = QuantizeRtn(w.cast<double>(), RtnParams{3, GridForm::kAsymmetric, 16, false, false});
  ASSERT_TRUE(rtn.ok());
  ASSERT_EQ(gc->grids.size(), rtn->grids.size());
  for (size_t i = 0; i < gc->grids.size(); ++i) {
    ASSERT_EQ(gc->grids[i].scale, rtn->grids[i].scale) << i;
    ASSERT_EQ(gc->grids[i].zero, rtn->grids[i].zero) << i;
  }
  EXPECT_LT(grouped->proxy_loss, RelativeProxyLoss(w.cast<double>(),
                                                   rtn->what, h));  // the sweep still helps
  a.group_size = 0;
  // Only gptq/quarot.
  a.method = Method::kRtn;
  EXPECT_EQ(ValidateSpec(a).code(), absl::StatusCode::kInvalidArgument);
  a.method = Method::kQuarot;
  a.bits = 4;
  EXPECT_TRUE(ValidateSpec(a).ok());
}

TEST(QuantizeTest, DeadColumnsAndRaisedDampingAreNoted) {
  auto dev = MakeCpuDevice(1);
  MatrixF w = SyntheticWeight(16, 32, 9);
  MatrixD h = SyntheticHessian(32, 10);
  h.row(5).setZero();
  h.col(5).setZero();
  QuantSpec s;
  s.method = Method::kGptq;
  s.bits = 4;
  absl::StatusOr<QuantizedMatrix> q = QuantizeMatrix(*dev, w, h, s, "l");
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_THAT(q->note, HasSubstr("1 dead input column"));
  MatrixD hi = SyntheticHessian(32, 11);
  hi.diagonal().array() -= 0.05 * hi.diagonal().mean();
  q = QuantizeMatrix(*dev, w, hi, s, "l");
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_THAT(q->note, HasSubstr("damping raised"));
}

TEST(QuantizeTest, QuipSharpOptions) {
  if (!CodebooksBuilt()) GTEST_SKIP() << "codebooks not built yet";
  auto dev = MakeCpuDevice(2);
  MatrixF w = SyntheticWeight(32, 64, 12);
  MatrixD h = SyntheticHessian(64, 13);
  QuantSpec s;
  const double base = QuantizeMatrix(*dev, w, h, s, "l")->proxy_loss;
  s.greedy_passes = 3;
  absl::StatusOr<QuantizedMatrix> g = QuantizeMatrix(*dev, w, h, s, "l");
  ASSERT_TRUE(g.ok());
  EXPECT_LT(g->proxy_loss, base * 1.1);
  s.greedy_passes = 0;
  s.codebook_scale = 0.9;
  absl::StatusOr<QuantizedMatrix> sc = QuantizeMatrix(*dev, w, h, s, "l");
  ASSERT_TRUE(sc.ok());
  EXPECT_NE(sc->packed, QuantizeMatrix(*dev, w, h, QuantSpec{}, "l")->packed);
  EXPECT_EQ(DequantizeMatrix(sc->packed)->rows(), 32);
  s.seed = 7;
  EXPECT_NE(QuantizeMatrix(*dev, w, h, s, "l")->packed, sc->packed);
}

// The guard keeps min(rotated, unrotated gptq) by proxy loss and says which it stored.
TEST(QuantizeTest, BaselineGuardKeepsTheLowerLossAndRecordsIt) {
  auto dev = MakeCpuDevice(2);
  int kept_baseline = 0, kept_rotated = 0;
  for (int seed = 0; seed < 6; ++seed) {
    MatrixF w = SyntheticWeight(48, 64, 100 + seed);
    MatrixD h = SyntheticHessian(64, 200 + seed);
    if (seed % 2 == 1) {
      // q/k-like: the energy of x sits on one outlier channel the weights barely use.
      h.row(3) *= 30.0;
      h.col(3) *= 30.0;
      w.col(3) *= 0.02f;
    }
    for (Method m : {Method::kQuip, Method::kQuipSharp}) {
      if (m == Method::kQuipSharp && !CodebooksBuilt()) continue;
      QuantSpec on;
      on.method = m;
      on.bits = 2;
      on.seed = seed;
      QuantSpec off = on;
      off.baseline_guard = false;
      QuantSpec gptq;
      gptq.method = Method::kGptq;
      gptq.bits = 2;
      gptq.seed = seed;
      auto q_on = QuantizeMatrix(*dev, w, h, on, "l");
      auto q_off = QuantizeMatrix(*dev, w, h, off, "l");
      auto q_gptq = QuantizeMatrix(*dev, w, h, gptq, "l");
      ASSERT_TRUE(q_on.ok() && q_off.ok() && q_gptq.ok());
      EXPECT_EQ(q_on->proxy_loss, std::min(q_off->proxy_loss, q_gptq->proxy_loss));
      EXPECT_EQ(q_on->rotated_proxy_loss, q_off->proxy_loss);
      auto info = InspectPacked(q_on->packed);
      ASSERT_TRUE(info.ok());
      EXPECT_EQ(info->method, q_on->stored_method);
      if (q_gptq->proxy_loss < q_off->proxy_loss) {
        ++kept_baseline;
        EXPECT_EQ(q_on->stored_method, Method::kGptq);
        EXPECT_EQ(q_on->packed, q_gptq->packed);
        EXPECT_NE(q_on->note.find("kept the unrotated gptq baseline"), std::string::npos);
      } else {
        ++kept_rotated;
        EXPECT_EQ(q_on->stored_method, m);
        EXPECT_EQ(q_on->packed, q_off->packed);
      }
      // Dequantization is what the loss says, whichever was kept.
      auto wq = DequantizeMatrix(q_on->packed);
      ASSERT_TRUE(wq.ok());
      EXPECT_EQ(RelativeProxyLoss(w.cast<double>(), wq->cast<double>(), h), q_on->proxy_loss);
    }
  }
  // Both branches were exercised, so the test above checked each of them.
  EXPECT_GT(kept_baseline, 0);
  EXPECT_GT(kept_rotated, 0);
}


// QTIP through the entry point: every trellis code round-trips bit-exactly through the packed
// bytes, and at 2 bits its loss beats quip-sharp's E8P on the same matrix (the trellis reaches
// 0.068 MSE on Gaussians against E8P's 0.091; docs/algorithms.md "Reference distortions").
TEST(QuantizeTest, QtipCodesRoundTripAndBeatE8p) {
  auto dev = MakeCpuDevice(2);
  MatrixF w = SyntheticWeight(48, 80, 5);  // neither dimension a multiple of 16
  MatrixD h = SyntheticHessian(80, 6);
  for (TrellisCode code : {TrellisCode::k1Mad, TrellisCode::k3Inst, TrellisCode::kHyb}) {
    QuantSpec spec;
    spec.method = Method::kQtip;
    spec.bits = 2;
    spec.trellis_code = code;
    spec.trellis_l = 12;
    spec.baseline_guard = false;
    auto q = QuantizeMatrix(*dev, w, h, spec, "l");
    ASSERT_TRUE(q.ok()) << q.status();
    auto again = QuantizeMatrix(*dev, w, h, spec, "l");
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(q->packed, again->packed) << TrellisCodeName(code);
    auto wq = DequantizeMatrix(q->packed);
    ASSERT_TRUE(wq.ok()) << wq.status();
    EXPECT_EQ(RelativeProxyLoss(w.cast<double>(), wq->cast<double>(), h), q->proxy_loss);
    // Codes: 3×5 tiles × 256/V steps of 2·V bits, i.e. exactly 2 bits per padded weight.
    auto info = InspectPacked(q->packed);
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->method, Method::kQtip);
    QuantSpec e8p = spec;
    e8p.method = Method::kQuipSharp;
    auto qs = QuantizeMatrix(*dev, w, h, e8p, "l");
    ASSERT_TRUE(qs.ok());
    EXPECT_LT(q->proxy_loss, qs->proxy_loss) << TrellisCodeName(code);
    // A flipped code bit is caught by the checksum.
    std::string bad = q->packed;
    bad[bad.size() / 2] ^= 0x10;
    EXPECT_EQ(DequantizeMatrix(bad).status().code(), absl::StatusCode::kDataLoss);
  }
  QuantSpec bad;
  bad.method = Method::kQtip;
  bad.trellis_l = 40;
  EXPECT_EQ(ValidateSpec(bad).code(), absl::StatusCode::kInvalidArgument);
  bad.trellis_l = 16;
  bad.bits = 8;
  EXPECT_EQ(ValidateSpec(bad).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quantd::quant
