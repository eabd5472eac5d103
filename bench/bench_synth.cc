// quantd-bench synth: writes a synthetic Llama checkpoint of a real shape
// (engine/model/synthetic_checkpoint.h) for the big-shape benchmarks
// (scripts/bench_realsize.sh).
#include <chrono>
#include <cstdio>

#include "bench/bench.h"
#include "engine/model/synthetic_checkpoint.h"
#include "nlohmann/json.hpp"

namespace quantd::bench {

int RunSynth(const Flags& flags) {
  const std::string out = flags.Get("out", "");
  absl::StatusOr<model::SyntheticShape> shape =
      model::SyntheticShapeByName(flags.Get("shape", ""));
  absl::StatusOr<long long> layers = flags.GetInt("layers", 0);
  absl::StatusOr<double> shard_gb = flags.GetDouble("shard-gb", 4.0);
  absl::StatusOr<long long> seed = flags.GetInt("seed", 0);
  if (out.empty() || !shape.ok() || !layers.ok() || !shard_gb.ok() || !seed.ok() ||
      *layers < 0 || *shard_gb <= 0) {
    if (!shape.ok()) std::fprintf(stderr, "%s\n", std::string(shape.status().message()).c_str());
    std::fprintf(stderr, "usage: quantd-bench synth --shape {llama2-7b,tinyllama-1.1b,tiny} "
                         "--out DIR [--layers N] [--shard-gb 4] [--seed 0]\n");
    return 2;
  }
  model::LlamaConfig cfg = shape->cfg;
  if (*layers > 0) cfg.num_layers = static_cast<int>(*layers);
  model::SyntheticOptions o;
  o.max_shard_bytes = static_cast<int64_t>(*shard_gb * (1 << 30));
  o.seed = static_cast<uint64_t>(*seed);
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<model::SyntheticResult> r = model::WriteSyntheticCheckpoint(cfg, out, o);
  if (!r.ok()) {
    std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
    return 1;
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::json j = {{"shape", shape->name}, {"out", out},          {"layers", cfg.num_layers},
                      {"shards", r->shards},  {"bytes", r->total_bytes}, {"seconds", secs}};
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace quantd::bench
