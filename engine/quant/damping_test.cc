#include "engine/quant/damping.h"

#include <limits>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "engine/quant/synthetic.h"

namespace quantd::quant {
namespace {

using ::testing::HasSubstr;

TEST(DampingTest, NonFiniteInputsNameTheLayer) {
  MatrixF w = MatrixF::Ones(4, 8);
  MatrixD h = MatrixD::Identity(8, 8);
  EXPECT_TRUE(CheckFiniteInputs(w, h, "l0.q_proj").ok());
  w(1, 1) = std::numeric_limits<float>::infinity();
  absl::Status s = CheckFiniteInputs(w, h, "l0.q_proj");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("l0.q_proj"));
  w(1, 1) = 0;
  h(2, 3) = std::numeric_limits<double>::quiet_NaN();
  s = CheckFiniteInputs(w, h, "l1.up_proj");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("l1.up_proj"));
  EXPECT_EQ(CheckFiniteInputs(w, MatrixD::Identity(7, 7), "x").code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(DampingTest, DeadColumns) {
  MatrixD h = SyntheticHessian(16, 1);
  h.row(3).setZero();
  h.col(3).setZero();
  MatrixD w = MatrixD::Ones(4, 16);
  EXPECT_EQ(FixDeadColumns(&h, &w), 1);
  EXPECT_EQ(h(3, 3), 1.0);
  EXPECT_EQ(w.col(3).cwiseAbs().sum(), 0.0);
  EXPECT_EQ(w.col(4).sum(), 4.0);
}

TEST(DampingTest, BothStylesFactor) {
  auto dev = MakeCpuDevice(1);
  MatrixD h = SyntheticHessian(32, 2);
  for (DampStyle style : {DampStyle::kQuipSharp, DampStyle::kGptq}) {
    absl::StatusOr<DampedHessian> d = DampAndFactor(*dev, h, 0.01, style, "layer");
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_TRUE(d->note.empty());
    EXPECT_LT((d->lower * d->lower.transpose() - d->h).cwiseAbs().maxCoeff(), 1e-9 * d->h.maxCoeff());
  }
  absl::StatusOr<DampedHessian> q = DampAndFactor(*dev, h, 0.01, DampStyle::kQuipSharp, "l");
  EXPECT_NEAR(q->h.diagonal().mean(), 1.01, 1e-12);
}

TEST(DampingTest, SlightlyIndefiniteIsRetriedWithNote) {
  auto dev = MakeCpuDevice(1);
  MatrixD h = SyntheticHessian(32, 3);
  h.diagonal().array() -= 0.05 * h.diagonal().mean();  // a few negative eigenvalues
  absl::StatusOr<DampedHessian> d = DampAndFactor(*dev, h, 0.01, DampStyle::kGptq, "l2.down_proj");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_GT(d->damp, 0.01);
  EXPECT_THAT(d->note, HasSubstr("damping raised"));
  EXPECT_THAT(d->note, HasSubstr("l2.down_proj"));
}

TEST(DampingTest, StronglyNegativeFailsNamingLayer) {
  auto dev = MakeCpuDevice(1);
  MatrixD h = -MatrixD::Identity(8, 8);
  absl::StatusOr<DampedHessian> d = DampAndFactor(*dev, h, 0.01, DampStyle::kQuipSharp, "l3.o_proj");
  EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(d.status().message(), HasSubstr("l3.o_proj"));
  MatrixD g = MatrixD::Identity(8, 8);
  g(0, 0) = -50;  // positive mean diagonal, hopeless eigenvalue
  d = DampAndFactor(*dev, g, 0.01, DampStyle::kGptq, "l4.k_proj");
  EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(d.status().message(), HasSubstr("l4.k_proj"));
}

}  // namespace
}  // namespace quantd::quant
