#include "engine/quant/trellis.h"

#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "engine/quant/synthetic.h"

namespace quantd::quant {
namespace {

std::vector<float> Gaussian(int n, uint64_t seed, double scale = 1.0) {
  GaussianRng rng(seed);
  std::vector<float> x(n);
  for (float& v : x) v = static_cast<float>(rng.Next() * scale);
  return x;
}

Trellis Make(TrellisCode code, int L, int k) {
  TrellisConfig c;
  c.code = code;
  c.L = L;
  c.k = k;
  c.V = code == TrellisCode::kHyb ? 2 : 1;
  absl::StatusOr<Trellis> t = Trellis::Make(c);
  EXPECT_TRUE(t.ok()) << t.status();
  return *std::move(t);
}

TEST(TrellisTest, ComputedCodesMatchTheirDefinitions) {
  // 1MAD of state 0: x = 76625530 = 0x0491367A → bytes 4 + 145 + 54 + 122 = 325.
  Trellis mad = Make(TrellisCode::k1Mad, 16, 2);
  EXPECT_FLOAT_EQ(mad.StateValues(0)[0], static_cast<float>((325 - 510) / 147.800537109375));
  // 3INST of state 0: x = 64248484 = 0x03D45AA4; halves 0x5AA4 and 0x03D4, masked with 0x8FFF and
  // xored with 0x3B60: fp16 0x31C4 = 0.125·(1 + 452/1024) and 0x38B4 = 0.5·(1 + 180/1024).
  Trellis inst = Make(TrellisCode::k3Inst, 16, 2);
  EXPECT_DOUBLE_EQ(inst.StateValues(0)[0], 0.125 * (1 + 452.0 / 1024) + 0.5 * (1 + 180.0 / 1024));
  // Over all states: 1MAD is the sum of four uniform bytes normalized to unit variance; 3INST is
  // centred but wider (variance ≈ 1.55: its best input scale is ≈ 1.2, docs/benchmarks.md).
  auto moments = [](const Trellis& t) {
    double s = 0, s2 = 0;
    for (uint32_t st = 0; st < (1u << 16); ++st) {
      s += t.StateValues(st)[0];
      s2 += t.StateValues(st)[0] * t.StateValues(st)[0];
    }
    return std::make_pair(s / 65536, s2 / 65536);
  };
  EXPECT_NEAR(moments(mad).first, 0.0, 0.02);
  EXPECT_NEAR(moments(mad).second, 1.0, 0.02);
  EXPECT_NEAR(moments(inst).first, 0.0, 0.02);
  EXPECT_GT(moments(inst).second, 1.3);
  EXPECT_LT(moments(inst).second, 1.8);
  // HYB: the table is 512 × 2, second components folded to ≥ 0, and deterministic.
  const std::vector<float>& table = DefaultHybTable();
  ASSERT_EQ(table.size(), 1024u);
  for (int i = 0; i < 512; ++i) EXPECT_GE(table[2 * i + 1], 0.0f);
  Trellis hyb = Make(TrellisCode::kHyb, 16, 2);
  const uint32_t s = 12345, x = s * s + s;
  const uint32_t idx = (x >> 6) & 511;
  EXPECT_EQ(hyb.StateValues(s)[0], table[2 * idx]);
  EXPECT_EQ(hyb.StateValues(s)[1], (x >> 15) & 1 ? -table[2 * idx + 1] : table[2 * idx + 1]);
}

// The free Viterbi is the exact optimum over all bit streams: check against brute force.
TEST(TrellisTest, FreeViterbiIsOptimalAgainstBruteForce) {
  Trellis t = Make(TrellisCode::k1Mad, 8, 2);
  const int steps = 6;  // 8 + 2·5 = 18 free bits: 262144 streams
  std::vector<float> x = Gaussian(steps, 7);
  std::vector<uint32_t> states(steps);
  std::vector<float> xhat(steps);
  const double viterbi = t.EncodeFree(x.data(), steps, states.data(), xhat.data());
  double brute = std::numeric_limits<double>::infinity();
  for (uint32_t stream = 0; stream < (1u << 18); ++stream) {
    uint32_t s = stream >> 10;  // first state: top 8 bits
    double err = 0;
    for (int i = 0; i < steps; ++i) {
      if (i > 0) s = ((s << 2) | ((stream >> (2 * (steps - 1 - i))) & 3)) & 0xFF;
      const double d = x[i] - t.StateValues(s)[0];
      err += d * d;
    }
    brute = std::min(brute, err);
  }
  EXPECT_NEAR(viterbi, brute, 1e-9 * brute);
}

TEST(TrellisTest, TailBitingDecodesBitExactlyAndIsCyclic) {
  for (TrellisCode code : {TrellisCode::k1Mad, TrellisCode::k3Inst, TrellisCode::kHyb}) {
    for (int k : {1, 2, 3, 4}) {
      Trellis t = Make(code, 12, k);
      const int T = 256, steps = T / t.config().V, b = t.bits_per_step();
      std::vector<float> x = Gaussian(T, 100 + k);
      std::vector<uint16_t> codes(steps);
      std::vector<float> xhat(T), decoded(T);
      const double err = t.EncodeTailBiting(x.data(), T, codes.data(), xhat.data());
      for (uint16_t c : codes) ASSERT_LT(c, 1u << b);  // exactly b bits per step: k·T per tile
      std::vector<uint32_t> states(steps);
      t.DecodeTailBiting(codes.data(), T, decoded.data(), states.data());
      ASSERT_EQ(decoded, xhat) << TrellisCodeName(code) << " k=" << k;
      // The tile starts and ends on the same L−b overlap bits.
      EXPECT_EQ(states[0] >> b, states[steps - 1] & ((1u << (12 - b)) - 1));
      double check = 0;
      for (int i = 0; i < T; ++i) check += (double(x[i]) - decoded[i]) * (double(x[i]) - decoded[i]);
      EXPECT_NEAR(err, check, 1e-9 * check);
      // Tail-biting costs at most a little over the unconstrained optimum.
      std::vector<float> free_hat(T);
      const double free_err = t.EncodeFree(x.data(), T, states.data(), free_hat.data());
      EXPECT_LE(free_err, err + 1e-9);
      EXPECT_LE(err, 1.25 * free_err) << TrellisCodeName(code) << " k=" << k;
    }
  }
}

// QTIP Table 2 (tail-biting, L = 12, T = 256): 0.0733 at k = 2. 64 tiles: a sampling error of
// about ±1.5%, hence the band; quantd-bench codebook measures more samples (docs/benchmarks.md).
TEST(TrellisTest, TwoBitMseNearPublishedFigure) {
  Trellis t = Make(TrellisCode::k1Mad, 12, 2);
  const int tiles = 64, T = 256;
  const double scale = 0.95;
  std::vector<float> x = Gaussian(tiles * T, 12345);
  double err = 0;
  for (int i = 0; i < tiles; ++i) {
    std::vector<float> in(T), xhat(T);
    std::vector<uint16_t> codes(T);
    for (int j = 0; j < T; ++j) in[j] = static_cast<float>(x[i * T + j] * scale);
    err += t.EncodeTailBiting(in.data(), T, codes.data(), xhat.data());
  }
  const double mse = err / (tiles * T * scale * scale);
  EXPECT_GT(mse, 0.0733 * 0.95);
  EXPECT_LT(mse, 0.0733 * 1.05);
}

TEST(TrellisTest, ConfigValidationNamesTheField) {
  TrellisConfig c;
  c.L = 30;
  EXPECT_NE(ValidateTrellisConfig(c).message().find("L = 30"), std::string::npos);
  c = TrellisConfig{};
  c.k = 5;
  EXPECT_NE(ValidateTrellisConfig(c).message().find("k = 5"), std::string::npos);
  c = TrellisConfig{};
  c.code = TrellisCode::k1Mad;  // V stays 2
  EXPECT_NE(ValidateTrellisConfig(c).message().find("V = 2"), std::string::npos);
  EXPECT_EQ(ParseTrellisCode("4mad").status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<float> bad(1024, 0.0f);
  bad[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(Trellis::Make(TrellisConfig{}, bad).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Trellis::Make(TrellisConfig{}, std::vector<float>(10)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quantd::quant
