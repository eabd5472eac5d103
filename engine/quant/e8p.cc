#include "engine/quant/e8p.h"

#include <cmath>
#include <limits>

namespace quantd::quant {
namespace {

// The 29 norm^2-12 rows of S, entries doubled, in QuIP#'s get_norm12() order.
constexpr char kNorm12[29][9] = {
    "31113333", "13113333", "11313333", "11133333", "33313311", "33313131", "33311331",
    "33313113", "33311313", "33311133", "33133311", "33133131", "33131331", "33133113",
    "33131313", "33131133", "31333311", "31333131", "31331331", "31333113", "31331313",
    "13331133", "13333311", "13333131", "13331331", "13333113", "13331313", "11331333",
    "33113331"};

constexpr int kShiftBit = 7;
constexpr int kLanes = 8;

// Index of the first minimum of v[0..kE8PSourceSize); writes the minimum to *min. Lane-wise
// minima first so the compiler can vectorize the pass over all 256 values.
int ArgMin(const float* v, float* min) {
  float lane[kLanes];
  for (int l = 0; l < kLanes; ++l) lane[l] = v[l];
  for (int j = kLanes; j < kE8PSourceSize; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) lane[l] = v[j + l] < lane[l] ? v[j + l] : lane[l];
  }
  float m = lane[0];
  for (int l = 1; l < kLanes; ++l) m = lane[l] < m ? lane[l] : m;
  *min = m;
  for (int j = 0; j < kE8PSourceSize; ++j) {
    if (v[j] == m) return j;
  }
  return 0;  // only when v holds NaN
}

}  // namespace

const E8PLattice& E8PLattice::Get() {
  static const E8PLattice* const lattice = new E8PLattice();
  return *lattice;
}

E8PLattice::E8PLattice() {
  int n = 0;
  auto add = [&](const int* twice) {
    int sum2 = 0;  // 2 * sum(c), odd entries
    float norm2 = 0;
    for (int i = 0; i < kE8PDim; ++i) {
      const float v = 0.5f * twice[i];
      src_[n][i] = v;
      src_t_[i][n] = v;
      norm2 += v * v;
      sum2 += twice[i];
    }
    norm2_[n] = norm2;
    odd_[n] = static_cast<uint8_t>((sum2 / 2) & 1);
    ++n;
  };
  // Entries 2c in {1,3,5,7}; an odometer over 4^8 tuples with the last coordinate fastest
  // enumerates them in lexicographic order.
  int digit[kE8PDim] = {0};
  for (int t = 0; t < (1 << (2 * kE8PDim)); ++t) {
    int twice[kE8PDim];
    int sq = 0;
    for (int i = 0; i < kE8PDim; ++i) {
      digit[i] = (t >> (2 * (kE8PDim - 1 - i))) & 3;
      twice[i] = 2 * digit[i] + 1;
      sq += twice[i] * twice[i];
    }
    if (sq <= 40 && n < kE8PSourceSmall) add(twice);  // |c|^2 = sq / 4 <= 10
  }
  for (const char* row : kNorm12) {
    int twice[kE8PDim];
    for (int i = 0; i < kE8PDim; ++i) twice[i] = row[i] - '0';
    if (n < kE8PSourceSize) add(twice);
  }
  // A sign pattern with k negatives is valid for c iff k = sum(c) (mod 2).
  for (int j = 0; j < kE8PSourceSize; ++j) {
    for (int p = 0; p < 2; ++p) penalty_[p][j] = (p == odd_[j]) ? 0.0f : 4.0f;
  }
}

