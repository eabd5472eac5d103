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
      t.task.set_tensor_name("t" + std::to_string(i));
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
  EXPECT_EQ(r.tasks[2].task.tensor_name(), "t2");
  RemoveAll(dir).IgnoreError();
}

}  // namespace
}  // namespace quantd::server
