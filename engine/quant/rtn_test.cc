#include "engine/quant/rtn.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "engine/quant/synthetic.h"

namespace quantd::quant {
namespace {

TEST(RtnTest, MinMaxGridMatchesGptqQuantizer) {
  const double w[] = {-0.5, 0.25, 1.5, 0.75};
  RtnParams p;
  p.bits = 2;
  ScalarGrid g = FitMinMaxGrid(w, 4, p);
  EXPECT_FLOAT_EQ(g.scale, 2.0f / 3.0f);  // (1.5 − (−0.5)) / 3
  EXPECT_FLOAT_EQ(g.zero, 1.0f);          // round(0.5 / 0.667)
  EXPECT_EQ(g.Code(-0.5), 0);
  EXPECT_EQ(g.Code(1.5), 3);
  // All-positive rows still include 0 in the range.
  const double pos[] = {1.0, 2.0};
  ScalarGrid gp = FitMinMaxGrid(pos, 2, p);
  EXPECT_FLOAT_EQ(gp.zero, 0.0f);
  EXPECT_FLOAT_EQ(gp.Dequant(3), 2.0f);
  // Symmetric form.
  p.form = GridForm::kSymmetric;
  ScalarGrid gs = FitMinMaxGrid(w, 4, p);
  EXPECT_FLOAT_EQ(gs.zero, 2.0f);
  EXPECT_FLOAT_EQ(gs.scale, 1.0f);
}

TEST(RtnTest, QuipGridFormula) {
  ScalarGrid g = QuipGrid(1.0, 2);  // s = 2.4
  EXPECT_EQ(g.Code(-10), 0);
  EXPECT_EQ(g.Code(10), 3);
  EXPECT_NEAR(g.Dequant(0), -2.4, 1e-6);
  EXPECT_NEAR(g.Dequant(2), 2.4 * (4.0 / 3 - 1), 1e-6);
  EXPECT_EQ(g.Code(0.5), static_cast<int>(std::nearbyint((0.5 / 2.4 + 1) / 2 * 3)));
}

TEST(RtnTest, RaggedGroups) {
  MatrixD w = GaussianMatrix(3, 172, 1);
  for (int gs : {64, 128}) {
    RtnParams p;
    p.bits = 4;
    p.group_size = gs;
    absl::StatusOr<RtnResult> r = QuantizeRtn(w, p);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(NumGroups(172, gs), gs == 64 ? 3 : 2);
    EXPECT_EQ(r->grids.size(), 3u * NumGroups(172, gs));
    // The last (short) group's grid covers exactly its own columns.
    const int last0 = (NumGroups(172, gs) - 1) * gs;
    double lo = 0, hi = 0;
    for (int c = last0; c < 172; ++c) lo = std::min(lo, w(1, c)), hi = std::max(hi, w(1, c));
    EXPECT_NEAR(r->grids[1 * NumGroups(172, gs) + NumGroups(172, gs) - 1].scale, (hi - lo) / 15, 1e-6);
    EXPECT_LT((r->what - w).cwiseAbs().maxCoeff(), 0.5);
  }
  EXPECT_EQ(NumGroups(172, 0), 1);
  EXPECT_EQ(NumGroups(100, 128), 1);
}

TEST(RtnTest, MseClipNeverWorseAndGroupsHelp) {
  MatrixD w = GaussianMatrix(16, 256, 2);
  RtnParams p;
  p.bits = 3;
  const double plain = (QuantizeRtn(w, p)->what - w).squaredNorm();
  p.mse_clip = true;
  const double clipped = (QuantizeRtn(w, p)->what - w).squaredNorm();
  p.mse_clip = false;
  p.group_size = 32;
  const double grouped = (QuantizeRtn(w, p)->what - w).squaredNorm();
  EXPECT_LT(clipped, plain);
  EXPECT_LT(grouped, plain);
  p.bits = 9;
  EXPECT_EQ(QuantizeRtn(w, p).status().code(), absl::StatusCode::kInvalidArgument);
}

// The Hessian-weighted grid choice (QuantSpec::hessian_scale): never worse than the min-max grid
// in the weighted error it minimizes (p = 1 is a candidate); follows the weights (a column with
// all the weight is fit nearly exactly by the least-squares scale); all-zero weights fall back to
// unit weights; the grid keeps its form (fp16 scale, zero 2^(b-1) for kSignedMax).
TEST(RtnTest, WeightedGridMinimizesTheWeightedError) {
  MatrixD w = GaussianMatrix(64, 32, 3);
  MatrixD h = GaussianMatrix(1, 32, 4).cwiseAbs2();
  for (GridForm form : {GridForm::kAsymmetric, GridForm::kSymmetric, GridForm::kSignedMax,
                        GridForm::kMinOffset}) {
    RtnParams p;
    p.bits = 4;
    p.form = form;
    p.fp16_scale = true;
    double total_minmax = 0, total_weighted = 0;
    for (int r = 0; r < w.rows(); ++r) {
      const ScalarGrid a = FitMinMaxGrid(&w(r, 0), 32, p);
      const ScalarGrid b = FitWeightedGrid(&w(r, 0), &h(0, 0), 32, p);
      double ea = 0, eb = 0;
      for (int j = 0; j < 32; ++j) {
        ea += h(0, j) * std::pow(a.Round(w(r, j)) - w(r, j), 2);
        eb += h(0, j) * std::pow(b.Round(w(r, j)) - w(r, j), 2);
      }
      ASSERT_LE(eb, ea * (1 + 1e-12)) << static_cast<int>(form) << " row " << r;
      EXPECT_EQ(b.scale, RoundToFp16Scale(b.scale));
      if (form == GridForm::kSignedMax || form == GridForm::kSymmetric) EXPECT_EQ(b.zero, 8.0f);
      total_minmax += ea;
      total_weighted += eb;
    }
    EXPECT_LT(total_weighted, 0.9 * total_minmax) << static_cast<int>(form);
  }
  // All the weight on column 5: the least-squares scale puts w_5 on the grid (to fp16 rounding).
  RtnParams p;
  p.bits = 4;
  p.form = GridForm::kSignedMax;
  std::vector<double> one(32, 0.0);
  one[5] = 1.0;
  for (int r = 0; r < 8; ++r) {
    const ScalarGrid g = FitWeightedGrid(&w(r, 0), one.data(), 32, p);
    EXPECT_LE(std::fabs(g.Round(w(r, 5)) - w(r, 5)), 8 * std::fabs(g.scale) * std::ldexp(1.0, -10))
        << r;
  }
  // All-zero weights: unit weights.
  std::vector<double> zero(32, 0.0), unit(32, 1.0);
  const ScalarGrid z = FitWeightedGrid(&w(0, 0), zero.data(), 32, p);
  const ScalarGrid u = FitWeightedGrid(&w(0, 0), unit.data(), 32, p);
  EXPECT_EQ(z.scale, u.scale);
  EXPECT_EQ(z.zero, u.zero);
}

}  // namespace
}  // namespace quantd::quant
