#include "bench/bench_budget.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "bench/bench.h"
#include "common/status_macros.h"
#include "engine/quant/bit_budget.h"
#include "engine/quant/quantize.h"
#include "nlohmann/json.hpp"

namespace quantd::bench {
namespace {

constexpr int kWidths[] = {2, 3, 4};

// `src` with matrix i replaced by the dequantized pick[i] of `q` (per width index).
absl::StatusOr<model::LlamaWeights> Mixed(const model::LlamaWeights& src, const MatrixList& items,
                                          const std::vector<const Quantized*>& q,
                                          const std::vector<int>& pick) {
  model::LlamaWeights w = src;
  std::vector<absl::Status> errs(items.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < items.size(); ++i) {
    auto deq = quant::DequantizeMatrix(q[pick[i]]->packed[i]);
    if (!deq.ok()) {
      errs[i] = deq.status();
      continue;
    }
    model::MutableLinear(w, items[i].first, items[i].second) = std::move(*deq);
  }
  for (const absl::Status& s : errs) QUANTD_RETURN_IF_ERROR(s);
  return w;
}

}  // namespace

double StoredBitsPerWeight(const std::vector<std::string>& packed, const model::LlamaWeights& w,
                           const MatrixList& items) {
  double bytes = 0, numel = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    bytes += static_cast<double>(packed[i].size());
    numel += static_cast<double>(model::GetLinear(w, items[i].first, items[i].second).size());
  }
  return numel > 0 ? 8 * bytes / numel : 0;
}

