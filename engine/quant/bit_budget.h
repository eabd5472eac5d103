// A bit budget across matrices: given, for every matrix, the loss it would add at each candidate
// width (e.g. 2/3/4 bits) and a target average of code bits per weight, choose one width per
// matrix minimizing the summed loss under
//     Σ_i bits_i · numel_i  ≤  avg_bits · Σ_i numel_i.
// This is a multiple-choice knapsack; it is solved by dynamic programming over the cost in units
// of g bits, where g is the gcd of the matrices' sizes (exact: matrix sizes of one model share a
// large gcd, e.g. 110,592 on SmolLM2-135M) or, when that would exceed kMaxBudgetUnits cells per
// matrix, a coarser unit with every cost rounded up (never over the budget; at most n·g bits of
// the budget are left unused). The budget counts code bits only (bits · numel): callers report
// the stored size beside it (docs/algorithms.md "Bit budget").
// Thread-safety: a pure function.
#ifndef QUANTD_ENGINE_QUANT_BIT_BUDGET_H_
#define QUANTD_ENGINE_QUANT_BIT_BUDGET_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace quantd::quant {

// The DP table holds at most this many cost units (+1) per matrix (one byte each).
inline constexpr int64_t kMaxBudgetUnits = 1 << 17;

struct BitChoice {
  int bits = 0;      // code bits per weight, ≥ 1
  double loss = 0;   // what the matrix adds to the objective at this width (finite, ≥ 0)
};

struct BudgetMatrix {
  int64_t numel = 0;               // weights in the matrix, ≥ 1
  std::vector<BitChoice> choices;  // ≥ 1 candidate widths
};

struct BitAllocation {
  std::vector<int> choice;  // per matrix: the index into its `choices`
  std::vector<int> bits;    // per matrix: the chosen width
  double loss = 0;          // Σ chosen losses
  int64_t code_bits = 0;    // Σ bits·numel
  double avg_bits = 0;      // code_bits / Σ numel
};

// INVALID_ARGUMENT for an empty list, a matrix without choices, numel < 1, bits < 1, a negative
// or non-finite loss or avg_bits; FAILED_PRECONDITION when even the narrowest choice of every
// matrix exceeds the budget (the message gives the smallest average reachable). Ties keep the
// earlier choice index, so the result is a deterministic function of the input.
absl::StatusOr<BitAllocation> AllocateBits(const std::vector<BudgetMatrix>& matrices,
                                           double avg_bits);

}  // namespace quantd::quant

#endif  // QUANTD_ENGINE_QUANT_BIT_BUDGET_H_
