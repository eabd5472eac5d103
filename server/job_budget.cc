#include "server/job_budget.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/quant/bit_budget.h"
#include "engine/spec/quant_spec.h"

namespace quantd::server {

absl::StatusOr<JobAllocation> AllocateJobBits(const quantd::v1::Job& job,
                                              const std::vector<TaskRow>& tasks) {
  const quantd::v1::QuantSpec& spec = job.spec();
  if (!runner::HasBitBudget(spec)) {
    return absl::InvalidArgumentError(absl::StrCat("job ", job.id(), " has no bit budget"));
  }
  // Matrices in the order of their first task (task ids follow the job graph), widths in
  // kBudgetWidths order: a fixed order, so ties and sums come out the same every time.
  std::vector<std::string> names;
  std::map<std::string, std::map<int, const TaskRow*>> rows;
  for (const TaskRow& t : tasks) {
    if (t.task.kind() != quantd::v1::TASK_KIND_QUANTIZE) continue;
    auto [it, fresh] = rows.try_emplace(t.task.quantize().tensor_name());
    if (fresh) names.push_back(t.task.quantize().tensor_name());
    it->second[t.task.spec().bits()] = &t;
  }
  const bool absolute = spec.budget_weight() == "abs";
  std::vector<quant::BudgetMatrix> mats;
  std::vector<std::vector<const TaskRow*>> picks;
  for (const std::string& name : names) {
    quant::BudgetMatrix m;
    std::vector<const TaskRow*> p;
    for (int b : runner::kBudgetWidths) {
      auto it = rows[name].find(b);
      if (it == rows[name].end() || it->second->state != TaskRowState::kDone) {
        return absl::FailedPreconditionError(
            absl::StrCat("bit budget: ", name, " has no quantized result at ", b, " bits"));
      }
      const quantd::v1::TaskReportHeader& r = it->second->result;
      if (r.weights() < 1 || (m.numel != 0 && r.weights() != m.numel)) {
        return absl::DataLossError(absl::StrCat("bit budget: ", name, " at ", b,
                                                " bits reports ", r.weights(), " weights, expected ",
                                                m.numel));
      }
      m.numel = r.weights();
      const double weight = absolute ? r.weight_energy() : 1.0;
      m.choices.push_back({b, std::max(0.0, weight * r.proxy_loss())});
      p.push_back(it->second);
    }
    mats.push_back(std::move(m));
    picks.push_back(std::move(p));
  }
  QUANTD_ASSIGN_OR_RETURN(quant::BitAllocation a, quant::AllocateBits(mats, spec.avg_bits()));
  JobAllocation out;
  double stored = 0, numel = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    const TaskRow* t = picks[i][a.choice[i]];
    out.by_tensor[names[i]] = {t->task_id, a.bits[i]};
    ++out.matrices_at_bits[a.bits[i]];
    stored += 8.0 * static_cast<double>(t->result.result_size());
    numel += static_cast<double>(mats[i].numel);
  }
  out.code_bits_per_weight = a.avg_bits;
  out.stored_bits_per_weight = stored / numel;
  out.objective = a.loss;
  return out;
}

}  // namespace quantd::server