absl::Status RunBudget(const BudgetRun& run,
                       const std::function<absl::StatusOr<Quantized>(int bits)>& quantize_at,
                       std::map<std::string, Quantized>* done,
                       std::map<std::string, std::vector<double>>* dnll_cache) {
  const MatrixList& items = *run.items;
  const size_t n = items.size();
  for (const std::string& w : run.weights) {
    if (w != "rel" && w != "abs" && w != "measured") {
      return absl::InvalidArgumentError(
          absl::StrCat("--budget-weights: unknown objective \"", w, "\" (rel, abs, measured)"));
    }
  }
  // Every width, reusing the uniform rows of this run.
  auto t0 = std::chrono::steady_clock::now();
  std::vector<const Quantized*> by_width;
  for (int b : kWidths) {
    const std::string key = absl::StrCat(run.method, "/", b);
    if (!done->count(key)) {
      QUANTD_ASSIGN_OR_RETURN((*done)[key], quantize_at(b));
    }
    by_width.push_back(&done->at(key));
  }
  const double qsecs = Seconds(t0);
  // tr(W H Wᵀ) per matrix: relative proxy loss × energy = tr(E H Eᵀ), the output-error energy
  // per calibration token.
  std::vector<double> energy(n);
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < n; ++i) {
    const auto [l, lin] = items[i];
    const model::LinearGroup g = model::GroupOf(lin);
    const MatrixD h = run.cap->Sum(l, g) / static_cast<double>(run.cap->Tokens(l, g));
    const MatrixD w = model::GetLinear(*run.src, l, lin).cast<double>();
    energy[i] = (w * h).cwiseProduct(w).sum();
  }
  // Measured sensitivity: the calibration NLL increase with matrix i alone at 2 bits.
  std::vector<double>& dnll = (*dnll_cache)[run.method];
  if (dnll.empty() &&
      std::find(run.weights.begin(), run.weights.end(), "measured") != run.weights.end()) {
    dnll.assign(n, 0.0);
    t0 = std::chrono::steady_clock::now();
    model::PerplexityOptions so = run.popts;
    so.max_tokens = std::min<int64_t>(run.sens_tokens, static_cast<int64_t>(run.calib->size()));
    QUANTD_ASSIGN_OR_RETURN(model::PerplexityResult base,
                            model::Perplexity(*run.cfg, *run.src, *run.calib, so));
    model::LlamaWeights w = *run.src;
    for (size_t i = 0; i < n; ++i) {
      const auto [l, lin] = items[i];
      QUANTD_ASSIGN_OR_RETURN(MatrixF deq, quant::DequantizeMatrix(by_width[0]->packed[i]));
      model::MutableLinear(w, l, lin) = std::move(deq);
      QUANTD_ASSIGN_OR_RETURN(model::PerplexityResult r,
                              model::Perplexity(*run.cfg, w, *run.calib, so));
      dnll[i] = r.mean_nll - base.mean_nll;
      model::MutableLinear(w, l, lin) = model::GetLinear(*run.src, l, lin);
    }
    nlohmann::json sens = {{"method", run.method},
                           {"sensitivity_tokens", so.max_tokens},
                           {"base_nll", base.mean_nll},
                           {"dnll_at_2bits", dnll},
                           {"abs_proxy_at_2bits", nlohmann::json::array()},
                           {"seconds", Seconds(t0)}};
    for (size_t i = 0; i < n; ++i) sens["abs_proxy_at_2bits"].push_back(by_width[0]->proxy[i] * energy[i]);
    std::printf("%s\n", sens.dump().c_str());
    std::fflush(stdout);
  }
  bool first = true;
  for (const std::string& objective : run.weights) {
    std::vector<quant::BudgetMatrix> mats(n);
    for (size_t i = 0; i < n; ++i) {
      const auto [l, lin] = items[i];
      mats[i].numel = model::GetLinear(*run.src, l, lin).size();
      // Weight × relative proxy loss: rel 1; abs the energy; measured ΔNLL(2 bits) per unit of
      // relative loss at 2 bits (floored: a matrix whose 2-bit ΔNLL is within noise of zero
      // still prefers fewer errors).
      double weight = 1;
      if (objective == "abs") weight = energy[i];
      if (objective == "measured") {
        weight = std::max(dnll[i], 1e-6) / std::max(by_width[0]->proxy[i], 1e-30);
      }
      for (size_t k = 0; k < std::size(kWidths); ++k) {
        mats[i].choices.push_back({kWidths[k], weight * by_width[k]->proxy[i]});
      }
    }
    QUANTD_ASSIGN_OR_RETURN(quant::BitAllocation a, quant::AllocateBits(mats, run.avg_bits));
    QUANTD_ASSIGN_OR_RETURN(model::LlamaWeights w, Mixed(*run.src, items, by_width, a.choice));
    std::vector<std::string> chosen(n);
    double mean = 0;
    int nguard = 0;
    std::map<std::string, double> by_linear;
    std::map<int, int> count;
    for (size_t i = 0; i < n; ++i) {
      const Quantized& q = *by_width[a.choice[i]];
      chosen[i] = q.packed[i];
      mean += q.proxy[i] / n;
      nguard += q.guarded[i];
      by_linear[std::string(model::LinearName(items[i].second))] +=
          a.bits[i];
      ++count[a.bits[i]];
    }
    for (auto& [name, sum] : by_linear) sum /= run.cfg->num_layers;
    t0 = std::chrono::steady_clock::now();
    auto p = model::Perplexity(*run.cfg, w, *run.eval, run.popts);
    nlohmann::json out = {{"method", run.method},
                          {"avg_bits", run.avg_bits},
                          {"budget_weight", objective},
                          {"code_bits_per_weight", a.avg_bits},
                          {"stored_bits_per_weight", StoredBitsPerWeight(chosen, *run.src, items)},
                          {"matrices_at_bits", {{"2", count[2]}, {"3", count[3]}, {"4", count[4]}}},
                          {"mean_bits_by_linear", by_linear},
                          {"mean_proxy_loss", mean},
                          {"ppl", p.ok() ? p->ppl : -1.0},
                          {"eval_seconds", Seconds(t0)},
                          {"guard_kept_gptq", nguard},
                          {"bits", a.bits}};
    if (first) {
      out["quantize_seconds"] = qsecs;
      if (run.hessian_secs > 0) out["hessian_seconds"] = run.hessian_secs;
      first = false;
    }
    std::printf("%s\n", out.dump().c_str());
    std::fflush(stdout);
  }
  return absl::OkStatus();
}

}  // namespace quantd::bench
