#include "engine/quant/codebook.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "engine/quant/e8p.h"
#include "engine/quant/rvq.h"
#include "engine/quant/scalar_codebook.h"

namespace quantd::quant {
namespace {

std::unique_ptr<VectorCodebook> Make(const std::string& name, double scale = 0.0) {
  auto cb = MakeCodebook(name, scale);
  EXPECT_TRUE(cb.ok()) << cb.status();
  return cb.ok() ? std::move(cb).value() : nullptr;
}

// 10^6 i.i.d. N(0,1) samples, shared by the MSE tests.
const std::vector<float>& GaussianSamples() {
  static const std::vector<float>* const samples = [] {
    auto* v = new std::vector<float>(1000000);
    std::mt19937_64 rng(42);
    std::normal_distribution<float> gauss;
    for (float& e : *v) e = gauss(rng);
    return v;
  }();
  return *samples;
}

double Mse(const VectorCodebook& cb, const std::vector<float>& x) {
  const int g = cb.dim();
  std::vector<uint16_t> codes(cb.codes_per_vector());
  std::vector<float> xhat(g);
  double err = 0;
  for (size_t k = 0; k + g <= x.size(); k += g) {
    cb.Quantize(&x[k], codes.data(), xhat.data());
    for (int i = 0; i < g; ++i) err += (double(x[k + i]) - xhat[i]) * (double(x[k + i]) - xhat[i]);
  }
  return err / static_cast<double>(x.size() / g * g);
}

TEST(MakeCodebookTest, KnownNamesAndShapes) {
  struct Row {
    const char* name;
    int dim, codes, bits;
  };
  for (const Row& r : {Row{"e8p", 8, 1, 2}, Row{"rvq3", 8, 2, 3}, Row{"rvq4", 8, 2, 4},
                       Row{"scalar2", 1, 1, 2}}) {
    auto cb = Make(r.name);
    ASSERT_NE(cb, nullptr);
    EXPECT_EQ(cb->name(), r.name);
    EXPECT_EQ(cb->dim(), r.dim);
    EXPECT_EQ(cb->codes_per_vector(), r.codes);
    EXPECT_EQ(cb->bits_per_weight(), r.bits);
  }
}

TEST(MakeCodebookTest, DefaultsAndExplicitScale) {
  auto e8p = Make("e8p");
  EXPECT_EQ(dynamic_cast<E8PCodebook&>(*e8p).scale(), kE8PDefaultScale);
  auto e8p2 = Make("e8p", 0.9);
  EXPECT_EQ(dynamic_cast<E8PCodebook&>(*e8p2).scale(), 0.9);
  auto rvq4 = Make("rvq4");
  EXPECT_EQ(dynamic_cast<RvqCodebook&>(*rvq4).scale(), kRvq4DefaultScale);
  EXPECT_EQ(dynamic_cast<RvqCodebook&>(*rvq4).residual_scale(), kRvq4ResidualScale);
  auto rvq3 = Make("rvq3");
  EXPECT_EQ(dynamic_cast<RvqCodebook&>(*rvq3).scale(), kRvq3DefaultScale);
  EXPECT_EQ(dynamic_cast<RvqCodebook&>(*rvq3).residual_scale(), kRvq3ResidualScale);
}

TEST(MakeCodebookTest, RejectsBadArguments) {
  EXPECT_EQ(MakeCodebook("e8p12").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeCodebook("").status().code(), absl::StatusCode::kInvalidArgument);
  for (double s : {-1.0, std::numeric_limits<double>::quiet_NaN(),
                   std::numeric_limits<double>::infinity(), 1e-300, 1e300}) {
    EXPECT_EQ(MakeCodebook("e8p", s).status().code(), absl::StatusCode::kInvalidArgument) << s;
  }
}

TEST(CodebookTest, CodesInRangeAndDecodeMatchesQuantizeBitExactly) {
  std::mt19937_64 rng(3);
  std::normal_distribution<float> gauss;
  for (const char* name : {"e8p", "rvq3", "rvq4", "scalar2"}) {
    for (double scale : {0.0, 0.9, 1.1}) {
      auto cb = Make(name, scale);
      ASSERT_NE(cb, nullptr);
      const int g = cb->dim();
      std::vector<float> x(g), xhat(g), again(g);
      std::vector<uint16_t> codes(cb->codes_per_vector());
      for (int k = 0; k < 4000; ++k) {
        const float s = (k % 4 == 0) ? 4.0f : 1.0f;
        for (float& e : x) e = s * gauss(rng);
        cb->Quantize(x.data(), codes.data(), xhat.data());
        if (std::string(name) == "scalar2") {
          ASSERT_LT(codes[0], 4);
        }
        if (std::string(name) == "rvq3") {
          ASSERT_LT(codes[1], E8OneBitTable::kSize);
        }
        cb->Decode(codes.data(), again.data());
        ASSERT_EQ(std::memcmp(xhat.data(), again.data(), g * sizeof(float)), 0) << name;
        for (float e : xhat) ASSERT_TRUE(std::isfinite(e));
      }
    }
  }
}

TEST(CodebookTest, NonFiniteInputGivesValidCodes) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (const char* name : {"e8p", "rvq3", "rvq4", "scalar2"}) {
    auto cb = Make(name);
    ASSERT_NE(cb, nullptr);
    for (float bad : {nan, inf, -inf}) {
      std::vector<float> x(cb->dim(), 0.5f), xhat(cb->dim());
      x[0] = bad;
      std::vector<uint16_t> codes(cb->codes_per_vector());
      cb->Quantize(x.data(), codes.data(), xhat.data());
      for (float e : xhat) EXPECT_TRUE(std::isfinite(e)) << name << " " << bad;
    }
  }
}

TEST(E8OneBitTableTest, Has256DistinctE8PointsOfNormAtMost4) {
  const E8OneBitTable& t = E8OneBitTable::Get();
  int n_le2 = 0, n4 = 0;
  for (int j = 0; j < E8OneBitTable::kSize; ++j) {
    const float* p = t.point(j);
    double n2 = 0, sum = 0;
    bool integer = std::round(p[0]) == p[0];
    for (int i = 0; i < 8; ++i) {
      n2 += p[i] * p[i];
      sum += p[i];
      EXPECT_EQ(std::round(p[i]) == p[i], integer) << "row " << j;  // Z^8 or Z^8 + 1/2
    }
    EXPECT_EQ(std::fmod(sum, 2.0), 0.0) << "row " << j;
    n_le2 += n2 <= 2;
    n4 += n2 == 4;
    for (int k = 0; k < j; ++k) {
      EXPECT_NE(std::memcmp(p, t.point(k), 8 * sizeof(float)), 0) << j << " == " << k;
    }
    EXPECT_EQ(t.Encode(p), j);
  }
  EXPECT_EQ(n_le2, 241);
  EXPECT_EQ(n4, 15);
  // Rows 0..112 (integer) and 113..240 (half-integer) are each in ascending lexicographic order.
  auto less = [&](int a, int b) {
    return std::lexicographical_compare(t.point(a), t.point(a) + 8, t.point(b), t.point(b) + 8);
  };
  for (int j = 1; j < 241; ++j) {
    if (j != 113) {
      EXPECT_TRUE(less(j - 1, j)) << "row " << j;
    }
  }
  EXPECT_EQ(std::round(t.point(112)[0]), t.point(112)[0]);
  EXPECT_EQ(t.point(113)[0], -0.5f);
  EXPECT_EQ(t.point(241)[0], 2.0f);
  EXPECT_EQ(t.point(255)[6], -2.0f);
}

TEST(CodebookMseTest, E8PAtBestScale) {
  const auto& x = GaussianSamples();
  double best = 1e9, best_scale = 0;
  for (double s = 0.99; s < 1.095; s += 0.01) {
    const double mse = Mse(*Make("e8p", s), x);
    if (mse < best) {
      best = mse;
      best_scale = s;
    }
  }
  const double at_default = Mse(*Make("e8p"), x);
  std::printf("e8p: MSE %.5f at best scale %.2f; %.5f at default %.2f\n", best, best_scale,
              at_default, kE8PDefaultScale);
  EXPECT_LE(best, 0.0925);
  EXPECT_GE(best, 0.088);
  EXPECT_LE(at_default, 0.0930);
}

TEST(CodebookMseTest, Scalar2IsLloydMax) {
  const double mse = Mse(*Make("scalar2"), GaussianSamples());
  std::printf("scalar2: MSE %.5f\n", mse);
  EXPECT_NEAR(mse, 0.1175, 0.002);
}

TEST(CodebookMseTest, RvqOrdering) {
  const auto& x = GaussianSamples();
  const double rvq4 = Mse(*Make("rvq4"), x);
  const double rvq3 = Mse(*Make("rvq3"), x);
  const double e8p = Mse(*Make("e8p"), x);
  std::printf("rvq4: MSE %.5f; rvq3: MSE %.5f; e8p: %.5f (default scales)\n", rvq4, rvq3, e8p);
  EXPECT_LE(rvq4, 0.0105);
  EXPECT_GT(rvq3, rvq4);
  EXPECT_LT(rvq3, e8p);
}

}  // namespace
}  // namespace quantd::quant
