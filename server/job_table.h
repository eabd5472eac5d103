// JobTable: the coordinator's jobs and their tasks in memory, kept equal to the JobStore.
//
// Every change of a job or of its task rows is one Transition (leveldb's
// VersionSet::LogAndApply is the model): Begin copies the job, the caller edits the copy and
// lists the task rows that change, Commit writes them to the JobStore in one SQLite
// transaction and applies them to memory only when that write succeeded. A failed write thus
// leaves the job, its tasks and its leases exactly as they were, and the caller returns the
// store's error. Leases are memory only (a leased task is stored pending, docs/ARCHITECTURE.md):
// the lease ends a transition causes are part of it and happen only after the write.
//
// The table also owns the request-id index (SubmitJob idempotency) and the jobs' work
// directories' names (data_dir/jobs/<id>), and publishes the job gauges (quantd_jobs,
// quantd_job_progress, quantd_worker_leases).
//
// Thread-safety: thread-safe. mu() guards every JobEntry; the Scheduler and the PhaseRunner
// take it to read entries and commit transitions. It is never held during file work or while
// another coordinator lock is taken.
#ifndef QUANTD_SERVER_JOB_TABLE_H_
#define QUANTD_SERVER_JOB_TABLE_H_

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "proto/quantd.pb.h"
#include "server/job_store.h"
#include "server/metrics.h"

namespace quantd::server {

// One task in memory: its stored row and its lease (memory only).
struct TaskState {
  TaskRow row;
  bool leased = false;
  std::string lease_id;
  std::string worker_id;
  std::string worker_name;  // the lease holder's name, for quantd_worker_leases
  absl::Time lease_expiry;
  // The task's report is being checked and stored (a multi-GB shard's sha256 takes minutes):
  // its lease does not expire meanwhile.
  bool storing = false;
  bool admission_logged = false;  // "does not fit" logged once per task
};

struct JobEntry {
  quantd::v1::Job job;
  int phase = 0;
  int stages = 1;  // StagesOf(tasks): 1, or the layer count of a sequential job
  int finetune = 0;  // FinetunePhasesOf(tasks): fine-tuning phases (server/job_finetune.h)
  std::vector<TaskState> tasks;
  // Failed attempts of the coordinator's own step for `phase` (merge, assemble, publish) and
  // when it may run again. In memory only: a restart retries from scratch.
  int step_failures = 0;
  absl::Time step_retry_at = absl::InfinitePast();
  // Set for an unfinished job reloaded after a restart until the engine thread has checked
  // that its input snapshot and spec still match their fingerprints: until then none of its
  // tasks is leased and no step runs (PhaseRunner::VerifyRecoveredJobs).
  bool inputs_unverified = false;
};

// One save-then-apply change of a job: its next proto and phase, the task rows that change
// with it, and the leases that end once it is written.
struct Transition {
  quantd::v1::Job job;
  int phase = 0;
  std::vector<TaskRow> rows;         // replacements, by row.task_id
  std::vector<int64_t> end_leases;   // task ids whose lease ends after the write
  bool leases_expired = false;       // those leases ran out (quantd_lease_expirations_total)
};

// SUCCEEDED, FAILED or CANCELLED.
bool Terminal(quantd::v1::JobState s);
// `prefix` and 16 random hex digits: ids of jobs ("j-"), requests ("r-"), workers ("w-") and
// leases ("l-").
std::string RandomId(std::string_view prefix);

class JobTable {
 public:
  // Opens (or creates) the job store data_dir/quantd.db and the directory data_dir/jobs, and
  // loads every stored job; unfinished ones are marked inputs_unverified. INTERNAL / DATA_LOSS
  // from the store.
  static absl::StatusOr<std::unique_ptr<JobTable>> Open(const std::string& data_dir,
                                                        Metrics* metrics);

  // Takes mu_ once, so that the table's destruction is ordered after every critical section
  // an RPC handler thread completed (as ThreadSanitizer sees it too).
  ~JobTable() { MutexLock l(&mu_); }

  Mutex* mu() ABSL_LOCK_RETURNED(mu_) { return &mu_; }
  JobStore& store() { return *store_; }
  // data_dir/jobs/<job_id>: the job's input snapshot and intermediate results.
  std::string JobDir(const std::string& job_id) const;

