#include "engine/quant/butterfly.h"

#include <cmath>

#include "gtest/gtest.h"
#include "engine/quant/device.h"
#include "engine/quant/packed_matrix.h"
#include "engine/quant/quantize.h"
#include "engine/quant/synthetic.h"

namespace quantd::quant {
namespace {

Butterfly RandomButterfly(int n, uint64_t seed) {
  Butterfly b = *Butterfly::Make(n);
  GaussianRng rng(seed);
  for (double& a : b.mutable_angles()) a = rng.Next();
  return b;
}

TEST(ButterflyTest, AngleCountsFollowTheBlocks) {
  EXPECT_EQ(Butterfly::NumAngles(64), 32 * 6);
  // 172 = 128 + 32 + 8 + 4.
  EXPECT_EQ(Butterfly::NumAngles(172), 64 * 7 + 16 * 5 + 4 * 3 + 2 * 2);
  EXPECT_EQ(Butterfly::NumAngles(1), 0);
  EXPECT_EQ(Butterfly::Make(0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(static_cast<int64_t>(Butterfly::Make(172)->angles().size()), Butterfly::NumAngles(172));
}

TEST(ButterflyTest, StaysOrthogonalAndInverts) {
  for (int n : {1, 2, 8, 64, 172, 576}) {
    const Butterfly b = RandomButterfly(n, 7 + n);
    const MatrixD g = b.Matrix();
    EXPECT_LE((g.transpose() * g - MatrixD::Identity(n, n)).norm(), 1e-10) << n;
    MatrixD x = GaussianMatrix(5, n, 3), y = x;
    b.ApplyRows(&y);
    EXPECT_LE((y - x * g).norm(), 1e-10 * (1 + x.norm())) << n;
    b.InverseRows(&y);
    EXPECT_LE((y - x).norm(), 1e-10 * (1 + x.norm())) << n;
  }
}

TEST(ButterflyTest, OneLayerIsAGivensRotationOfTheRightPairs) {
  Butterfly b = *Butterfly::Make(4);  // layer 0: (0,1), (2,3); layer 1: (0,2), (1,3)
  b.mutable_angles() = {0.3, 0, 0, 0};
  const MatrixD g = b.Matrix();
  EXPECT_NEAR(g(0, 0), std::cos(0.3), 1e-15);
  EXPECT_NEAR(g(1, 0), -std::sin(0.3), 1e-15);
  EXPECT_NEAR(g(0, 1), std::sin(0.3), 1e-15);
  EXPECT_NEAR(g(2, 2), 1.0, 1e-15);
  b.mutable_angles() = {0, 0, 0.5, 0};
  EXPECT_NEAR(b.Matrix()(0, 2), std::sin(0.5), 1e-15);
}

// The analytic gradient of the surrogate (proxy term and uniformity term) against central
// finite differences, on a non-power-of-two size so every block and layer is exercised.
TEST(ButterflyTest, AnalyticGradientMatchesFiniteDifferences) {
  auto dev = MakeCpuDevice(1);
  for (int n : {16, 172}) {
    const Butterfly b = RandomButterfly(n, 11);
    const MatrixD w = SyntheticWeight(24, n, 5).cast<double>();
    const MatrixD h = SyntheticHessian(n, 6);
    const MatrixD delta = ButterflyRoundingError(b, w, 2);
    // The value against its definition, formed with explicit n×n products.
    const MatrixD g = b.Matrix();
    const MatrixD y = w * g;
    const double kappa = y.array().pow(4).mean() / std::pow(y.array().square().mean(), 2);
    const double naive = (delta * g.transpose() * h * g * delta.transpose()).trace() /
                         (w * h * w.transpose()).trace();
    EXPECT_NEAR(*ButterflySurrogate(*dev, b, w, h, delta, 0.0, nullptr), naive, 1e-12 * naive)
        << n;
    EXPECT_NEAR(*ButterflySurrogate(*dev, b, w, h, delta, 0.5, nullptr),
                naive + 0.5 * (kappa - 1.8) * (kappa - 1.8), 1e-12 * naive) << n;
    for (double lambda : {0.0, 0.5}) {
      std::vector<double> grad;
      ASSERT_TRUE(ButterflySurrogate(*dev, b, w, h, delta, lambda, &grad).ok());
      ASSERT_EQ(grad.size(), b.angles().size());
      double max_err = 0, max_g = 0;
      for (size_t k = 0; k < grad.size(); k += std::max<size_t>(1, grad.size() / 12)) {
        Butterfly p = b, m = b;
        const double eps = 1e-5;
        p.mutable_angles()[k] += eps;
        m.mutable_angles()[k] -= eps;
        const double fd = (*ButterflySurrogate(*dev, p, w, h, delta, lambda, nullptr) -
                           *ButterflySurrogate(*dev, m, w, h, delta, lambda, nullptr)) / (2 * eps);
        max_err = std::max(max_err, std::fabs(fd - grad[k]));
        max_g = std::max(max_g, std::fabs(grad[k]));
      }
      EXPECT_GT(max_g, 0) << n;
      EXPECT_LE(max_err, 1e-6 * std::max(1.0, max_g)) << "n " << n << " lambda " << lambda;
    }
  }
}

TEST(ButterflyTest, LearningKeepsTheBestScoredCandidate) {
  auto dev = MakeCpuDevice(1);
  const int n = 64;
  const MatrixD w = SyntheticWeight(32, n, 1).cast<double>();
  const MatrixD h = SyntheticHessian(n, 2);
  ButterflyParams p;
  p.steps = 40;
  int calls = 0;
  // A score that prefers the identity: the search must return it unchanged.
  auto b = LearnButterfly(*dev, w, h, p, [&](const Butterfly& c) {
    ++calls;
    double s = 0;
    for (double a : c.angles()) s += a * a;
    return s;
  });
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(calls, 1 + 40 / p.check_every);
  for (double a : b->angles()) EXPECT_EQ(a, 0.0);
  // Learned angles are deterministic and orthogonal.
  auto surrogate = [&](const Butterfly& c) {
    return *ButterflySurrogate(*dev, c, w, h, ButterflyRoundingError(c, w, 2), 0, nullptr);
  };
  auto l1 = LearnButterfly(*dev, w, h, p, surrogate);
  auto l2 = LearnButterfly(*dev, w, h, p, surrogate);
  ASSERT_TRUE(l1.ok() && l2.ok());
  EXPECT_EQ(l1->angles(), l2->angles());
  const MatrixD g = l1->Matrix();
  EXPECT_LE((g.transpose() * g - MatrixD::Identity(n, n)).norm(), 1e-5);
  EXPECT_LT(surrogate(*l1), surrogate(*Butterfly::Make(n)));
}

// Method butterfly end to end: packed round trip, determinism, the angles in the header, and a
// proxy loss no worse than quip's (G = I is one of the candidates, and quip is that candidate).
TEST(ButterflyTest, MethodRoundTripsAndBeatsQuip) {
  auto dev = MakeCpuDevice(0);
  double sum_b = 0, sum_q = 0;
  for (int n : {64, 172}) {
    const MatrixF w = SyntheticWeight(16, n, 3 + n);
    const MatrixD h = SyntheticHessian(n, 4 + n);
    QuantSpec s;
    s.method = Method::kButterfly;
    s.bits = 2;
    s.seed = 9;
    s.baseline_guard = false;
    auto q = QuantizeMatrix(*dev, w, h, s, "test");
    ASSERT_TRUE(q.ok()) << q.status();
    if (n == 64) {
      auto again = QuantizeMatrix(*dev, w, h, s, "test");
      ASSERT_TRUE(again.ok());
      EXPECT_EQ(q->packed, again->packed);
    }
    auto c = DecodePacked(q->packed);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(static_cast<int64_t>(c->angles.size()), Butterfly::NumAngles(n));
    auto info = InspectPacked(q->packed);
    EXPECT_EQ(info->method, Method::kButterfly);
    s.method = Method::kQuip;
    auto quip = QuantizeMatrix(*dev, w, h, s, "test");
    ASSERT_TRUE(quip.ok());
    EXPECT_LE(q->proxy_loss, quip->proxy_loss * (1 + 1e-9)) << n;
    sum_b += q->proxy_loss;
    sum_q += quip->proxy_loss;
    std::string bad = q->packed;
    bad[bad.size() / 2] ^= 1;
    EXPECT_EQ(DequantizeMatrix(bad).status().code(), absl::StatusCode::kDataLoss);
  }
  EXPECT_LT(sum_b, sum_q);
}

TEST(ButterflyTest, QuarotIsGptqInTheGivenBasis) {
  auto dev = MakeCpuDevice(0);
  const MatrixF w = SyntheticWeight(32, 64, 1);
  const MatrixD h = SyntheticHessian(64, 2);
  QuantSpec s;
  s.method = Method::kQuarot;
  s.bits = 4;
  auto q = QuantizeMatrix(*dev, w, h, s, "test");
  ASSERT_TRUE(q.ok()) << q.status();
  s.method = Method::kGptq;
  auto g = QuantizeMatrix(*dev, w, h, s, "test");
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(q->packed, g->packed);
  EXPECT_EQ(q->stored_method, Method::kGptq);
  s.method = Method::kQuarot;
  s.bits = 8;
  EXPECT_EQ(ValidateSpec(s).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quantd::quant
