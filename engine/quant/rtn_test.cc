#include "engine/quant/rtn.h"

#include <cmath>

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

}  // namespace
}  // namespace quantd::quant
