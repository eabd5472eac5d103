#include "engine/model/hessian_shard.h"

#include <cstring>
#include <random>

#include "gtest/gtest.h"

namespace quantd::model {
namespace {

TEST(HessianShardTest, PacksLapackUpperOrderAndRoundTripsBitExact) {
  std::mt19937_64 rng(7);
  std::normal_distribution<double> nd;
  for (int n : {0, 1, 2, 5, 64, 257}) {
    MatrixD x(3 * n + 1, n);
    for (int64_t i = 0; i < x.size(); ++i) x.data()[i] = nd(rng);
    MatrixD h = x.transpose() * x;
    h.triangularView<Eigen::StrictlyLower>() = h.transpose();  // both triangles equal
    const std::vector<double> p = PackUpper(h);
    ASSERT_EQ(static_cast<int64_t>(p.size()), PackedUpperSize(n));
    // LAPACK 'U' packed storage: AP(i + j(j+1)/2) = A(i, j) for i <= j.
    for (int j = 0; j < n; ++j) {
      for (int i = 0; i <= j; ++i) ASSERT_EQ(p[i + j * (j + 1) / 2], h(i, j));
    }
    auto back = UnpackUpper(p, n);
    ASSERT_TRUE(back.ok()) << back.status();
    ASSERT_EQ(back->rows(), n);
    EXPECT_EQ(0, std::memcmp(back->data(), h.data(), sizeof(double) * h.size()));
    auto dim = PackedUpperDim(static_cast<int64_t>(p.size()));
    ASSERT_TRUE(dim.ok());
    EXPECT_EQ(*dim, n);
  }
}

TEST(HessianShardTest, RejectsSizesThatAreNotATriangle) {
  std::vector<double> p(5);
  EXPECT_EQ(UnpackUpper(p, 2).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(UnpackUpper(p, -1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PackedUpperDim(5).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PackedUpperDim(-3).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*PackedUpperDim(6), 3);
}

}  // namespace
}  // namespace quantd::model
