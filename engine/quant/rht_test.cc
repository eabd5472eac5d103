#include "engine/quant/rht.h"

#include "gtest/gtest.h"
#include "engine/quant/synthetic.h"

namespace quantd::quant {
namespace {

double Trace(const MatrixD& w, const MatrixD& h) { return (w * h).cwiseProduct(w).sum(); }

void CheckRoundTrip(int m, int n) {
  absl::StatusOr<Rht> rm = MakeRht(m, 11), rn = MakeRht(n, 12);
  ASSERT_TRUE(rm.ok() && rn.ok());
  MatrixD w = GaussianMatrix(m, n, 1);
  MatrixD h = SyntheticHessian(n, 2);
  MatrixD wt = w, ht = h;
  RhtWeight(*rm, *rn, &wt);
  RhtHessian(*rn, &ht);
  const double t0 = Trace(w, h), t1 = Trace(wt, ht);
  EXPECT_LT(std::abs(t1 - t0) / t0, 1e-10) << m << "x" << n;
  InverseRhtWeight(*rm, *rn, &wt);
  EXPECT_LT((wt - w).cwiseAbs().maxCoeff(), 1e-12) << m << "x" << n;
}

TEST(RhtTest, PreservesProxyTraceAndInverts) {
  CheckRoundTrip(64, 64);
  CheckRoundTrip(32, 172);
  CheckRoundTrip(172, 40);
  CheckRoundTrip(48, 97);  // fallback on the input side
  CheckRoundTrip(97, 96);  // fallback on the output side
}

TEST(RhtTest, FallbackFor97IsOrthogonalAndDeterministic) {
  absl::StatusOr<Rht> a = MakeRht(97, 5), b = MakeRht(97, 5), c = MakeRht(97, 6);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_FALSE(a->is_hadamard());
  MatrixD ea = MatrixD::Identity(97, 97), eb = ea, ec = ea;
  a->ApplyRows(&ea);
  b->ApplyRows(&eb);
  c->ApplyRows(&ec);
  EXPECT_EQ(ea, eb);
  EXPECT_NE(ea, ec);
  EXPECT_LT((ea * ea.transpose() - MatrixD::Identity(97, 97)).cwiseAbs().maxCoeff(), 1e-12);
}

TEST(RhtTest, SignsComeFromSeed) {
  absl::StatusOr<Rht> a = MakeRht(256, 1), b = MakeRht(256, 1), c = MakeRht(256, 2);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_TRUE(a->is_hadamard());
  EXPECT_EQ(a->signs(), b->signs());
  EXPECT_NE(a->signs(), c->signs());
  int plus = 0;
  for (int8_t s : a->signs()) plus += s > 0;
  EXPECT_GT(plus, 90);
  EXPECT_LT(plus, 166);
}

TEST(RhtTest, RejectsBadDimension) {
  EXPECT_EQ(MakeRht(0, 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeRht(-4, 1).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quantd::quant
