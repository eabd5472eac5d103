// quantd-bench hessian: throughput of HessianAccumulator::Add (fp64 accumulation, counted as
// 2·n²·tokens flops) against a plain fp32 GEMM of the same shape on the same device (both
// including host↔device copies on a GPU). On a GPU (--device cuda:N) it also reports the
// device-resident cuBLAS DGEMM/SGEMM peak measured in the same run (the GPU Gram is fp64 DSYRK).
#include <chrono>
#include <cstdio>

#include "bench/bench.h"
#include "nlohmann/json.hpp"
#include "engine/device/device_registry.h"
#include "engine/quant/device.h"
#include "engine/quant/hessian.h"
#include "engine/quant/synthetic.h"

namespace quantd::bench {
int RunHessian(const Flags& flags) {
  absl::StatusOr<long long> n = flags.GetInt("n", 4096), tokens = flags.GetInt("tokens", 8192);
  if (!n.ok() || !tokens.ok() || *n <= 0 || *tokens <= 0) {
    std::fprintf(stderr, "bad --n or --tokens\n");
    return 2;
  }
  std::unique_ptr<quant::Device> dev = DeviceFromFlags(flags);
  if (dev == nullptr) return 2;
  {  // warm-up: context, handles and first-call costs stay out of the timings
    MatrixF wx = MatrixF::Ones(64, 64);
    MatrixD wh = MatrixD::Zero(64, 64);
    if (!dev->AccumulateGram(wx, &wh).ok()) return 1;
  }
  MatrixF x = quant::GaussianMatrix(static_cast<int>(*tokens), static_cast<int>(*n), 1).cast<float>();
  const double flops = 2.0 * static_cast<double>(*n) * static_cast<double>(*n) * *tokens;

  quant::HessianAccumulator acc(static_cast<int>(*n));
  auto t0 = std::chrono::steady_clock::now();
  absl::Status s = acc.Add(*dev, x);
  const double secs = Seconds(t0);
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
    return 1;
  }
  MatrixF xt = x.transpose();
  MatrixF c;
  t0 = std::chrono::steady_clock::now();
  s = dev->Gemm(xt, x, &c);
  const double gemm_secs = Seconds(t0);
  if (!s.ok()) return 1;
  const double gflops = flops / secs / 1e9, gemm_gflops = flops / gemm_secs / 1e9;
  nlohmann::json out = {{"n", *n},           {"tokens", *tokens},
                        {"seconds", secs},   {"gflops", gflops},
                        {"gemm_seconds", gemm_secs}, {"gemm_gflops", gemm_gflops},
                        {"ratio", gflops / gemm_gflops}, {"device", dev->name()}};
  out["tflops"] = gflops / 1e3;
  if (!dev->host_memory()) {
    for (bool fp64 : {true, false}) {
      absl::StatusOr<double> peak = device::MeasureGemmPeakTflops(flags.Get("device", "cpu"), 8192, fp64);
      if (!peak.ok()) {
        std::fprintf(stderr, "%s\n", peak.status().ToString().c_str());
        return 1;
      }
      out[fp64 ? "peak_dgemm_tflops" : "peak_sgemm_tflops"] = *peak;
    }
    out["fraction_of_dgemm_peak"] = gflops / 1e3 / out["peak_dgemm_tflops"].get<double>();
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace quantd::bench
