#include "server/job_budget.h"

#include "gtest/gtest.h"

namespace quantd::server {
namespace {

// Quantize rows for `names` at 2/3/4 bits: relative loss rel[i][k], energy energy[i],
// `weights` weights each, result size = bits·weights/8 + 100 bytes.
std::vector<TaskRow> Rows(const std::vector<std::string>& names,
                          const std::vector<std::vector<double>>& rel,
                          const std::vector<double>& energy, int64_t weights) {
  std::vector<TaskRow> rows;
  TaskRow eval;
  eval.task.set_kind(quantd::v1::TASK_KIND_EVAL);
  rows.push_back(eval);
  for (size_t i = 0; i < names.size(); ++i) {
    for (int k = 0; k < 3; ++k) {
      TaskRow t;
      t.task_id = static_cast<int64_t>(rows.size());
      t.state = TaskRowState::kDone;
      t.task.set_kind(quantd::v1::TASK_KIND_QUANTIZE);
      t.task.mutable_quantize()->set_tensor_name(names[i]);
      t.task.mutable_spec()->set_bits(2 + k);
      t.result.set_proxy_loss(rel[i][k]);
      t.result.set_weight_energy(energy[i]);
      t.result.set_weights(weights);
      t.result.set_result_size(static_cast<uint64_t>((2 + k) * weights / 8 + 100));
      rows.push_back(t);
    }
  }
  return rows;
}

TEST(JobBudgetTest, KeepsTheCheapestLossWithinTheBudget) {
  quantd::v1::Job job;
  job.mutable_spec()->set_method("quip-sharp");
  job.mutable_spec()->set_avg_bits(3.0);
  job.mutable_spec()->set_budget_weight("abs");
  // a: low energy, b: high energy (same relative losses). At 3 bits on average with two
  // matrices, abs spends on b (2 + 4), rel has no reason to move off uniform 3.
  const std::vector<std::string> names = {"a", "b"};
  const std::vector<std::vector<double>> rel = {{0.04, 0.01, 0.0025}, {0.04, 0.01, 0.0025}};
  std::vector<TaskRow> rows = Rows(names, rel, {1.0, 100.0}, 800);
  auto a = AllocateJobBits(job, rows);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->by_tensor.at("a").bits, 2);
  EXPECT_EQ(a->by_tensor.at("b").bits, 4);
  EXPECT_EQ(a->by_tensor.at("b").task_id, 6);  // row 0 is the eval; b's 4-bit task is the 6th
  EXPECT_DOUBLE_EQ(a->code_bits_per_weight, 3.0);
  EXPECT_DOUBLE_EQ(a->stored_bits_per_weight, 8.0 * (200 + 400 + 200) / 1600);
  EXPECT_DOUBLE_EQ(a->objective, 1.0 * 0.04 + 100.0 * 0.0025);
  EXPECT_EQ(a->matrices_at_bits.at(2), 1);
  job.mutable_spec()->set_budget_weight("rel");
  a = AllocateJobBits(job, rows);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->by_tensor.at("a").bits, 3);
  EXPECT_EQ(a->by_tensor.at("b").bits, 3);
}

TEST(JobBudgetTest, RefusesMissingOrInconsistentResults) {
  quantd::v1::Job job;
  job.mutable_spec()->set_avg_bits(2.5);
  std::vector<TaskRow> rows = Rows({"a"}, {{0.1, 0.05, 0.01}}, {1.0}, 64);
  EXPECT_TRUE(AllocateJobBits(job, rows).ok());
  std::vector<TaskRow> pending = rows;
  pending[2].state = TaskRowState::kPending;
  EXPECT_EQ(AllocateJobBits(job, pending).status().code(), absl::StatusCode::kFailedPrecondition);
  std::vector<TaskRow> odd = rows;
  odd[3].result.set_weights(65);
  EXPECT_EQ(AllocateJobBits(job, odd).status().code(), absl::StatusCode::kDataLoss);
  quantd::v1::Job plain;
  plain.mutable_spec()->set_bits(2);
  EXPECT_EQ(AllocateJobBits(plain, rows).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quantd::server
