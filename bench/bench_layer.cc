// quantd-bench layer: wall time and relative proxy loss of QuantizeMatrix on a synthetic layer
// (heavy-tailed Gaussian weight, correlated-activation Hessian with outlier channels) on the
// --device given (auto | cpu | cuda:N; default cpu).
#include <chrono>
#include <cstdio>

#include "bench/bench.h"
#include "nlohmann/json.hpp"
#include "engine/device/device_registry.h"
#include "engine/quant/quantize.h"
#include "engine/quant/synthetic.h"

namespace quantd::bench {

int RunLayer(const Flags& flags) {
  absl::StatusOr<quant::Method> method = quant::ParseMethod(flags.Get("method", "quip-sharp"));
  absl::StatusOr<long long> bits = flags.GetInt("bits", 2), m = flags.GetInt("m", 4096),
                            n = flags.GetInt("n", 4096), greedy = flags.GetInt("greedy", 0);
  if (!method.ok() || !bits.ok() || !m.ok() || !n.ok() || !greedy.ok() || *m <= 0 || *n <= 0) {
    std::fprintf(stderr, "bad --method, --bits, --m, --n or --greedy\n");
    return 2;
  }
  quant::QuantSpec spec;
  spec.method = *method;
  spec.bits = static_cast<int>(*bits);
  spec.greedy_passes = static_cast<int>(*greedy);
  std::unique_ptr<quant::Device> dev = DeviceFromFlags(flags);
  if (dev == nullptr) return 2;
  MatrixF w = quant::SyntheticWeight(static_cast<int>(*m), static_cast<int>(*n), 1);
  MatrixD h = quant::SyntheticHessian(static_cast<int>(*n), 2);
  auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<quant::QuantizedMatrix> q = quant::QuantizeMatrix(*dev, w, h, spec, "bench");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!q.ok()) {
    std::fprintf(stderr, "%s\n", std::string(q.status().message()).c_str());
    return 1;
  }
  nlohmann::json out = {{"method", std::string(quant::MethodName(*method))},
                        {"bits", *bits},
                        {"m", *m},
                        {"n", *n},
                        {"seconds", secs},
                        {"proxy_loss", q->proxy_loss},
                        {"packed_bytes", q->packed.size()},
                        {"device", dev->name()}};
  if (*greedy > 0) out["greedy_passes"] = *greedy;
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace quantd::bench