// For each shift the nearest signed version of c takes the signs of y = x - shift; if that
// pattern has the wrong parity, the cheapest fix flips the coordinate minimising |y_i| c_i,
// adding 4 |y_i| c_i to the squared distance. We score all 256 c with
//   |c|^2 - 2 <|y|, c> + penalty * min_i |y_i| c_i      (= distance - |y|^2)
// plus |y|^2 (which differs between the shifts) and take the argmin over c and both shifts.
uint16_t E8PLattice::Encode(const float* x, float* sq_dist) const {
  float best = std::numeric_limits<float>::infinity();
  int best_j = 0, best_shift = 0;
  unsigned best_neg = 0;
  float best_a[kE8PDim] = {0};
  alignas(32) float dot[kE8PSourceSize];
  alignas(32) float mn[kE8PSourceSize];
  for (int shift = 0; shift < 2; ++shift) {
    const float offset = shift ? -0.25f : 0.25f;
    float a[kE8PDim];
    unsigned neg = 0;
    float a2 = 0;
    for (int i = 0; i < kE8PDim; ++i) {
      const float y = x[i] - offset;
      neg |= static_cast<unsigned>(y < 0) << i;
      a[i] = std::fabs(y);
      a2 += a[i] * a[i];
    }
    {
      const float a0 = a[0];
      const float* t = src_t_[0];
      for (int j = 0; j < kE8PSourceSize; ++j) dot[j] = mn[j] = a0 * t[j];
    }
    for (int i = 1; i < kE8PDim; ++i) {
      const float ai = a[i];
      const float* t = src_t_[i];
      for (int j = 0; j < kE8PSourceSize; ++j) {
        const float p = ai * t[j];
        dot[j] += p;
        mn[j] = p < mn[j] ? p : mn[j];
      }
    }
    const float* pen = penalty_[__builtin_popcount(neg) & 1];
    for (int j = 0; j < kE8PSourceSize; ++j) {
      dot[j] = a2 + (norm2_[j] - 2.0f * dot[j] + pen[j] * mn[j]);  // now the cost
    }
    float cost;
    const int j = ArgMin(dot, &cost);
    if (cost < best) {
      best = cost;
      best_j = j;
      best_shift = shift;
      best_neg = neg;
      for (int i = 0; i < kE8PDim; ++i) best_a[i] = a[i];
    }
  }
  if ((__builtin_popcount(best_neg) & 1) != odd_[best_j]) {
    int flip = 0;
    float m = best_a[0] * src_[best_j][0];
    for (int i = 1; i < kE8PDim; ++i) {
      const float p = best_a[i] * src_[best_j][i];
      if (p < m) {
        m = p;
        flip = i;
      }
    }
    best_neg ^= 1u << flip;
  }
  if (sq_dist != nullptr) *sq_dist = std::fmax(0.0f, best);
  return static_cast<uint16_t>((best_j << 8) | (best_shift << kShiftBit) | (best_neg & 0x7f));
}

void E8PLattice::Decode(uint16_t code, float* out) const {
  const int j = code >> 8;
  const float offset = ((code >> kShiftBit) & 1) ? -0.25f : 0.25f;
  unsigned neg = code & 0x7f;
  neg |= static_cast<unsigned>((__builtin_popcount(neg) & 1) ^ odd_[j]) << 7;
  const float* c = src_[j];
  for (int i = 0; i < kE8PDim; ++i) out[i] = (((neg >> i) & 1) ? -c[i] : c[i]) + offset;
}

E8PCodebook::E8PCodebook(double scale)
    : lattice_(E8PLattice::Get()), scale_(scale), scale_f_(static_cast<float>(scale)) {}

void E8PCodebook::Quantize(const float* x, uint16_t* codes, float* xhat) const {
  float xs[kE8PDim];
  for (int i = 0; i < kE8PDim; ++i) xs[i] = x[i] * scale_f_;
  codes[0] = lattice_.Encode(xs);
  Decode(codes, xhat);
}

void E8PCodebook::Decode(const uint16_t* codes, float* xhat) const {
  lattice_.Decode(codes[0], xhat);
  for (int i = 0; i < kE8PDim; ++i) xhat[i] /= scale_f_;
}

}  // namespace quantd::quant
