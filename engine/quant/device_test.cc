#include "engine/quant/device.h"

#include "gtest/gtest.h"
#include "engine/quant/synthetic.h"

namespace quantd::quant {
namespace {

TEST(CpuDeviceTest, GramGemmCholeskySolveHadamard) {
  auto dev = MakeCpuDevice(2);
  EXPECT_NE(dev->name().find("cpu"), std::string::npos);
  MatrixF x = GaussianMatrix(70, 16, 1).cast<float>();
  MatrixD h = MatrixD::Zero(16, 16);
  ASSERT_TRUE(dev->AccumulateGram(x, &h).ok());
  MatrixD xd = x.cast<double>();
  EXPECT_LT((h - xd.transpose() * xd).cwiseAbs().maxCoeff(), 1e-4);  // fp32 blocks (hessian_test: bound)
  MatrixD wrong(3, 3);
  EXPECT_EQ(dev->AccumulateGram(x, &wrong).code(), absl::StatusCode::kInvalidArgument);

  MatrixF c;
  ASSERT_TRUE(dev->Gemm(MatrixF(x.transpose()), x, &c).ok());
  EXPECT_LT((c.cast<double>() - xd.transpose() * xd).cwiseAbs().maxCoeff(), 1e-3);
  MatrixD cd;
  EXPECT_EQ(dev->Gemm(xd, xd, &cd).code(), absl::StatusCode::kInvalidArgument);

  MatrixD l;
  ASSERT_TRUE(dev->Cholesky(h, &l).ok());
  EXPECT_LT((l * l.transpose() - h).cwiseAbs().maxCoeff(), 1e-9);
  EXPECT_EQ(dev->Cholesky(MatrixD(-h), &l).code(), absl::StatusCode::kFailedPrecondition);

  ASSERT_TRUE(dev->Cholesky(h, &l).ok());
  MatrixD b = GaussianMatrix(16, 3, 2), b0 = b;
  ASSERT_TRUE(dev->SolveLower(l, false, &b).ok());
  EXPECT_LT((l * b - b0).cwiseAbs().maxCoeff(), 1e-9);
  b = b0;
  ASSERT_TRUE(dev->SolveLower(l, true, &b).ok());
  EXPECT_LT((l.transpose() * b - b0).cwiseAbs().maxCoeff(), 1e-9);

  MatrixD rows = GaussianMatrix(3, 32, 3), r0 = rows;
  ASSERT_TRUE(dev->HadamardRows(&rows).ok());
  EXPECT_NEAR(rows.squaredNorm(), r0.squaredNorm(), 1e-9);
  ASSERT_TRUE(dev->HadamardRows(&rows).ok());  // normalized Sylvester H is an involution
  EXPECT_LT((rows - r0).cwiseAbs().maxCoeff(), 1e-12);
  MatrixD odd(2, 12);
  EXPECT_EQ(dev->HadamardRows(&odd).code(), absl::StatusCode::kInvalidArgument);

  MemoryInfo mem = dev->GetMemoryInfo();
  EXPECT_GT(mem.total_bytes, 0);
  EXPECT_GE(mem.total_bytes, mem.available_bytes);
}

}  // namespace
}  // namespace quantd::quant
