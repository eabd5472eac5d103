// JobStore: durable record of every job and task (SQLite in WAL mode, synchronous=FULL).
// The coordinator writes here before it acknowledges anything, and rebuilds its in-memory
// state from here after a restart. Rows hold serialized protos plus the columns we query by.
// Thread-safety: thread-safe (one connection guarded by a mutex).
#ifndef QUANTD_SERVER_JOB_STORE_H_
#define QUANTD_SERVER_JOB_STORE_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/mutex.h"
#include "proto/quantd.pb.h"

struct sqlite3;

namespace quantd::server {

// Task state as stored. A leased task is stored as pending: a lease does not survive a restart.
enum class TaskRowState { kPending = 0, kDone = 1, kFailed = 2, kCancelled = 3 };

struct TaskRow {
  int64_t task_id = 0;
  int phase = 0;
  TaskRowState state = TaskRowState::kPending;
  int attempts = 0;
  quantd::v1::Task task;                  // without lease id
  quantd::v1::TaskReportHeader result;    // set when done
};

struct JobRow {
  quantd::v1::Job job;
  int phase = 0;
  std::vector<TaskRow> tasks;
};

class JobStore {
 public:
  // Opens or creates `path`. INTERNAL if SQLite fails.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const std::string& path);
  ~JobStore();

  // Inserts a job and all its tasks in one transaction. ALREADY_EXISTS if the request id is taken.
  absl::Status InsertJob(const JobRow& row);
  // Updates the job's proto and phase.
  absl::Status UpdateJob(const quantd::v1::Job& job, int phase);
  // Updates one task (state, attempts, result).
  absl::Status UpdateTask(const std::string& job_id, const TaskRow& task);
  // Updates a job and some of its tasks in one transaction.
  absl::Status UpdateJobAndTasks(const quantd::v1::Job& job, int phase,
                                 const std::vector<const TaskRow*>& tasks);
  // Every job with its tasks, oldest first.
  absl::StatusOr<std::vector<JobRow>> LoadAll();

  // Test seam: while `fault` is set, every write above first calls it and returns its status
  // instead of writing when that is not OK (a full disk, a lost volume). Default: none.
  void SetWriteFaultForTesting(std::function<absl::Status()> fault);

 private:
  explicit JobStore(sqlite3* db) : db_(db) {}
  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status UpdateJobLocked(const quantd::v1::Job& job, int phase)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status UpdateTaskLocked(const std::string& job_id, const TaskRow& task)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Status InjectedFaultLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Mutex mu_;
  sqlite3* db_ ABSL_GUARDED_BY(mu_);
  std::function<absl::Status()> fault_ ABSL_GUARDED_BY(mu_);
};

}  // namespace quantd::server

#endif  // QUANTD_SERVER_JOB_STORE_H_
