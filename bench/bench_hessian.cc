// quantd-bench hessian: throughput of HessianAccumulator::Add (fp64 accumulation, counted as
// 2·n²·tokens flops) against a plain fp32 GEMM of the same shape on the same device.
#include <chrono>
#include <cstdio>

#include "bench/bench.h"
#include "nlohmann/json.hpp"
#include "worker/quant/device.h"
#include "worker/quant/hessian.h"
#include "worker/quant/synthetic.h"

namespace quantd::bench {
namespace {

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int RunHessian(const Flags& flags) {
  absl::StatusOr<long long> n = flags.GetInt("n", 4096), tokens = flags.GetInt("tokens", 8192);
  if (!n.ok() || !tokens.ok() || *n <= 0 || *tokens <= 0) {
    std::fprintf(stderr, "bad --n or --tokens\n");
    return 2;
  }
  auto dev = quant::MakeCpuDevice();
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
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace quantd::bench
