// The coordinator's side of a bit budget (QuantSpec.avg_bits, issue 24): after the quantize
// phase, every matrix has one done task per width of runner::kBudgetWidths; AllocateJobBits
// chooses one per matrix with quant::AllocateBits from what the workers reported (relative proxy
// loss, tr(W H Wᵀ), weight count). It is a pure function of the task rows, which a retried task
// reproduces bit for bit (same inputs, same seed, same bytes), so the choice is the same after a
// retry or a coordinator restart.
// Thread-safety: a pure function.
#ifndef QUANTD_SERVER_JOB_BUDGET_H_
#define QUANTD_SERVER_JOB_BUDGET_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/quantd.pb.h"
#include "server/job_store.h"

namespace quantd::server {

struct JobAllocation {
  struct Choice {
    int64_t task_id = 0;  // the quantize task whose result is kept
    int bits = 0;
  };
  std::map<std::string, Choice> by_tensor;  // tensor name → choice
  double code_bits_per_weight = 0;          // Σ bits·weights / Σ weights
  double stored_bits_per_weight = 0;        // Σ packed bytes·8 / Σ weights (headers, scales too)
  double objective = 0;                     // the minimized Σ loss
  std::map<int, int> matrices_at_bits;      // width → matrices
};

// FAILED_PRECONDITION when a matrix lacks a done result at some width or the budget is
// infeasible; DATA_LOSS when the widths of one matrix report different weight counts.
// INVALID_ARGUMENT when the job has no bit budget.
absl::StatusOr<JobAllocation> AllocateJobBits(const quantd::v1::Job& job,
                                              const std::vector<TaskRow>& tasks);

}  // namespace quantd::server

#endif  // QUANTD_SERVER_JOB_BUDGET_H_
