#include "engine/quant/rvq.h"

#include <limits>

namespace quantd::quant {

const E8OneBitTable& E8OneBitTable::Get() {
  static const E8OneBitTable* const table = new E8OneBitTable();
  return *table;
}

E8OneBitTable::E8OneBitTable() {
  int n = 0;
  auto add = [&](const float* v) {
    float norm2 = 0;
    for (int i = 0; i < kE8PDim; ++i) {
      pts_[n][i] = v[i];
      norm2 += v[i] * v[i];
    }
    norm2_[n] = norm2;
    ++n;
  };
  // Integer points: entries in {-1, 0, 1}, |x|^2 in {0, 2}; an odometer with the last coordinate
  // fastest gives lexicographic order.
  for (int t = 0; t < 6561; ++t) {  // 3^8
    float v[kE8PDim];
    int rest = t, nz = 0;
    for (int i = kE8PDim - 1; i >= 0; --i) {
      v[i] = static_cast<float>(rest % 3 - 1);
      rest /= 3;
      nz += v[i] != 0;
    }
    if (nz == 0 || nz == 2) add(v);
  }
  // Half-integer points {+-1/2}^8 with an even number of negatives, lexicographic: bit set =
  // +1/2, coordinate 0 in the most significant bit (negatives = 8 - popcount, same parity).
  for (int t = 0; t < 256; ++t) {
    if (__builtin_popcount(t) & 1) continue;
    float v[kE8PDim];
    for (int i = 0; i < kE8PDim; ++i) v[i] = ((t >> (kE8PDim - 1 - i)) & 1) ? 0.5f : -0.5f;
    add(v);
  }
  for (int s = 0; s < 2; ++s) {
    for (int i = 0; i < kE8PDim && n < kSize; ++i) {
      float v[kE8PDim] = {0};
      v[i] = s ? -2.0f : 2.0f;
      add(v);
    }
  }
}

int E8OneBitTable::Encode(const float* y) const {
  float best = std::numeric_limits<float>::infinity();
  int best_j = 0;
  for (int j = 0; j < kSize; ++j) {
    float dot = 0;
    for (int i = 0; i < kE8PDim; ++i) dot += y[i] * pts_[j][i];
    const float cost = norm2_[j] - 2.0f * dot;  // |y - p|^2 - |y|^2
    if (cost < best) {
      best = cost;
      best_j = j;
    }
  }
  return best_j;
}

RvqCodebook::RvqCodebook(Stage2 stage2, double scale, double residual_scale)
    : stage2_(stage2),
      e8p_(E8PLattice::Get()),
      e81b_(E8OneBitTable::Get()),
      scale_(scale),
      residual_scale_(residual_scale),
      scale_f_(static_cast<float>(scale)),
      residual_scale_f_(static_cast<float>(residual_scale)) {}

void RvqCodebook::Quantize(const float* x, uint16_t* codes, float* xhat) const {
  float xs[kE8PDim], q1[kE8PDim], r[kE8PDim];
  for (int i = 0; i < kE8PDim; ++i) xs[i] = x[i] * scale_f_;
  codes[0] = e8p_.Encode(xs);
  e8p_.Decode(codes[0], q1);
  for (int i = 0; i < kE8PDim; ++i) r[i] = (xs[i] - q1[i]) * residual_scale_f_;
  codes[1] = stage2_ == Stage2::kE8P ? e8p_.Encode(r) : static_cast<uint16_t>(e81b_.Encode(r));
  Decode(codes, xhat);
}

void RvqCodebook::Decode(const uint16_t* codes, float* xhat) const {
  float q2[kE8PDim];
  e8p_.Decode(codes[0], xhat);
  if (stage2_ == Stage2::kE8P) {
    e8p_.Decode(codes[1], q2);
  } else {
    const float* p = e81b_.point(codes[1] & 0xff);
    for (int i = 0; i < kE8PDim; ++i) q2[i] = p[i];
  }
  for (int i = 0; i < kE8PDim; ++i) xhat[i] = (xhat[i] + q2[i] / residual_scale_f_) / scale_f_;
}

}  // namespace quantd::quant
