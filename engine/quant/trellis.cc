#include "engine/quant/trellis.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"

namespace quantd::quant {
namespace {

// IEEE binary16 bits → float (normals, subnormals, inf/nan).
float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: mant · 2^-24
      const float v = static_cast<float>(mant) * std::ldexp(1.0f, -24);
      std::memcpy(&bits, &v, 4);
      bits |= sign;
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// splitmix64: a small, portable generator so the HYB table is identical everywhere.
uint64_t SplitMix(uint64_t* s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double Uniform01(uint64_t* s) { return (static_cast<double>(SplitMix(s) >> 11) + 0.5) * 0x1.0p-53; }

std::vector<float> BuildHybTable() {
  constexpr int kCentres = 1 << kHybQ, kSamples = 1 << 17, kIters = 30;
  std::vector<double> pts(2 * kSamples);
  uint64_t rng = 0x51495054ull;  // "QTIP"
  for (int i = 0; i < kSamples; ++i) {
    const double r = std::sqrt(-2.0 * std::log(Uniform01(&rng)));
    const double t = 2.0 * M_PI * Uniform01(&rng);
    pts[2 * i] = r * std::cos(t);
    pts[2 * i + 1] = std::abs(r * std::sin(t));  // folded: the sign comes from the state hash
  }
  std::vector<double> c(pts.begin(), pts.begin() + 2 * kCentres);
  std::vector<int> assign(kSamples);
  for (int it = 0; it < kIters; ++it) {
    for (int i = 0; i < kSamples; ++i) {
      double best = std::numeric_limits<double>::infinity();
      int bj = 0;
      for (int j = 0; j < kCentres; ++j) {
        const double d0 = pts[2 * i] - c[2 * j], d1 = pts[2 * i + 1] - c[2 * j + 1];
        const double d = d0 * d0 + d1 * d1;
        if (d < best) {
          best = d;
          bj = j;
        }
      }
      assign[i] = bj;
    }
    std::vector<double> sum(2 * kCentres, 0.0);
    std::vector<int> cnt(kCentres, 0);
    for (int i = 0; i < kSamples; ++i) {
      sum[2 * assign[i]] += pts[2 * i];
      sum[2 * assign[i] + 1] += pts[2 * i + 1];
      ++cnt[assign[i]];
    }
    for (int j = 0; j < kCentres; ++j) {
      if (cnt[j] > 0) {
        c[2 * j] = sum[2 * j] / cnt[j];
        c[2 * j + 1] = sum[2 * j + 1] / cnt[j];
      }
    }
  }
  return std::vector<float>(c.begin(), c.end());
}

}  // namespace

absl::StatusOr<TrellisCode> ParseTrellisCode(std::string_view name) {
  if (name == "1mad") return TrellisCode::k1Mad;
  if (name == "3inst") return TrellisCode::k3Inst;
  if (name == "hyb") return TrellisCode::kHyb;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown trellis code '", std::string(name), "': expected 1mad, 3inst or hyb"));
}

std::string_view TrellisCodeName(TrellisCode c) {
  switch (c) {
    case TrellisCode::k1Mad: return "1mad";
    case TrellisCode::k3Inst: return "3inst";
    case TrellisCode::kHyb: return "hyb";
  }
  return "?";
}

const std::vector<float>& DefaultHybTable() {
  static const std::vector<float>* table = new std::vector<float>(BuildHybTable());
  return *table;
}

absl::Status ValidateTrellisConfig(const TrellisConfig& c) {
  if (c.code != TrellisCode::k1Mad && c.code != TrellisCode::k3Inst && c.code != TrellisCode::kHyb) {
    return absl::InvalidArgumentError(absl::StrCat("trellis code ", static_cast<int>(c.code),
                                                   " is not 1mad, 3inst or hyb"));
  }
  if (c.L < 8 || c.L > 20) {
    return absl::InvalidArgumentError(absl::StrCat("trellis L = ", c.L, " must be in 8..20"));
  }
  if (c.k < 1 || c.k > 4) {
    return absl::InvalidArgumentError(absl::StrCat("trellis k = ", c.k, " must be in 1..4"));
  }
  const int want_v = c.code == TrellisCode::kHyb ? 2 : 1;
  if (c.V != want_v) {
    return absl::InvalidArgumentError(absl::StrCat("trellis V = ", c.V, " is invalid for code ",
                                                   std::string(TrellisCodeName(c.code)),
                                                   " (needs V = ", want_v, ")"));
  }
  if (c.k * c.V >= c.L) {
    return absl::InvalidArgumentError(
        absl::StrCat("trellis k·V = ", c.k * c.V, " must be below L = ", c.L));
  }
  if (c.code == TrellisCode::kHyb && c.L > 16) {
    return absl::InvalidArgumentError("trellis code hyb hashes 16-bit states: L must be <= 16");
  }
  return absl::OkStatus();
}

absl::StatusOr<Trellis> Trellis::Make(const TrellisConfig& config, std::vector<float> hyb_table) {
  if (absl::Status s = ValidateTrellisConfig(config); !s.ok()) return s;
  Trellis t;
  t.config_ = config;
  t.b_ = config.k * config.V;
  const uint32_t states = 1u << config.L;
  t.values_.resize(static_cast<size_t>(states) * config.V);
  if (config.code == TrellisCode::kHyb) {
    if (hyb_table.empty()) hyb_table = DefaultHybTable();
    if (hyb_table.size() != 2u << kHybQ) {
      return absl::InvalidArgumentError(absl::StrCat("HYB table has ", hyb_table.size(),
                                                     " values, expected ", 2 << kHybQ));
    }
    for (float v : hyb_table) {
      if (!std::isfinite(v)) return absl::InvalidArgumentError("HYB table holds NaN or Inf");
    }
    t.hyb_table_ = std::move(hyb_table);
  }
  for (uint32_t s = 0; s < states; ++s) {
    float* out = &t.values_[static_cast<size_t>(s) * config.V];
    switch (config.code) {
      case TrellisCode::k1Mad: {
        const uint32_t x = 34038481u * s + 76625530u;
        const int sum = static_cast<int>((x & 0xFF) + ((x >> 8) & 0xFF) + ((x >> 16) & 0xFF) +
                                         (x >> 24));
        out[0] = static_cast<float>((sum - 510) / 147.800537109375);
        break;
      }
      case TrellisCode::k3Inst: {
        const uint32_t x = 89226354u * s + 64248484u;
        const uint16_t lo = static_cast<uint16_t>(((x & 0xFFFF) & 0x8FFF) ^ 0x3B60);
        const uint16_t hi = static_cast<uint16_t>(((x >> 16) & 0x8FFF) ^ 0x3B60);
        out[0] = HalfToFloat(lo) + HalfToFloat(hi);
        break;
      }
      case TrellisCode::kHyb: {
        const uint32_t x = s * s + s;
        const uint32_t idx = (x >> (15 - kHybQ)) & ((1u << kHybQ) - 1);
        out[0] = t.hyb_table_[2 * idx];
        out[1] = (x >> 15) & 1 ? -t.hyb_table_[2 * idx + 1] : t.hyb_table_[2 * idx + 1];
        break;
      }
    }
  }
  return t;
}

double Trellis::Viterbi(const float* x, int steps, int64_t start_prefix, int64_t end_suffix,
                        uint32_t* states) const {
  const int L = config_.L, V = config_.V, b = b_;
  const uint32_t n = 1u << L, np = 1u << (L - b), suffix_mask = np - 1;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  std::vector<float> cost(n), next(n), best(np);
  std::vector<uint8_t> back(static_cast<size_t>(steps) * np);
  const float* vals = values_.data();
  auto distortion = [&](int step, std::vector<float>* out, const float* add) {
    const float* xs = x + static_cast<size_t>(step) * V;
    float* o = out->data();
    if (V == 1) {
      const float x0 = xs[0];
      for (uint32_t t = 0; t < n; ++t) {
        const float d = x0 - vals[t];
        o[t] = (add ? add[t >> b] : 0.0f) + d * d;
      }
    } else {
      const float x0 = xs[0], x1 = xs[1];
      for (uint32_t t = 0; t < n; ++t) {
        const float d0 = x0 - vals[2 * t], d1 = x1 - vals[2 * t + 1];
        o[t] = (add ? add[t >> b] : 0.0f) + d0 * d0 + d1 * d1;
      }
    }
  };
  distortion(0, &cost, nullptr);
  if (start_prefix >= 0) {
    for (uint32_t t = 0; t < n; ++t) {
      if ((t >> b) != static_cast<uint32_t>(start_prefix)) cost[t] = kInf;
    }
  }
  for (int i = 1; i < steps; ++i) {
    // The predecessors of t are p = (t >> b) | h << (L−b): the best one depends on t >> b only.
    uint8_t* bk = &back[static_cast<size_t>(i) * np];
    std::copy(cost.begin(), cost.begin() + np, best.begin());
    std::fill(bk, bk + np, 0);
    for (uint32_t h = 1; h < (1u << b); ++h) {
      const float* c = cost.data() + static_cast<size_t>(h) * np;
      for (uint32_t p = 0; p < np; ++p) {
        const bool better = c[p] < best[p];
        best[p] = better ? c[p] : best[p];
        bk[p] = better ? static_cast<uint8_t>(h) : bk[p];
      }
    }
    distortion(i, &next, best.data());
    cost.swap(next);
  }
  uint32_t end = 0;
  float end_cost = kInf;
  for (uint32_t t = 0; t < n; ++t) {
    if (end_suffix >= 0 && (t & suffix_mask) != static_cast<uint32_t>(end_suffix)) continue;
    if (cost[t] < end_cost) {
      end_cost = cost[t];
      end = t;
    }
  }
  states[steps - 1] = end;
  for (int i = steps - 1; i > 0; --i) {
    const uint32_t p = states[i] >> b;
    states[i - 1] = p | (static_cast<uint32_t>(back[static_cast<size_t>(i) * np + p]) << (L - b));
  }
  // Recompute the error in double from the chosen path (the float path costs only rank).
  double err = 0;
  for (int i = 0; i < steps; ++i) {
    const float* v = StateValues(states[i]);
    for (int j = 0; j < V; ++j) {
      const double d = static_cast<double>(x[i * V + j]) - v[j];
      err += d * d;
    }
  }
  return err;
}

double Trellis::EncodeFree(const float* x, int T, uint32_t* states, float* xhat) const {
  const int V = config_.V, steps = T / V;
  const double err = Viterbi(x, steps, -1, -1, states);
  for (int i = 0; i < steps; ++i) std::copy_n(StateValues(states[i]), V, xhat + i * V);
  return err;
}

double Trellis::EncodeTailBiting(const float* x, int T, uint16_t* codes, float* xhat) const {
  const int V = config_.V, b = b_, steps = T / V, half = steps / 2;
  // 1. Rotate by half a tile and run the free Viterbi: its state where the original tile starts
  //    tells which L−b overlap bits a good cyclic path passes through there.
  std::vector<float> rotated(static_cast<size_t>(T));
  std::copy(x + static_cast<size_t>(half) * V, x + T, rotated.begin());
  std::copy(x, x + static_cast<size_t>(half) * V, rotated.begin() + (steps - half) * V);
  std::vector<uint32_t> states(steps);
  Viterbi(rotated.data(), steps, -1, -1, states.data());
  const uint32_t overlap = states[steps - half] >> b;
  // 2. Re-run constrained to start and end on those bits.
  const double err = Viterbi(x, steps, overlap, overlap, states.data());
  const uint32_t code_mask = (1u << b) - 1;
  for (int i = 0; i < steps; ++i) {
    codes[i] = static_cast<uint16_t>(states[i] & code_mask);
    std::copy_n(StateValues(states[i]), V, xhat + i * V);
  }
  return err;
}

void Trellis::DecodeTailBiting(const uint16_t* codes, int T, float* xhat, uint32_t* states) const {
  const int L = config_.L, V = config_.V, b = b_, steps = T / V;
  const uint32_t mask = (1u << L) - 1, suffix_mask = (1u << (L - b)) - 1;
  // The low L−b bits of the last state are the last L−b bits of the cyclic stream.
  const int window = (L - b + b - 1) / b;
  uint64_t acc = 0;
  for (int j = steps - window; j < steps; ++j) acc = (acc << b) | codes[j];
  uint32_t s = ((static_cast<uint32_t>(acc) & suffix_mask) << b) | codes[0];
  for (int i = 0; i < steps; ++i) {
    if (i > 0) s = ((s << b) | codes[i]) & mask;
    if (states) states[i] = s;
    std::copy_n(StateValues(s), V, xhat + i * V);
  }
}

}  // namespace quantd::quant
