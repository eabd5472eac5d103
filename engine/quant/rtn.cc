#include "engine/quant/rtn.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/format/float16.h"

namespace quantd::quant {
namespace {

constexpr int kClipGrid = 100;
constexpr double kClipMaxShrink = 0.8;
constexpr double kClipNorm = 2.4;

// fp16 grids (kMinOffset or fp16_scale): the stored numbers are fp16, and codes are chosen
// against exactly those numbers.
ScalarGrid Fp16Grid(double wmin, double wmax, int maxq, GridForm form) {
  ScalarGrid g;
  g.maxq = maxq;
  const float half = static_cast<float>((maxq + 1) / 2);
  switch (form) {
    case GridForm::kMinOffset: {
      const float m = model::HalfToFloat(model::FloatToHalf(static_cast<float>(wmin)));
      g.scale = RoundToFp16Scale(std::max((wmax - m) / maxq, 0x1p-24));
      g.zero = -m / g.scale;
      return g;
    }
    case GridForm::kSignedMax: {
      const double v = -wmin > wmax ? wmin : wmax;
      g.scale = RoundToFp16Scale(v != 0 ? v / -half : 1.0);
      g.zero = half;
      return g;
    }
    case GridForm::kSymmetric: {
      const double amax = std::max(-wmin, wmax);
      g.scale = RoundToFp16Scale(amax > 0 ? 2 * amax / maxq : 2.0 / maxq);
      g.zero = half;
      return g;
    }
    case GridForm::kAsymmetric:
      break;
  }
  wmin = std::min(wmin, 0.0);
  wmax = std::max(wmax, 0.0);
  if (wmin == 0 && wmax == 0) {
    wmin = -1;
    wmax = 1;
  }
  g.scale = RoundToFp16Scale((wmax - wmin) / maxq);
  g.zero = static_cast<float>(
      std::clamp(std::nearbyint(-wmin / g.scale), 0.0, static_cast<double>(maxq)));
  return g;
}

ScalarGrid GridFromRange(double wmin, double wmax, int maxq, const RtnParams& p) {
  if (p.fp16_scale || p.form == GridForm::kMinOffset || p.form == GridForm::kSignedMax) {
    return Fp16Grid(wmin, wmax, maxq, p.form);
  }
  const bool symmetric = p.form == GridForm::kSymmetric;
  wmin = std::min(wmin, 0.0);
  wmax = std::max(wmax, 0.0);
  if (symmetric) {
    wmax = std::max(-wmin, wmax);
    if (wmin < 0) wmin = -wmax;
  }
  if (wmin == 0 && wmax == 0) {
    wmin = -1;
    wmax = 1;
  }
  ScalarGrid g;
  g.maxq = maxq;
  g.scale = static_cast<float>((wmax - wmin) / maxq);
  if (!(g.scale > 0)) g.scale = 1;  // range below float precision
  g.zero = symmetric ? static_cast<float>((maxq + 1) / 2)
                     : static_cast<float>(std::nearbyint(-wmin / g.scale));
  return g;
}

}  // namespace

float RoundToFp16Scale(double x) {
  const double a = std::min(std::fabs(x), 65504.0);
  float h = model::HalfToFloat(model::FloatToHalf(static_cast<float>(a)));
  if (h == 0 && a > 0) h = std::ldexp(1.0f, -24);
  return x < 0 ? -h : h;
}

int ScalarGrid::Code(double w) const {
  const double q = std::nearbyint(w / scale + zero);
  return static_cast<int>(std::clamp(q, 0.0, static_cast<double>(maxq)));
}

ScalarGrid FitMinMaxGrid(const double* w, int len, const RtnParams& params) {
  const int maxq = (1 << params.bits) - 1;
  double wmin = 0, wmax = 0;
  for (int i = 0; i < len; ++i) {
    wmin = std::min(wmin, w[i]);
    wmax = std::max(wmax, w[i]);
  }
  ScalarGrid best = GridFromRange(wmin, wmax, maxq, params);
  if (!params.mse_clip) return best;
  double best_err = INFINITY;
  for (int i = 0; i < static_cast<int>(kClipMaxShrink * kClipGrid); ++i) {
    const double p = 1.0 - static_cast<double>(i) / kClipGrid;
    ScalarGrid g = GridFromRange(p * wmin, p * wmax, maxq, params);
    double err = 0;
    for (int j = 0; j < len; ++j) err += std::pow(std::fabs(g.Round(w[j]) - w[j]), kClipNorm);
    if (err < best_err) {
      best_err = err;
      best = g;
    }
  }
  return best;
}

ScalarGrid FitWeightedGrid(const double* w, const double* h, int len, const RtnParams& params) {
  const int maxq = (1 << params.bits) - 1;
  double wmin = 0, wmax = 0, hsum = 0;
  for (int i = 0; i < len; ++i) {
    wmin = std::min(wmin, w[i]);
    wmax = std::max(wmax, w[i]);
    hsum += h[i];
  }
  const bool unit = !(hsum > 0);
  auto weight = [&](int i) { return unit ? 1.0 : h[i]; };
  auto score = [&](const ScalarGrid& g) {
    double err = 0;
    for (int i = 0; i < len; ++i) {
      const double e = g.Round(w[i]) - w[i];
      err += weight(i) * e * e;
    }
    return err;
  };
  const bool fixed_zero = params.form == GridForm::kSymmetric || params.form == GridForm::kSignedMax;
  const bool fp16 = params.fp16_scale || params.form == GridForm::kMinOffset ||
                    params.form == GridForm::kSignedMax;
  ScalarGrid best = GridFromRange(wmin, wmax, maxq, params);
  double best_err = score(best);
  for (int i = -12; i < static_cast<int>(kClipMaxShrink * kClipGrid); ++i) {
    const double p = 1.0 - static_cast<double>(i) / kClipGrid;
    const ScalarGrid g = GridFromRange(p * wmin, p * wmax, maxq, params);
    double err = score(g);
    if (err < best_err) {
      best_err = err;
      best = g;
    }
    if (!fixed_zero) continue;
    double num = 0, den = 0;
    for (int j = 0; j < len; ++j) {
      const double c = g.Code(w[j]) - g.zero;
      num += weight(j) * w[j] * c;
      den += weight(j) * c * c;
    }
    if (!(den > 0) || num == 0) continue;
    ScalarGrid r = g;
    r.scale = fp16 ? RoundToFp16Scale(num / den) : static_cast<float>(num / den);
    err = score(r);
    if (err < best_err) {
      best_err = err;
      best = r;
    }
  }
  return best;
}

ScalarGrid QuipGrid(double rms, int bits) {
  ScalarGrid g;
  g.maxq = (1 << bits) - 1;
  const double s = rms > 0 ? 2.4 * rms : 1.0;
  g.scale = static_cast<float>(2.0 * s / g.maxq);
  g.zero = static_cast<float>(g.maxq) / 2.0f;
  return g;
}

int NumGroups(int n, int group_size) {
  if (group_size <= 0 || group_size >= n) return 1;
  return (n + group_size - 1) / group_size;
}

absl::StatusOr<RtnResult> QuantizeRtn(const MatrixD& w, const RtnParams& params,
                                      const double* col_weight) {
  if (params.bits < 2 || params.bits > 8) {
    return absl::InvalidArgumentError(absl::StrCat("RTN bits must be 2..8, got ", params.bits));
  }
  if (params.group_size < 0) {
    return absl::InvalidArgumentError(absl::StrCat("negative group size ", params.group_size));
  }
  const int m = static_cast<int>(w.rows()), n = static_cast<int>(w.cols());
  const int groups = NumGroups(n, params.group_size);
  const int gs = groups == 1 ? n : params.group_size;
  RtnResult out;
  out.what.resize(m, n);
  out.codes.resize(static_cast<size_t>(m) * n);
  out.grids.resize(static_cast<size_t>(m) * groups);
  for (int r = 0; r < m; ++r) {
    for (int g = 0; g < groups; ++g) {
      const int c0 = g * gs, len = std::min(gs, n - c0);
      const ScalarGrid grid = col_weight != nullptr
                                  ? FitWeightedGrid(&w(r, c0), col_weight + c0, len, params)
                                  : FitMinMaxGrid(&w(r, c0), len, params);
      out.grids[static_cast<size_t>(r) * groups + g] = grid;
      for (int c = c0; c < c0 + len; ++c) {
        const int q = grid.Code(w(r, c));
        out.codes[static_cast<size_t>(r) * n + c] = static_cast<uint8_t>(q);
        out.what(r, c) = grid.Dequant(q);
      }
    }
  }
  return out;
}

}  // namespace quantd::quant
