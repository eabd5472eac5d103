// quantd-bench methods' bit budget rows (METHOD/bX, bench_methods.cc): quantize every matrix at
// 2, 3 and 4 bits, allocate widths under each objective with quant::AllocateBits and evaluate
// the mixed model. Thread-safety: one call at a time (it runs OpenMP loops itself).
#ifndef QUANTD_BENCH_BENCH_BUDGET_H_
#define QUANTD_BENCH_BENCH_BUDGET_H_

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/model/config.h"
#include "engine/model/hessian_capture.h"
#include "engine/model/perplexity.h"
#include "engine/model/weights.h"

namespace quantd::bench {

// One configuration's quantized matrices, in the order of a MatrixList.
struct Quantized {
  std::vector<std::string> packed;
  std::vector<double> proxy;  // relative proxy loss
  std::vector<int> guarded;   // 1 where the baseline guard kept gptq
};
using MatrixList = std::vector<std::pair<int, model::Linear>>;  // (layer, linear)

// Σ packed bytes · 8 / Σ weights: what is stored per weight, headers and scales included.
double StoredBitsPerWeight(const std::vector<std::string>& packed, const model::LlamaWeights& w,
                           const MatrixList& items);

struct BudgetRun {
  std::string method;                  // as written in the config ("quip-sharp")
  double avg_bits = 0;                 // the target, code bits per weight
  const model::HessianCapture* cap;    // the Hessians every width was quantized from
  const model::LlamaConfig* cfg;
  const model::LlamaWeights* src;      // the fp (or rotated fp) weights
  const MatrixList* items;
  std::vector<std::string> weights;    // objectives: "rel", "abs", "measured"
  int64_t sens_tokens = 1024;          // calibration tokens for "measured"
  const std::vector<int32_t>* calib;
  const std::vector<int32_t>* eval;
  model::PerplexityOptions popts;      // evaluation
  double hessian_secs = 0;             // reported on the first row
};

// Prints one JSON line per objective (and one with the measured sensitivities when asked).
// quantize_at(bits) quantizes every matrix at `bits`; results already in `done` under
// "<method>/<bits>" are reused and new ones added; so are the measured sensitivities in
// `dnll_cache` (by method). INVALID_ARGUMENT for an unknown objective.
absl::Status RunBudget(const BudgetRun& run,
                       const std::function<absl::StatusOr<Quantized>(int bits)>& quantize_at,
                       std::map<std::string, Quantized>* done,
                       std::map<std::string, std::vector<double>>* dnll_cache);

}  // namespace quantd::bench

#endif  // QUANTD_BENCH_BENCH_BUDGET_H_
