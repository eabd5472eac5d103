// quantd-bench codebook: MSE of a vector codebook on i.i.d. N(0,1) samples (the distortion
// docs/algorithms.md "Reference distortions" tabulates), at the given or default scale, plus a
// best-scale grid search.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <vector>

#include "bench/bench.h"
#include "nlohmann/json.hpp"
#include "engine/quant/codebook.h"
#include "engine/quant/synthetic.h"
#include "engine/quant/trellis.h"

namespace quantd::bench {
namespace {

double Mse(const quant::VectorCodebook& cb, const std::vector<float>& x) {
  const int g = cb.dim();
  const int64_t vectors = static_cast<int64_t>(x.size()) / g;
  double err = 0;
#pragma omp parallel for reduction(+ : err) schedule(static)
  for (int64_t v = 0; v < vectors; ++v) {
    uint16_t codes[8];
    float xhat[64];
    cb.Quantize(&x[v * g], codes, xhat);
    for (int j = 0; j < g; ++j) {
      const double d = xhat[j] - x[v * g + j];
      err += d * d;
    }
  }
  return err / static_cast<double>(vectors * g);
}

struct TrellisMse {
  double tail_biting = 0, free = 0;
};

// MSE of the trellis on `tiles` tiles of 256 samples of x, quantizing x·scale and dividing back.
TrellisMse MeasureTrellis(const quant::Trellis& t, const std::vector<float>& x, int tiles,
                          double scale) {
  constexpr int kT = 256;
  double tb = 0, fr = 0;
#pragma omp parallel for reduction(+ : tb, fr) schedule(dynamic)
  for (int i = 0; i < tiles; ++i) {
    std::vector<float> in(kT), xhat(kT);
    std::vector<uint16_t> codes(kT);
    std::vector<uint32_t> states(kT);
    for (int j = 0; j < kT; ++j) in[j] = static_cast<float>(x[i * kT + j] * scale);
    tb += t.EncodeTailBiting(in.data(), kT, codes.data(), xhat.data());
    fr += t.EncodeFree(in.data(), kT, states.data(), xhat.data());
  }
  const double denom = static_cast<double>(tiles) * kT * scale * scale;
  return {tb / denom, fr / denom};
}

int RunTrellisCodebook(const Flags& flags, const std::string& name) {
  absl::StatusOr<quant::TrellisCode> code = quant::ParseTrellisCode(name.substr(8));
  absl::StatusOr<long long> bits = flags.GetInt("bits", 2), l = flags.GetInt("L", 16),
                            tiles = flags.GetInt("tiles", 256);
  absl::StatusOr<double> scale = flags.GetDouble("scale", 0.0);
  if (!code.ok() || !bits.ok() || !l.ok() || !tiles.ok() || !scale.ok() || *tiles <= 0) {
    std::fprintf(stderr, "bad --codebook trellis-{1mad,3inst,hyb}, --bits, --L, --tiles or --scale\n");
    return 2;
  }
  quant::TrellisConfig cfg;
  cfg.code = *code;
  cfg.k = static_cast<int>(*bits);
  cfg.L = static_cast<int>(*l);
  cfg.V = *code == quant::TrellisCode::kHyb ? 2 : 1;
  absl::StatusOr<quant::Trellis> t = quant::Trellis::Make(cfg);
  if (!t.ok()) {
    std::fprintf(stderr, "%s\n", std::string(t.status().message()).c_str());
    return 2;
  }
  quant::GaussianRng rng(12345);
  std::vector<float> x(static_cast<size_t>(*tiles) * 256);
  for (float& v : x) v = static_cast<float>(rng.Next());
  double best_scale = *scale;
  if (best_scale <= 0) {  // coarse search on a quarter of the tiles, then the full measurement
    double best = 1e300;
    for (double s = 0.70; s <= 1.301; s += 0.05) {
      const double mse = MeasureTrellis(*t, x, std::max<int>(1, *tiles / 4), s).tail_biting;
      if (mse < best) best = mse, best_scale = s;
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  const TrellisMse m = MeasureTrellis(*t, x, static_cast<int>(*tiles), best_scale);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // Each tile runs three Viterbi passes (tail-biting: two; free: one).
  nlohmann::json out = {{"codebook", name},          {"bits", *bits},
                        {"L", *l},                   {"V", cfg.V},
                        {"samples", x.size()},       {"scale", best_scale},
                        {"mse", m.tail_biting},      {"mse_free", m.free},
                        {"seconds", secs},
                        {"viterbi_weights_per_s", 3.0 * static_cast<double>(x.size()) / secs}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace

int RunCodebook(const Flags& flags) {
  const std::string name = flags.Get("codebook", "e8p");
  if (name.rfind("trellis-", 0) == 0) return RunTrellisCodebook(flags, name);
  absl::StatusOr<long long> samples = flags.GetInt("samples", 1000000);
  absl::StatusOr<double> scale = flags.GetDouble("scale", 0.0);
  if (!samples.ok() || !scale.ok() || *samples <= 0) {
    std::fprintf(stderr, "bad --samples or --scale\n");
    return 2;
  }
  absl::StatusOr<std::unique_ptr<quant::VectorCodebook>> cb = quant::MakeCodebook(name, *scale);
  if (!cb.ok()) {
    std::fprintf(stderr, "%s\n", std::string(cb.status().message()).c_str());
    return 2;
  }
  const int g = (*cb)->dim();
  const int64_t n = (*samples + g - 1) / g * g;
  quant::GaussianRng rng(12345);
  std::vector<float> x(n);
  for (float& v : x) v = static_cast<float>(rng.Next());

  nlohmann::json out = {{"codebook", name}, {"bits", (*cb)->bits_per_weight()},
                        {"scale", *scale}, {"samples", n}, {"mse", Mse(**cb, x)}};
  if (!flags.Has("scale")) {
    out["scale"] = "default";
    double best_scale = 0, best_mse = 1e300;
    for (int i = 0; i <= 40; ++i) {
      const double s = 0.6 + 0.02 * i;
      absl::StatusOr<std::unique_ptr<quant::VectorCodebook>> c = quant::MakeCodebook(name, s);
      if (!c.ok()) continue;
      const double mse = Mse(**c, x);
      if (mse < best_mse) best_mse = mse, best_scale = s;
    }
    out["best_scale"] = best_scale;
    out["best_mse"] = best_mse;
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace quantd::bench
