// quantd-bench codebook: MSE of a vector codebook on i.i.d. N(0,1) samples (the distortion the
// ALGORITHMS.md table reports), at the given or default scale, plus a best-scale grid search.
#include <cstdio>
#include <memory>
#include <vector>

#include "bench/bench.h"
#include "nlohmann/json.hpp"
#include "worker/quant/codebook.h"
#include "worker/quant/synthetic.h"

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

}  // namespace

int RunCodebook(const Flags& flags) {
  const std::string name = flags.Get("codebook", "e8p");
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
