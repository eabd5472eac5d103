// JobTable: a transition is applied to memory only after the store took it; reload; the
// request-id index.
#include "server/job_table.h"

#include <cstdlib>

#include "common/file_util.h"
#include "gtest/gtest.h"

namespace quantd::server {
namespace {

JobRow TwoTaskJob(const std::string& id, const std::string& request_id) {
  JobRow row;
  row.job.set_id(id);
  row.job.set_request_id(request_id);
  row.job.set_name("m");
  row.job.set_request_fingerprint("fp-" + request_id);
  row.job.set_state(quantd::v1::JOB_STATE_QUEUED);
  for (int i = 0; i < 2; ++i) {
    TaskRow t;
    t.task_id = i;
    t.task.set_kind(quantd::v1::TASK_KIND_QUANTIZE);
    t.task.mutable_quantize()->set_tensor_name("t" + std::to_string(i));
    row.tasks.push_back(t);
  }
  return row;
}

class JobTableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/quantd_table_XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    auto t = JobTable::Open(dir_, &metrics_);
    ASSERT_TRUE(t.ok()) << t.status();
    table_ = std::move(*t);
  }
  void TearDown() override {
    table_.reset();
    RemoveAll(dir_).IgnoreError();
  }
  void FailWrites(bool on) {
    table_->store().SetWriteFaultForTesting(
        on ? std::function<absl::Status()>([] { return absl::UnavailableError("injected"); })
           : nullptr);
  }

  std::string dir_;
  Metrics metrics_;
  std::unique_ptr<JobTable> table_;
};

