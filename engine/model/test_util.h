// Test helpers for the model library: locating the in-repo example data through
// QUANTD_SOURCE_DIR (set by CTest) and loading stories260K.
// Thread-safety: not thread-safe (test-only).
#ifndef QUANTD_ENGINE_MODEL_TEST_UTIL_H_
#define QUANTD_ENGINE_MODEL_TEST_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "engine/format/checkpoint.h"
#include "engine/model/config.h"
#include "engine/model/weights.h"

namespace quantd::model::testing {

// $QUANTD_SOURCE_DIR/<rel>, falling back to the compile-time source tree.
inline std::string SourcePath(const std::string& rel) {
  const char* src = std::getenv("QUANTD_SOURCE_DIR");
  std::string root = src != nullptr ? src : QUANTD_TEST_SOURCE_DIR;
  return root + "/" + rel;
}

// $QUANTD_SOURCE_DIR/examples/<rel>.
inline std::string ExamplePath(const std::string& rel) { return SourcePath("examples/" + rel); }

// The SmolLM2-135M directory scripts/fetch_smollm2.sh writes:
// ${QUANTD_CACHE:-$HOME/.cache/quantd}/smollm2-135m/hf (absent in CI: tests skip).
inline std::string Smollm2Dir() {
  const char* cache = std::getenv("QUANTD_CACHE");
  const char* home = std::getenv("HOME");
  const std::string root = cache != nullptr ? cache
                           : home != nullptr ? std::string(home) + "/.cache/quantd"
                                             : "/nonexistent";
  return root + "/smollm2-135m/hf";
}

// Llama 3's RoPE scaling (rope_type llama3, rope_theta 500000, factor 8, low/high frequency
// factors 1 and 4) for a model trained with `original_max_position_embeddings`.
inline RopeParams Llama3Rope(int original_max_position_embeddings) {
  RopeParams p;
  p.type = RopeType::kLlama3;
  p.theta = 500000;
  p.factor = 8;
  p.low_freq_factor = 1;
  p.high_freq_factor = 4;
  p.original_max_position_embeddings = original_max_position_embeddings;
  return p;
}

// A config's sizes, compared in one EXPECT_EQ against a model's published ones.
struct ConfigSizes {
  int hidden = 0, intermediate = 0, layers = 0, heads = 0, kv_heads = 0, vocab = 0;
  auto Tie() const { return std::tie(hidden, intermediate, layers, heads, kv_heads, vocab); }
  bool operator==(const ConfigSizes& o) const { return Tie() == o.Tie(); }
};
inline ConfigSizes SizesOf(const LlamaConfig& c) {
  return {c.hidden_size, c.intermediate_size, c.num_layers,
          c.num_heads,   c.num_kv_heads,        c.vocab_size};
}
inline std::ostream& operator<<(std::ostream& os, const ConfigSizes& s) {
  return os << "{hidden " << s.hidden << ", intermediate " << s.intermediate << ", layers "
            << s.layers << ", heads " << s.heads << ", kv_heads " << s.kv_heads << ", vocab "
            << s.vocab << "}";
}

struct Stories260K {
  LlamaConfig cfg;
  LlamaWeights w;
};

// Loads examples/stories260K; returns nullptr (with the error printed) on failure.
inline std::unique_ptr<Stories260K> LoadStories260K() {
  const std::string dir = ExamplePath("stories260K");
  auto cfg = LoadLlamaConfig(dir);
  if (!cfg.ok()) return nullptr;
  auto ckpt = Checkpoint::Open(dir);
  if (!ckpt.ok()) return nullptr;
  auto w = LoadLlamaWeights(**ckpt, *cfg);
  if (!w.ok()) return nullptr;
  auto out = std::make_unique<Stories260K>();
  out->cfg = *cfg;
  out->w = std::move(*w);
  return out;
}

// Gradient check by central differences: for each coordinate i in `idx`,
// fd = (loss(θ + h·e_i) − loss(θ − h·e_i)) / 2h against the analytic g[i]. Returns
// {max |g[i] − fd|, max |fd|} (θ is restored).
inline std::pair<double, double> CentralDifferenceError(double* theta, const double* g,
                                                        const std::vector<long>& idx,
                                                        const std::function<double()>& loss,
                                                        double h = 1e-5) {
  double max_err = 0, max_fd = 0;
  for (long i : idx) {
    const double keep = theta[i];
    theta[i] = keep + h;
    const double up = loss();
    theta[i] = keep - h;
    const double down = loss();
    theta[i] = keep;
    const double fd = (up - down) / (2 * h);
    max_err = std::max(max_err, std::abs(fd - g[i]));
    max_fd = std::max(max_fd, std::abs(fd));
  }
  return {max_err, max_fd};
}

}  // namespace quantd::model::testing

#endif  // QUANTD_ENGINE_MODEL_TEST_UTIL_H_
