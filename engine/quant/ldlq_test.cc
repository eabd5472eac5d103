#include "engine/quant/ldlq.h"

#include <memory>

#include "gtest/gtest.h"
#include "engine/quant/block_ldlq.h"
#include "engine/quant/codebook.h"
#include "engine/quant/damping.h"
#include "engine/quant/rht.h"
#include "engine/quant/rtn.h"
#include "engine/quant/synthetic.h"

namespace quantd::quant {
namespace {

// Per-row grids fixed up front (the GPTQ per-channel grid).
class RowGridRounder : public ColumnRounder {
 public:
  RowGridRounder(const MatrixD& w, int bits) {
    RtnParams p;
    p.bits = bits;
    for (int r = 0; r < w.rows(); ++r) grids_.push_back(FitMinMaxGrid(&w(r, 0), w.cols(), p));
  }
  int Round(int row, int, double x, double* xhat) override {
    const int q = grids_[row].Code(x);
    *xhat = grids_[row].Dequant(q);
    return q;
  }

 private:
  std::vector<ScalarGrid> grids_;
};

// A tiny test-only 2-dimensional codebook (4 bits/vector): the nearest point of a 4×4 grid.
class TinyGridCodebook : public VectorCodebook {
 public:
  std::string name() const override { return "tiny"; }
  int dim() const override { return 2; }
  int codes_per_vector() const override { return 1; }
  int bits_per_weight() const override { return 2; }
  void Quantize(const float* x, uint16_t* codes, float* xhat) const override {
    int c = 0;
    for (int j = 0; j < 2; ++j) {
      int q = static_cast<int>(std::nearbyint(x[j] / 0.8f + 1.5f));
      q = std::max(0, std::min(3, q));
      c |= q << (2 * j);
    }
    *codes = static_cast<uint16_t>(c);
    Decode(codes, xhat);
  }
  void Decode(const uint16_t* codes, float* xhat) const override {
    for (int j = 0; j < 2; ++j) xhat[j] = 0.8f * (((*codes >> (2 * j)) & 3) - 1.5f);
  }
};

TEST(LdlqTest, GptqFormEqualsExplicitLdlq) {
  auto dev = MakeCpuDevice(2);
  for (int n : {40, 300}) {  // 300 spans three lazy batches
    MatrixD w = GaussianMatrix(16, n, n);
    MatrixD a = GaussianMatrix(n, n, n + 1);
    MatrixD h = a * a.transpose() / n + 0.1 * MatrixD::Identity(n, n);  // random PSD + ridge
    absl::StatusOr<DampedHessian> d = DampAndFactor(*dev, h, 0.01, DampStyle::kGptq, "t");
    ASSERT_TRUE(d.ok());
    RowGridRounder r1(w, 3), r2(w, 3);
    absl::StatusOr<LdlqResult> g = LdlqGptq(*dev, w, d->h, r1);
    absl::StatusOr<LdlqResult> e = LdlqExplicit(*dev, w, d->h, r2);
    ASSERT_TRUE(g.ok() && e.ok());
    EXPECT_LT((g->what - e->what).cwiseAbs().maxCoeff(), 1e-9) << n;
    EXPECT_EQ(g->codes, e->codes) << n;
  }
}

TEST(LdlqTest, BeatsRtnOnCorrelatedActivations) {
  auto dev = MakeCpuDevice(2);
  for (int seed = 0; seed < 4; ++seed) {
    const int n = 128;
    MatrixD w = SyntheticWeight(32, n, 100 + seed).cast<double>();
    MatrixD h = SyntheticHessian(n, 200 + seed);
    for (int bits : {2, 3, 4}) {
      RtnParams p;
      p.bits = bits;
      const double rtn = RelativeProxyLoss(w, QuantizeRtn(w, p)->what, h);
      absl::StatusOr<DampedHessian> d = DampAndFactor(*dev, h, 0.01, DampStyle::kGptq, "t");
      RowGridRounder r(w, bits);
      const double ldlq = RelativeProxyLoss(w, LdlqGptq(*dev, w, d->h, r)->what, h);
      EXPECT_LT(ldlq, rtn) << "seed " << seed << " bits " << bits;
    }
  }
}

TEST(LdlqTest, RhtPlusLdlqNoWorseOnAverageAt2Bits) {
  auto dev = MakeCpuDevice(2);
  double plain_sum = 0, rht_sum = 0;
  for (int seed = 0; seed < 4; ++seed) {
    const int m = 64, n = 128;
    MatrixD w = SyntheticWeight(m, n, 300 + seed).cast<double>();
    MatrixD h = SyntheticHessian(n, 400 + seed);
    // LDLQ with the QuIP grid in the original basis.
    absl::StatusOr<DampedHessian> d = DampAndFactor(*dev, h, 0.01, DampStyle::kQuipSharp, "t");
    const double rms = std::sqrt(w.squaredNorm() / w.size());
    class Fixed : public ColumnRounder {
     public:
      explicit Fixed(ScalarGrid g) : g_(g) {}
      int Round(int, int, double x, double* xhat) override {
        int q = g_.Code(x);
        *xhat = g_.Dequant(q);
        return q;
      }
      ScalarGrid g_;
    };
    Fixed f1(QuipGrid(rms, 2));
    plain_sum += RelativeProxyLoss(w, LdlqGptq(*dev, w, d->h, f1)->what, h);
    // Same after the RHT, measured back in the original basis.
    Rht rm = *MakeRht(m, seed + 1), rn = *MakeRht(n, seed + 2);
    MatrixD wt = w, ht = h;
    RhtWeight(rm, rn, &wt);
    RhtHessian(rn, &ht);
    absl::StatusOr<DampedHessian> dt = DampAndFactor(*dev, ht, 0.01, DampStyle::kQuipSharp, "t");
    Fixed f2(QuipGrid(std::sqrt(wt.squaredNorm() / wt.size()), 2));
    MatrixD what = LdlqGptq(*dev, wt, dt->h, f2)->what;
    InverseRhtWeight(rm, rn, &what);
    rht_sum += RelativeProxyLoss(w, what, h);
  }
  EXPECT_LE(rht_sum, plain_sum) << "plain " << plain_sum / 4 << " rht " << rht_sum / 4;
}

// Block LDLQ must beat plain rounding with the same codebook on the same (transformed) matrix.
void ExpectBlockLdlqBeatsRounding(const VectorCodebook& cb, int greedy) {
  auto dev = MakeCpuDevice(2);
  const int m = 32, n = 128;
  MatrixD w = SyntheticWeight(m, n, 7).cast<double>();
  MatrixD h = SyntheticHessian(n, 8);
  Rht rm = *MakeRht(m, 1), rn = *MakeRht(n, 2);
  RhtWeight(rm, rn, &w);
  RhtHessian(rn, &h);
  w /= std::sqrt(w.squaredNorm() / w.size());
  absl::StatusOr<DampedHessian> d = DampAndFactor(*dev, h, 0.01, DampStyle::kQuipSharp, "t");
  ASSERT_TRUE(d.ok());
  absl::StatusOr<BlockLdlqResult> b = BlockLdlq(*dev, w, d->h, d->lower, cb, BlockLdlqParams{greedy});
  ASSERT_TRUE(b.ok()) << b.status();
  const double ldlq = RelativeProxyLoss(w, b->what, h);
  const double plain = RelativeProxyLoss(w, RoundToCodebook(w, cb).what, h);
  EXPECT_LT(ldlq, plain) << cb.name() << " greedy " << greedy;
  // Codes decode to the returned values.
  float xhat[8];
  cb.Decode(&b->codes[0], xhat);
  for (int j = 0; j < cb.dim(); ++j) EXPECT_FLOAT_EQ(static_cast<float>(b->what(0, j)), xhat[j]);
}

TEST(BlockLdlqTest, TinyCodebookBeatsRounding) {
  TinyGridCodebook cb;
  ExpectBlockLdlqBeatsRounding(cb, 0);
  ExpectBlockLdlqBeatsRounding(cb, 2);
}

TEST(BlockLdlqTest, E8pBeatsRounding) {
  absl::StatusOr<std::unique_ptr<VectorCodebook>> cb = MakeCodebook("e8p");
  if (!cb.ok()) GTEST_SKIP() << "e8p codebook not built: " << cb.status();
  ExpectBlockLdlqBeatsRounding(**cb, 0);
  ExpectBlockLdlqBeatsRounding(**cb, 1);
}

TEST(BlockLdlqTest, RejectsBadShapes) {
  auto dev = MakeCpuDevice(1);
  TinyGridCodebook cb;
  MatrixD w = MatrixD::Zero(2, 5), h = MatrixD::Identity(5, 5);
  EXPECT_EQ(BlockLdlq(*dev, w, h, h, cb, {}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quantd::quant