TEST_F(JobTableTest, ATransitionChangesMemoryOnlyAfterTheStoreTookIt) {
  quantd::v1::SubmitJobRequest req;
  req.set_request_id("r-1");
  ASSERT_TRUE(table_->ReserveRequest(req, "fp-r-1").ok());
  ASSERT_TRUE(table_->Insert(TwoTaskJob("j-1", "r-1"), "r-1").ok());

  MutexLock l(table_->mu());
  JobEntry* e = table_->FindLocked("j-1");
  ASSERT_NE(e, nullptr);
  const std::string lease =
      table_->GrantLeaseLocked(*e, e->tasks[0], "w-1", "worker", absl::InfiniteFuture());
  EXPECT_EQ(e->job.tasks_running(), 1);

  // Task 0 done, its lease ended, the job RUNNING: one transition.
  auto done = [&] {
    Transition tr = JobTable::Begin(*e);
    tr.job.set_state(quantd::v1::JOB_STATE_RUNNING);
    TaskRow row = e->tasks[0].row;
    row.state = TaskRowState::kDone;
    row.attempts = 1;
    tr.rows.push_back(row);
    tr.end_leases.push_back(0);
    return tr;
  };
  FailWrites(true);
  EXPECT_EQ(table_->CommitLocked(*e, done()).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(e->job.state(), quantd::v1::JOB_STATE_QUEUED);
  EXPECT_EQ(e->tasks[0].row.state, TaskRowState::kPending);
  EXPECT_EQ(e->tasks[0].row.attempts, 0);
  EXPECT_TRUE(e->tasks[0].leased);
  EXPECT_EQ(e->tasks[0].lease_id, lease);
  EXPECT_EQ(e->job.tasks_running(), 1);
  EXPECT_EQ(e->job.tasks_done(), 0);
  // Ending the job fails the same way.
  EXPECT_EQ(table_->FailJobLocked(*e, "boom").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(e->job.state(), quantd::v1::JOB_STATE_QUEUED);
  EXPECT_TRUE(e->tasks[0].leased);

  FailWrites(false);
  ASSERT_TRUE(table_->CommitLocked(*e, done()).ok());
  EXPECT_EQ(e->job.state(), quantd::v1::JOB_STATE_RUNNING);
  EXPECT_EQ(e->tasks[0].row.state, TaskRowState::kDone);
  EXPECT_FALSE(e->tasks[0].leased);
  EXPECT_EQ(e->job.tasks_running(), 0);
  EXPECT_EQ(e->job.tasks_done(), 1);
  EXPECT_DOUBLE_EQ(e->job.progress(), 1.0 / 3);  // 2 tasks + the publish step

  // A row the job does not have: nothing is written.
  Transition bad = JobTable::Begin(*e);
  TaskRow ghost;
  ghost.task_id = 7;
  bad.rows.push_back(ghost);
  EXPECT_EQ(table_->CommitLocked(*e, std::move(bad)).code(), absl::StatusCode::kInternal);

  // Ending the job cancels its pending task and every lease.
  table_->GrantLeaseLocked(*e, e->tasks[1], "w-1", "worker", absl::InfiniteFuture());
  ASSERT_TRUE(table_->FailJobLocked(*e, "boom").ok());
  EXPECT_EQ(e->job.state(), quantd::v1::JOB_STATE_FAILED);
  EXPECT_EQ(e->job.error(), "boom");
  EXPECT_EQ(e->tasks[1].row.state, TaskRowState::kCancelled);
  EXPECT_FALSE(e->tasks[1].leased);
  EXPECT_EQ(e->job.tasks_running(), 0);
}

TEST_F(JobTableTest, ReloadsWhatWasStoredAndOnlyThat) {
  ASSERT_TRUE(table_->Insert(TwoTaskJob("j-1", "r-1"), "r-1").ok());
  {
    MutexLock l(table_->mu());
    JobEntry* e = table_->FindLocked("j-1");
    table_->GrantLeaseLocked(*e, e->tasks[1], "w-1", "worker", absl::InfiniteFuture());
    Transition tr = JobTable::Begin(*e);
    tr.job.set_state(quantd::v1::JOB_STATE_RUNNING);
    TaskRow row = e->tasks[0].row;
    row.state = TaskRowState::kDone;
    tr.rows.push_back(row);
    ASSERT_TRUE(table_->CommitLocked(*e, std::move(tr)).ok());
    FailWrites(true);
    Transition lost = JobTable::Begin(*e);
    lost.phase = 3;
    EXPECT_FALSE(table_->CommitLocked(*e, std::move(lost)).ok());
    FailWrites(false);
  }
  table_.reset();
  auto t = JobTable::Open(dir_, &metrics_);
  ASSERT_TRUE(t.ok()) << t.status();
  table_ = std::move(*t);
  MutexLock l(table_->mu());
  JobEntry* e = table_->FindLocked("j-1");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->job.state(), quantd::v1::JOB_STATE_RUNNING);
  EXPECT_EQ(e->phase, 0);  // the failed transition was not stored
  EXPECT_EQ(e->tasks[0].row.state, TaskRowState::kDone);
  EXPECT_EQ(e->tasks[1].row.state, TaskRowState::kPending);  // a lease does not survive
  EXPECT_FALSE(e->tasks[1].leased);
  EXPECT_EQ(e->job.tasks_running(), 0);
  EXPECT_TRUE(e->inputs_unverified);  // checked by the engine before anything of it runs
  EXPECT_EQ(table_->OrderLocked(), std::vector<std::string>{"j-1"});
}

TEST_F(JobTableTest, ARequestIdIsTheSameJobOnlyForTheSameFingerprint) {
  quantd::v1::SubmitJobRequest req;
  req.set_request_id("r-1");
  auto first = table_->ReserveRequest(req, "fp-r-1");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->has_value());  // reserved
  ASSERT_TRUE(table_->Insert(TwoTaskJob("j-1", "r-1"), "r-1").ok());
  auto again = table_->ReserveRequest(req, "fp-r-1");
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_TRUE(again->has_value());
  EXPECT_EQ((*again)->id(), "j-1");
  auto other = table_->ReserveRequest(req, "another");
  EXPECT_EQ(other.status().code(), absl::StatusCode::kAlreadyExists);
  // A reservation given up leaves the id free.
  req.set_request_id("r-2");
  ASSERT_TRUE(table_->ReserveRequest(req, "fp-r-2").ok());
  table_->ReleaseRequest("r-2");
  auto free = table_->ReserveRequest(req, "fp-r-2");
  ASSERT_TRUE(free.ok());
  EXPECT_FALSE(free->has_value());
}

}  // namespace
}  // namespace quantd::server
