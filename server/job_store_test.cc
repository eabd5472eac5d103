#include "server/job_store.h"

#include <cstdlib>

#include "common/file_util.h"
#include "gtest/gtest.h"

namespace quantd::server {
namespace {

TEST(JobStore, PersistsJobsAndTasksAcrossReopen) {
  char tmpl[] = "/tmp/quantd_store_XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  std::string db = JoinPath(dir, "q.db");
  {
    auto store = JobStore::Open(db);
    ASSERT_TRUE(store.ok()) << store.status();
    JobRow row;
    row.job.set_id("j-1");
    row.job.set_request_id("r-1");
    row.job.set_name("m");
    for (int i = 0; i < 3; ++i) {
      TaskRow t;
      t.task_id = i;
      t.phase = i;
      t.task.set_kind(quantd::v1::TASK_KIND_QUANTIZE);
      t.task.mutable_quantize()->set_tensor_name("t" + std::to_string(i));
      row.tasks.push_back(t);
    }
    ASSERT_TRUE((*store)->InsertJob(row).ok());
    // The same request id again is refused.
    JobRow dup = row;
    dup.job.set_id("j-2");
    EXPECT_EQ((*store)->InsertJob(dup).code(), absl::StatusCode::kAlreadyExists);
    row.tasks[1].state = TaskRowState::kDone;
    row.tasks[1].attempts = 2;
    row.tasks[1].result.set_proxy_loss(0.25);
    row.job.set_state(quantd::v1::JOB_STATE_RUNNING);
    ASSERT_TRUE((*store)->UpdateJobAndTasks(row.job, 1, {&row.tasks[1]}).ok());
  }
  auto store = JobStore::Open(db);
  ASSERT_TRUE(store.ok());
  auto rows = (*store)->LoadAll();
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 1u);
  const JobRow& r = (*rows)[0];
  EXPECT_EQ(r.job.id(), "j-1");
  EXPECT_EQ(r.phase, 1);
  EXPECT_EQ(r.job.state(), quantd::v1::JOB_STATE_RUNNING);
  ASSERT_EQ(r.tasks.size(), 3u);
  EXPECT_EQ(r.tasks[1].state, TaskRowState::kDone);
  EXPECT_EQ(r.tasks[1].attempts, 2);
  EXPECT_DOUBLE_EQ(r.tasks[1].result.proxy_loss(), 0.25);
  EXPECT_EQ(r.tasks[2].task.quantize().tensor_name(), "t2");
  RemoveAll(dir).IgnoreError();
}

// Tasks stored before worker API version 2 kept their per-kind fields at the top level of Task
// (TaskStoredV1); loading moves them into the kind's `work` message.
TEST(JobStore, LoadsTasksStoredBeforeTheirPerKindMessages) {
  char tmpl[] = "/tmp/quantd_store_XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  std::string db = JoinPath(dir, "q.db");
  std::vector<quantd::v1::TaskStoredV1> v1(4);
  v1[0].set_kind(quantd::v1::TASK_KIND_HESSIAN);
  v1[0].set_token_begin(64);
  v1[0].set_token_end(192);
  v1[0].set_seq_len(64);
  v1[0].set_layer(2);
  v1[0].set_layer_count(3);
  v1[1].set_kind(quantd::v1::TASK_KIND_QUANTIZE);
  v1[1].set_layer(1);
  v1[1].set_linear("down_proj");
  v1[1].set_tensor_name("model.layers.1.mlp.down_proj.weight");
  v1[1].set_seed(77);
  v1[2].set_kind(quantd::v1::TASK_KIND_EVAL);
  v1[2].set_eval_target("quantized");
  v1[2].set_eval_context(256);
  v1[2].set_start_token_id(1);
  // The fine-tuning kind's block was already a message (field 41, now in `work`); its sequence
  // range was flat.
  v1[3].set_kind(quantd::v1::TASK_KIND_FINETUNE);
  v1[3].set_seq_len(512);
  v1[3].set_token_begin(0);
  v1[3].set_token_end(2048);
  {
    auto store = JobStore::Open(db);
    ASSERT_TRUE(store.ok()) << store.status();
    JobRow row;
    row.job.set_id("j-old");
    row.job.set_request_id("r-old");
    for (int i = 0; i < 4; ++i) {
      TaskRow t;
      t.task_id = i;
      // The old bytes, as the store holds them (unknown fields survive the round trip).
      ASSERT_TRUE(t.task.ParseFromString(v1[i].SerializeAsString()));
      if (i == 3) t.task.mutable_finetune()->set_block(3);
      t.task.set_job_id("j-old");
      row.tasks.push_back(t);
    }
    ASSERT_TRUE((*store)->InsertJob(row).ok());
  }
  auto store = JobStore::Open(db);
  ASSERT_TRUE(store.ok());
  auto rows = (*store)->LoadAll();
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 1u);
  const std::vector<TaskRow>& t = (*rows)[0].tasks;
  ASSERT_EQ(t.size(), 4u);
  ASSERT_TRUE(t[0].task.has_hessian());
  EXPECT_EQ(t[0].task.hessian().token_begin(), 64);
  EXPECT_EQ(t[0].task.hessian().token_end(), 192);
  EXPECT_EQ(t[0].task.hessian().seq_len(), 64);
  EXPECT_EQ(t[0].task.hessian().layer(), 2);
  EXPECT_EQ(t[0].task.hessian().layer_count(), 3);
  ASSERT_TRUE(t[1].task.has_quantize());
  EXPECT_EQ(t[1].task.quantize().layer(), 1);
  EXPECT_EQ(t[1].task.quantize().linear(), "down_proj");
  EXPECT_EQ(t[1].task.quantize().tensor_name(), "model.layers.1.mlp.down_proj.weight");
  EXPECT_EQ(t[1].task.quantize().seed(), 77u);
  ASSERT_TRUE(t[2].task.has_eval());
  EXPECT_EQ(t[2].task.eval().target(), "quantized");
  EXPECT_EQ(t[2].task.eval().context(), 256);
  ASSERT_TRUE(t[2].task.eval().has_start_token_id());
  EXPECT_EQ(t[2].task.eval().start_token_id(), 1);
  ASSERT_TRUE(t[3].task.has_finetune());
  EXPECT_EQ(t[3].task.finetune().block(), 3);
  EXPECT_EQ(t[3].task.finetune().seq_len(), 512);
  EXPECT_EQ(t[3].task.finetune().token_begin(), 0);
  EXPECT_EQ(t[3].task.finetune().token_end(), 2048);
  for (const TaskRow& r : t) {
    EXPECT_EQ(r.task.job_id(), "j-old");
    // Nothing of the old layout is sent on to a worker.
    EXPECT_TRUE(r.task.GetReflection()->GetUnknownFields(r.task).empty());
  }
  RemoveAll(dir).IgnoreError();
}

}  // namespace
}  // namespace quantd::server
