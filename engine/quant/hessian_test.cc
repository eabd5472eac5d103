#include "engine/quant/hessian.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"
#include "engine/quant/synthetic.h"

namespace quantd::quant {
namespace {

// Σ_t |x_ti||x_tj| and the naive fp64 Σ_t x_ti x_tj, element by element.
void NaiveSums(const MatrixF& x, MatrixD* sum, MatrixD* abs_sum) {
  const int n = static_cast<int>(x.cols());
  *sum = MatrixD::Zero(n, n);
  *abs_sum = MatrixD::Zero(n, n);
  for (int k = 0; k < x.rows(); ++k) {
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < n; ++j) {
        const double p = double(x(k, i)) * double(x(k, j));
        (*sum)(i, j) += p;
        (*abs_sum)(i, j) += std::abs(p);
      }
    }
  }
}

// The documented bound (device.cc, docs/formats/hessian.md): fp32 products over blocks of at most
// B = 1024 tokens summed in fp64, so |error_ij| ≤ γ_B·Σ|x_ti||x_tj| (+ fp64 rounding).
double GammaBound() {
  const double u = std::ldexp(1.0, -24), b = 1024;
  return b * u / (1 - b * u) + 1e-12;
}

TEST(HessianTest, AccumulationWithinFp32BlockBoundOfNaiveFp64Sum) {
  auto dev = MakeCpuDevice(2);
  const int n = 48, t = 3000;  // three 1024-token blocks
  MatrixF x = GaussianMatrix(t, n, 3).cast<float>();
  // An outlier channel and a mean offset, as LLM activations have: the bound is per element.
  x.col(5) *= 300.0f;
  x.col(7).array() += 4.0f;
  HessianAccumulator acc(n);
  ASSERT_TRUE(acc.Add(*dev, x.topRows(1000)).ok());
  ASSERT_TRUE(acc.Add(*dev, x.bottomRows(2000)).ok());
  MatrixD naive, abs_sum;
  NaiveSums(x, &naive, &abs_sum);
  EXPECT_EQ(acc.tokens(), t);
  const MatrixD err = (acc.sum() - naive).cwiseAbs();
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) {
      ASSERT_LE(err(i, j), GammaBound() * abs_sum(i, j)) << "element " << i << "," << j;
    }
  }
  // Typical error is far below the worst case (≈ √B·u relative on the diagonal).
  for (int i = 0; i < n; ++i) EXPECT_LT(err(i, i), 1e-5 * naive(i, i)) << i;
  EXPECT_EQ(acc.sum(), acc.sum().transpose()) << "accumulated Hessian is not exactly symmetric";
  EXPECT_LT((acc.Mean() - acc.sum() / t).cwiseAbs().maxCoeff(), 1e-15 * naive.cwiseAbs().maxCoeff());
}

TEST(HessianTest, MergeOfShardsIsOrderFixedAndWithinBound) {
  auto dev = MakeCpuDevice(1);
  const int n = 32;
  MatrixF x = GaussianMatrix(900, n, 4).cast<float>();
  HessianAccumulator one(n), merged(n), again(n);
  ASSERT_TRUE(one.Add(*dev, x).ok());
  for (int s = 0; s < 3; ++s) {
    HessianAccumulator shard(n);
    ASSERT_TRUE(shard.Add(*dev, x.middleRows(300 * s, 300)).ok());
    ASSERT_TRUE(merged.Merge(shard).ok());
    HessianAccumulator shard2(n);
    ASSERT_TRUE(shard2.Add(*dev, x.middleRows(300 * s, 300)).ok());
    ASSERT_TRUE(again.Merge(shard2).ok());
  }
  EXPECT_EQ(merged.tokens(), 900);
  // The same shards merged in the same order give the same bits.
  EXPECT_EQ(merged.sum(), again.sum());
  MatrixD naive, abs_sum;
  NaiveSums(x, &naive, &abs_sum);
  EXPECT_TRUE(((merged.sum() - naive).cwiseAbs().array() <= GammaBound() * abs_sum.array()).all());
  EXPECT_TRUE(((one.sum() - naive).cwiseAbs().array() <= GammaBound() * abs_sum.array()).all());
  HessianAccumulator other(n + 1);
  EXPECT_EQ(merged.Merge(other).code(), absl::StatusCode::kInvalidArgument);
}

TEST(HessianTest, RejectsBadInput) {
  auto dev = MakeCpuDevice(1);
  HessianAccumulator acc(8);
  MatrixF x = MatrixF::Ones(4, 7);
  EXPECT_EQ(acc.Add(*dev, x).code(), absl::StatusCode::kInvalidArgument);
  MatrixF y = MatrixF::Ones(4, 8);
  y(2, 3) = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(acc.Add(*dev, y).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(acc.tokens(), 0);
}

TEST(HessianTest, SerializeParseRoundTripAndCorruption) {
  auto dev = MakeCpuDevice(1);
  HessianAccumulator acc(20);
  ASSERT_TRUE(acc.Add(*dev, GaussianMatrix(50, 20, 5).cast<float>()).ok());
  const std::string bytes = acc.Serialize();
  absl::StatusOr<HessianAccumulator> back = HessianAccumulator::Parse(bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->n(), 20);
  EXPECT_EQ(back->tokens(), 50);
  EXPECT_EQ(back->sum(), acc.sum());

  std::string flipped = bytes;
  flipped[100] ^= 0x10;
  EXPECT_EQ(HessianAccumulator::Parse(flipped).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(HessianAccumulator::Parse(bytes.substr(0, bytes.size() - 9)).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(HessianAccumulator::Parse(bytes.substr(0, 20)).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(HessianAccumulator::Parse("garbage!garbage!garbage!garbage!").status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quantd::quant
