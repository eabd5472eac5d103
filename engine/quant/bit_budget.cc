#include "engine/quant/bit_budget.h"

#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace quantd::quant {

absl::StatusOr<BitAllocation> AllocateBits(const std::vector<BudgetMatrix>& matrices,
                                           double avg_bits) {
  if (matrices.empty()) return absl::InvalidArgumentError("bit budget: no matrices");
  if (!std::isfinite(avg_bits) || avg_bits <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("bit budget: avg_bits ", avg_bits,
                                                   " is not a positive number"));
  }
  const size_t n = matrices.size();
  int64_t total = 0, g = 0, min_bits_total = 0;
  std::vector<int> narrowest(n);
  for (size_t i = 0; i < n; ++i) {
    const BudgetMatrix& m = matrices[i];
    if (m.numel < 1 || m.choices.empty() || m.choices.size() > 255) {
      return absl::InvalidArgumentError(absl::StrCat("bit budget: matrix ", i, " has numel ",
                                                     m.numel, " and ", m.choices.size(),
                                                     " choices (want ≥ 1 and 1..255)"));
    }
    for (size_t j = 0; j < m.choices.size(); ++j) {
      const BitChoice& c = m.choices[j];
      if (c.bits < 1 || c.bits > 64 || !std::isfinite(c.loss) || c.loss < 0) {
        return absl::InvalidArgumentError(absl::StrCat("bit budget: matrix ", i, " choice ", j,
                                                       ": bits ", c.bits, ", loss ", c.loss));
      }
      if (c.bits < m.choices[narrowest[i]].bits) narrowest[i] = static_cast<int>(j);
    }
    total += m.numel;
    g = std::gcd(g, m.numel);
    min_bits_total += int64_t{m.choices[narrowest[i]].bits} * m.numel;
  }
  // The budget in bits, rounded down (an allocation exactly at the target is allowed).
  const int64_t budget = static_cast<int64_t>(std::floor(avg_bits * static_cast<double>(total)));
  if (min_bits_total > budget) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "bit budget: avg_bits %g is below %.6g, the average of the narrowest width of every matrix",
        avg_bits, static_cast<double>(min_bits_total) / static_cast<double>(total)));
  }
  // DP over the cost above the narrowest allocation, in units of `unit` bits: exact when unit =
  // gcd(numel), rounded up (conservative) when the table would be too long.
  const int64_t extra = budget - min_bits_total;
  int64_t unit = g;
  if (extra / unit > kMaxBudgetUnits) unit *= (extra / unit + kMaxBudgetUnits - 1) / kMaxBudgetUnits;
  const int64_t cap = extra / unit;
  std::vector<std::vector<int64_t>> cost(n);
  for (size_t i = 0; i < n; ++i) {
    const BudgetMatrix& m = matrices[i];
    const int64_t base = int64_t{m.choices[narrowest[i]].bits} * m.numel;
    for (const BitChoice& c : m.choices) {
      const int64_t e = int64_t{c.bits} * m.numel - base;  // ≥ 0
      cost[i].push_back((e + unit - 1) / unit);
    }
  }
  // best[c]: the least loss of the matrices so far with extra cost ≤ c units.
  const size_t width = static_cast<size_t>(cap) + 1;
  std::vector<double> best(width, 0.0), next(width);
  std::vector<uint8_t> pick(n * width);
  for (size_t i = 0; i < n; ++i) {
    const auto& ch = matrices[i].choices;
    for (size_t c = 0; c < width; ++c) {
      double v = INFINITY;
      int arg = 0;
      for (size_t j = 0; j < ch.size(); ++j) {
        if (cost[i][j] > static_cast<int64_t>(c)) continue;
        const double cand = best[c - static_cast<size_t>(cost[i][j])] + ch[j].loss;
        if (cand < v) {
          v = cand;
          arg = static_cast<int>(j);
        }
      }
      next[c] = v;
      pick[i * width + c] = static_cast<uint8_t>(arg);
    }
    best.swap(next);
  }
  BitAllocation out;
  out.choice.resize(n);
  out.bits.resize(n);
  size_t c = width - 1;
  for (size_t i = n; i-- > 0;) {
    const int j = pick[i * width + c];
    out.choice[i] = j;
    c -= static_cast<size_t>(cost[i][j]);
  }
  for (size_t i = 0; i < n; ++i) {
    const BitChoice& ch = matrices[i].choices[out.choice[i]];
    out.bits[i] = ch.bits;
    out.loss += ch.loss;
    out.code_bits += int64_t{ch.bits} * matrices[i].numel;
  }
  out.avg_bits = static_cast<double>(out.code_bits) / static_cast<double>(total);
  return out;
}

}  // namespace quantd::quant
