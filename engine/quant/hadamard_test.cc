#include "engine/quant/hadamard.h"

#include <vector>

#include <Eigen/Dense>

#include "gtest/gtest.h"

namespace quantd::quant {
namespace {

TEST(HadamardTest, EveryBaseOrderIsOrthogonal) {
  for (int q : HadamardBaseOrders()) {
    absl::StatusOr<std::vector<int8_t>> h = HadamardBase(q);
    ASSERT_TRUE(h.ok()) << q << ": " << h.status();
    ASSERT_EQ(h->size(), static_cast<size_t>(q) * q);
    for (int i = 0; i < q; ++i) {
      for (int j = 0; j < q; ++j) {
        int dot = 0;
        for (int k = 0; k < q; ++k) dot += (*h)[i * q + k] * (*h)[j * q + k];
        ASSERT_EQ(dot, i == j ? q : 0) << "order " << q << " rows " << i << "," << j;
      }
    }
  }
}

TEST(HadamardTest, UnknownOrderIsInvalidArgument) {
  EXPECT_EQ(HadamardBase(44).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(HadamardTest, FactorsModelDimensions) {
  struct Case { int n, p, q; };
  for (Case c : {Case{11008, 64, 172}, Case{14336, 512, 28}, Case{13824, 128, 108},
                 Case{5120, 256, 20}, Case{768, 64, 12}, Case{288, 8, 36}, Case{4096, 4096, 1},
                 Case{40, 2, 20}}) {
    std::optional<HadamardFactors> f = FactorHadamard(c.n);
    ASSERT_TRUE(f.has_value()) << c.n;
    EXPECT_EQ(f->p, c.p) << c.n;
    EXPECT_EQ(f->q, c.q) << c.n;
  }
  EXPECT_FALSE(FactorHadamard(97).has_value());
  EXPECT_FALSE(FactorHadamard(0).has_value());
}

TEST(HadamardTest, NormalizedTransformIsOrthogonal) {
  for (int n : {1, 2, 16, 24, 40, 344, 12 * 16}) {
    absl::StatusOr<HadamardTransform> t = HadamardTransform::Make(n);
    ASSERT_TRUE(t.ok()) << n;
    Eigen::MatrixXd v(n, n);
    std::vector<double> x(n), scratch(n);
    for (int j = 0; j < n; ++j) {
      std::fill(x.begin(), x.end(), 0.0);
      x[j] = 1;
      t->Apply(x.data(), scratch.data());
      for (int i = 0; i < n; ++i) v(i, j) = x[i];
    }
    EXPECT_LT((v * v.transpose() - Eigen::MatrixXd::Identity(n, n)).cwiseAbs().maxCoeff(), 1e-12);
    // ApplyTranspose inverts Apply.
    std::vector<double> y(n), y0(n);
    for (int i = 0; i < n; ++i) y[i] = y0[i] = std::sin(i + 1.0);
    t->Apply(y.data(), scratch.data());
    t->ApplyTranspose(y.data(), scratch.data());
    for (int i = 0; i < n; ++i) EXPECT_NEAR(y[i], y0[i], 1e-12);
  }
}

TEST(HadamardTest, FwhtMatchesSylvester) {
  std::vector<double> x = {1, 0, 0, 0};
  Fwht(x.data(), 4);
  EXPECT_EQ(x, (std::vector<double>{1, 1, 1, 1}));
  x = {0, 1, 0, 0};
  Fwht(x.data(), 4);
  EXPECT_EQ(x, (std::vector<double>{1, -1, 1, -1}));
}

}  // namespace
}  // namespace quantd::quant
