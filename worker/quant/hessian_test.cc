#include "worker/quant/hessian.h"

#include <limits>

#include "gtest/gtest.h"
#include "worker/quant/synthetic.h"

namespace quantd::quant {
namespace {

TEST(HessianTest, AccumulationEqualsNaiveSum) {
  auto dev = MakeCpuDevice(2);
  const int n = 48, t = 3000;  // > one 1024-token block
  MatrixF x = GaussianMatrix(t, n, 3).cast<float>();
  HessianAccumulator acc(n);
  ASSERT_TRUE(acc.Add(*dev, x.topRows(1000)).ok());
  ASSERT_TRUE(acc.Add(*dev, x.bottomRows(2000)).ok());
  MatrixD naive = MatrixD::Zero(n, n);
  for (int k = 0; k < t; ++k) {
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < n; ++j) naive(i, j) += double(x(k, i)) * double(x(k, j));
    }
  }
  EXPECT_EQ(acc.tokens(), t);
  EXPECT_LT((acc.sum() - naive).cwiseAbs().maxCoeff(), 1e-9 * naive.cwiseAbs().maxCoeff());
  EXPECT_LT((acc.Mean() - naive / t).cwiseAbs().maxCoeff(), 1e-12 * naive.cwiseAbs().maxCoeff());
}

TEST(HessianTest, MergeOfShardsEqualsOneShot) {
  auto dev = MakeCpuDevice(1);
  const int n = 32;
  MatrixF x = GaussianMatrix(900, n, 4).cast<float>();
  HessianAccumulator one(n), merged(n);
  ASSERT_TRUE(one.Add(*dev, x).ok());
  for (int s = 0; s < 3; ++s) {
    HessianAccumulator shard(n);
    ASSERT_TRUE(shard.Add(*dev, x.middleRows(300 * s, 300)).ok());
    ASSERT_TRUE(merged.Merge(shard).ok());
  }
  EXPECT_EQ(merged.tokens(), 900);
  EXPECT_LT((merged.sum() - one.sum()).cwiseAbs().maxCoeff(), 1e-10 * one.sum().maxCoeff());
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
