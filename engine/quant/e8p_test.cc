#include "engine/quant/e8p.h"

#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace quantd::quant {
namespace {

double SqDist(const float* a, const float* b) {
  double d = 0;
  for (int i = 0; i < kE8PDim; ++i) {
    const double t = static_cast<double>(a[i]) - b[i];
    d += t * t;
  }
  return d;
}

std::vector<float> AllPoints() {
  const E8PLattice& lat = E8PLattice::Get();
  std::vector<float> pts(size_t{1} << 16 << 3);
  for (int c = 0; c < (1 << 16); ++c) lat.Decode(static_cast<uint16_t>(c), &pts[size_t(c) * 8]);
  return pts;
}

TEST(E8PLatticeTest, SourceSetIs227SmallThen29OfNorm12) {
  const E8PLattice& lat = E8PLattice::Get();
  // Independent enumeration of the 227: entries in {1/2,3/2,5/2,7/2}, |c|^2 <= 10, lex order.
  std::vector<std::array<float, 8>> small;
  for (int t = 0; t < (1 << 16); ++t) {
    std::array<float, 8> v;
    double n2 = 0;
    for (int i = 0; i < 8; ++i) {
      v[i] = 0.5f + ((t >> (14 - 2 * i)) & 3);
      n2 += v[i] * v[i];
    }
    if (n2 <= 10) small.push_back(v);
  }
  ASSERT_EQ(small.size(), 227u);
  std::set<std::array<float, 8>> distinct;
  for (int j = 0; j < kE8PSourceSize; ++j) {
    std::array<float, 8> v;
    std::memcpy(v.data(), lat.source(j), sizeof(v));
    double n2 = 0, sum = 0;
    for (float e : v) {
      n2 += e * e;
      sum += e;
      EXPECT_TRUE(e == 0.5f || e == 1.5f || e == 2.5f || e == 3.5f) << "row " << j;
    }
    EXPECT_EQ(lat.source_parity(j), static_cast<int>(std::lround(sum)) & 1) << "row " << j;
    if (j < 227) {
      EXPECT_EQ(v, small[j]) << "row " << j;
      EXPECT_LE(n2, 10.0);
    } else {
      EXPECT_EQ(n2, 12.0) << "row " << j;
    }
    distinct.insert(v);
  }
  EXPECT_EQ(distinct.size(), 256u);
  // First and last of the norm-12 rows as listed by QuIP#'s get_norm12().
  const float first12[8] = {1.5f, 0.5f, 0.5f, 0.5f, 1.5f, 1.5f, 1.5f, 1.5f};
  const float last12[8] = {1.5f, 1.5f, 0.5f, 0.5f, 1.5f, 1.5f, 1.5f, 0.5f};
  EXPECT_EQ(std::memcmp(lat.source(227), first12, sizeof(first12)), 0);
  EXPECT_EQ(std::memcmp(lat.source(255), last12, sizeof(last12)), 0);
}

TEST(E8PLatticeTest, EveryCodeIsADistinctPointOfShiftedD8Hat) {
  const E8PLattice& lat = E8PLattice::Get();
  std::set<uint64_t> keys;
  for (int c = 0; c < (1 << 16); ++c) {
    float p[8];
    lat.Decode(static_cast<uint16_t>(c), p);
    const float shift = ((c >> 7) & 1) ? -0.25f : 0.25f;
    int sum = 0;
    uint64_t key = 0;
    for (int i = 0; i < 8; ++i) {
      const float u = p[i] - shift;       // must be in Z + 1/2
      const float twice = 2 * u;          // odd integer
      ASSERT_EQ(twice, std::round(twice)) << "code " << c;
      const int t = static_cast<int>(twice);
      ASSERT_NE(t % 2, 0) << "code " << c;
      ASSERT_EQ(std::fabs(u), lat.source(c >> 8)[i]) << "code " << c;
      sum += t;
      key = key << 8 | static_cast<uint64_t>(static_cast<int>(4 * p[i]) + 32);
    }
    ASSERT_EQ(sum % 4, 0) << "code " << c << ": coordinate sum " << sum / 2.0 << " is odd";
    if (c < 128) {
      EXPECT_EQ(p[0] < 0, (c & 1) != 0);
    }
    keys.insert(key);
  }
  EXPECT_EQ(keys.size(), size_t{1} << 16);
}

TEST(E8PLatticeTest, EncodeDecodeRoundTripsAllCodes) {
  const E8PLattice& lat = E8PLattice::Get();
  for (int c = 0; c < (1 << 16); ++c) {
    float p[8];
    lat.Decode(static_cast<uint16_t>(c), p);
    float d = -1;
    ASSERT_EQ(lat.Encode(p, &d), c);
    ASSERT_EQ(d, 0.0f);
  }
}

// Test vectors: Gaussians at several scales and adversarial cases (zero, tiny, quarter-grid
// points full of ties, midpoints between nearby codewords, far outside the codebook).
std::vector<std::array<float, 8>> TestVectors() {
  const E8PLattice& lat = E8PLattice::Get();
  std::mt19937_64 rng(20240611);
  std::normal_distribution<float> gauss;
  std::uniform_int_distribution<int> code(0, 65535), bit(0, 15), quarter(-8, 8);
  std::vector<std::array<float, 8>> out;
  for (float s : {0.3f, 1.0f, 1.04f, 2.0f, 5.0f}) {
    for (int k = 0; k < 400; ++k) {
      std::array<float, 8> v;
      for (float& e : v) e = s * gauss(rng);
      out.push_back(v);
    }
  }
  out.push_back({});  // zero
  for (int k = 0; k < 100; ++k) {
    std::array<float, 8> v;
    for (float& e : v) e = 1e-4f * gauss(rng);
    out.push_back(v);
  }
  for (int k = 0; k < 300; ++k) {  // entries on the 1/4 grid: many exact ties
    std::array<float, 8> v;
    for (float& e : v) e = 0.25f * quarter(rng);
    out.push_back(v);
  }
  for (int k = 0; k < 400; ++k) {  // midpoints between two codewords differing in a few bits
    const int a = code(rng);
    int b = a ^ (1 << bit(rng));
    if (k % 2) b ^= 1 << bit(rng);
    float pa[8], pb[8];
    lat.Decode(static_cast<uint16_t>(a), pa);
    lat.Decode(static_cast<uint16_t>(b), pb);
    std::array<float, 8> v;
    const float eps = (k % 4 < 2) ? 0.0f : 1e-5f;
    for (int i = 0; i < 8; ++i) v[i] = 0.5f * (pa[i] + pb[i]) + eps * gauss(rng);
    out.push_back(v);
  }
  for (int k = 0; k < 200; ++k) {  // one coordinate near zero: the parity fix is cheap there
    std::array<float, 8> v;
    for (float& e : v) e = gauss(rng);
    v[bit(rng) % 8] = 0.25f + 1e-3f * gauss(rng);
    out.push_back(v);
  }
  return out;
}

TEST(E8PLatticeTest, EncoderIsExactAgainstBruteForce) {
  const E8PLattice& lat = E8PLattice::Get();
  const std::vector<float> pts = AllPoints();
  const auto vecs = TestVectors();
  ASSERT_GE(vecs.size(), 2000u);
  int code_mismatches = 0;
  for (const auto& v : vecs) {
    float best = INFINITY;
    int best_c = 0;
    for (int c = 0; c < (1 << 16); ++c) {
      const float* p = &pts[size_t(c) * 8];
      float d = 0;
      for (int i = 0; i < 8; ++i) d += (v[i] - p[i]) * (v[i] - p[i]);
      if (d < best) {
        best = d;
        best_c = c;
      }
    }
    const double d_bf = SqDist(v.data(), &pts[size_t(best_c) * 8]);
    float reported = -1;
    const uint16_t c = lat.Encode(v.data(), &reported);
    float p[8];
    lat.Decode(c, p);
    const double d_enc = SqDist(v.data(), p);
    const double tol = 2e-5 * (1 + d_bf);
    ASSERT_LE(d_enc, d_bf + tol) << "encoder not nearest: code " << c << " vs " << best_c;
    EXPECT_NEAR(reported, d_enc, tol);
    code_mismatches += (c != best_c);
  }
  std::printf("%zu vectors; codes differing from brute force at exact ties: %d\n", vecs.size(),
              code_mismatches);
}

TEST(E8PLatticeTest, EncodeSpeed) {
  const E8PLattice& lat = E8PLattice::Get();
  std::mt19937_64 rng(7);
  std::normal_distribution<float> gauss;
  std::vector<float> x(8 * 50000);
  for (float& e : x) e = gauss(rng);
  const auto t0 = std::chrono::steady_clock::now();
  unsigned acc = 0;
  for (size_t k = 0; k < x.size(); k += 8) acc += lat.Encode(&x[k]);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("E8P encode: %.0f vectors/s (checksum %u)\n", (x.size() / 8) / s, acc);
}

}  // namespace
}  // namespace quantd::quant