  // --- Submission (SubmitJob idempotency) ---
  // Reserves `request_id` for a job Submit is about to build, waiting while another
  // submission of the same id is being built. Returns the existing job when the id was
  // already used for the same request (`fingerprint`, or for jobs stored before fingerprints
  // the fields they recorded), nullopt when the id is now reserved. ALREADY_EXISTS when the id
  // was used for a different request.
  absl::StatusOr<std::optional<quantd::v1::Job>> ReserveRequest(
      const quantd::v1::SubmitJobRequest& req, const std::string& fingerprint);
  // Gives up a reservation whose job was not built.
  void ReleaseRequest(const std::string& request_id);
  // Stores the built job `row` (submitted as `request_id`), then adds it to memory and releases
  // the reservation. Returns the job as the table holds it. The store's error otherwise (the
  // reservation stays: the caller releases it).
  absl::StatusOr<quantd::v1::Job> Insert(JobRow row, const std::string& request_id);

  // --- Reads ---
  absl::StatusOr<quantd::v1::Job> Get(const std::string& id);
  // Jobs in creation order from index `start`, at most `size` of them whose name `tenant`
  // allows; `next` is the index to continue from, or -1 at the end.
  std::vector<quantd::v1::Job> List(size_t start, int size, const std::string& tenant,
                                    int64_t* next);
  // nullptr when there is no job `id`.
  JobEntry* FindLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Job ids in creation order.
  const std::vector<std::string>& OrderLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return job_order_;
  }

  // --- Transitions ---
  static Transition Begin(const JobEntry& e) { return Transition{e.job, e.phase, {}, {}, false}; }
  // Writes `tr` (with the job's progress recomputed) to the store; on success applies it to
  // `e`: rows, job, phase, then the lease ends, tasks_running and the metrics. On a failed write
  // nothing changes and the store's error is returned; INTERNAL for a row `e` does not have.
  absl::Status CommitLocked(JobEntry& e, Transition tr) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `tr` plus the job's end in `state`: phase "done", pending tasks cancelled, every lease
  // ended. On a failed write nothing changes.
  absl::Status EndJobLocked(JobEntry& e, quantd::v1::JobState state, Transition tr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // EndJobLocked in FAILED with `error`.
  absl::Status FailJobLocked(JobEntry& e, const std::string& error, Transition tr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status FailJobLocked(JobEntry& e, const std::string& error)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return FailJobLocked(e, error, Begin(e));
  }

  // --- Leases (memory only) ---
  // Gives `t` of `e` to a worker until `expiry`; returns the new lease id. Counts it in
  // quantd_worker_leases and e.job.tasks_running.
  std::string GrantLeaseLocked(JobEntry& e, TaskState& t, const std::string& worker_id,
                               const std::string& worker_name, absl::Time expiry)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Publishes the number of jobs per state (quantd_jobs).
  void PublishJobCounts() ABSL_LOCKS_EXCLUDED(mu_);
  void PublishJobCountsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

 private:
  JobTable(const std::string& data_dir, Metrics* metrics, std::unique_ptr<JobStore> store)
      : data_dir_(data_dir), metrics_(metrics), store_(std::move(store)) {}
  absl::Status Load();
  // Adds a job read from the store or just stored.
  void AddLocked(JobRow row, bool reloaded) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets `job`'s tasks_done/total/progress from `e`'s tasks as replaced by `rows`.
  static void SetProgress(const JobEntry& e, const std::vector<TaskRow>& rows,
                          quantd::v1::Job* job);
  // Publishes e's progress (or its removal once terminal) to the metrics.
  void UpdateProgressLocked(JobEntry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseLeaseLocked(TaskState& t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // e.job.tasks_running = the leases its tasks hold (0 once it ended).
  static void CountRunning(JobEntry& e);

  const std::string data_dir_;
  Metrics* const metrics_;
  const std::unique_ptr<JobStore> store_;

  Mutex mu_;
  std::map<std::string, JobEntry> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> job_order_ ABSL_GUARDED_BY(mu_);  // creation order
  std::map<std::string, std::string> by_request_ ABSL_GUARDED_BY(mu_);
  // Request ids whose job Submit is building outside mu_ (a second submission of one waits).
  std::set<std::string> building_ ABSL_GUARDED_BY(mu_);
};

}  // namespace quantd::server

#endif  // QUANTD_SERVER_JOB_TABLE_H_
