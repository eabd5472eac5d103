// Scheduler: the coordinator's side of the workers. It keeps the worker registry (who is
// registered, when each was last heard from, which are lost), hands out task leases (the
// oldest job's first pending task of its current phase that fits the worker's advertised
// memory), renews them on heartbeats, ends them on reports and expires the ones whose worker
// went silent. Every change of a job or task it causes is a JobTable transition: stored first,
// then applied, so a failed store write leaves the lease, the task and the job as they were and
// the RPC fails with the store's error.
//
// Thread-safety: thread-safe. mu_ guards the worker registry only; it is never held together
// with the JobTable's lock (each call takes one, then the other).
#ifndef QUANTD_SERVER_SCHEDULER_H_
#define QUANTD_SERVER_SCHEDULER_H_

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "proto/quantd.pb.h"
#include "server/job_table.h"
#include "server/metrics.h"

namespace quantd::server {

struct SchedulerOptions {
  absl::Duration lease_timeout = absl::Seconds(20);       // Default: 20 s without a heartbeat
  absl::Duration heartbeat_interval = absl::Seconds(2);  // Default: 2 s (told to workers)
  int max_attempts = 3;                                   // Default: 3 tries per task
};

class Scheduler {
 public:
  Scheduler(const SchedulerOptions& options, JobTable* table, Metrics* metrics)
      : options_(options), table_(table), metrics_(metrics) {}
  // Takes mu_ once, so that the registry's destruction is ordered after every critical section
  // an RPC handler thread completed (as ThreadSanitizer sees it too).
  ~Scheduler() { MutexLock l(&mu_); }

  // Adds the worker (replacing one registered under the same name) and returns its id and the
  // timing it must keep. INVALID_ARGUMENT for a worker_name outside 1-128 characters.
  absl::StatusOr<quantd::v1::RegisterResponse> Register(const quantd::v1::RegisterRequest& req)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Renews the worker and those of its leases that are still held; the others are listed as
  // cancelled, with the cached jobs that have ended. A running KL stage's progress
  // (req.finetune_e2e) goes into its job's status; `changed` (nullable) gets the jobs it
  // changed, for the watchers. NOT_FOUND for an unknown worker.
  absl::StatusOr<quantd::v1::HeartbeatResponse> Heartbeat(
      const quantd::v1::HeartbeatRequest& req, std::vector<quantd::v1::Job>* changed = nullptr)
      ABSL_LOCKS_EXCLUDED(mu_);

  struct LeaseOutcome {
    quantd::v1::LeaseTaskResponse response;  // found = false: nothing to do now
    std::optional<quantd::v1::Job> changed;  // the leased task's job, for its watchers
    bool started = false;                    // the lease moved its job QUEUED -> RUNNING
  };
  // Leases a task to the worker. A job's first lease makes it RUNNING, stored before the lease
  // is handed out: the store's error if that write fails (nothing is leased). NOT_FOUND for an
  // unknown worker.
  absl::StatusOr<LeaseOutcome> Lease(const quantd::v1::LeaseTaskRequest& req)
      ABSL_LOCKS_EXCLUDED(mu_);

  // A report in three steps, so that storing its result runs outside every lock:
  // BeginReport checks the lease and returns where the result goes ("" for none: a failure or
  // an evaluation), marking the task as storing (its lease does not expire meanwhile);
  // EndStoring clears that mark however the storing ended; FinishReport stores the task's next
  // row and then ends the lease (on a failed write the lease stays held and the store's error
  // is returned), failing the job for a deterministic error or the last attempt. `data` is the
  // result when it came in memory (nullptr when spooled), read for the metrics only.
  // NOT_FOUND (job), INVALID_ARGUMENT (task), FAILED_PRECONDITION (the lease is gone).
  struct ReportTarget {
    quantd::v1::TaskKind kind = quantd::v1::TASK_KIND_UNSPECIFIED;
    std::string result_path;
  };
  absl::StatusOr<ReportTarget> BeginReport(const quantd::v1::TaskReportHeader& h);
  void EndStoring(const quantd::v1::TaskReportHeader& h);
  // Returns the job after the report.
  absl::StatusOr<quantd::v1::Job> FinishReport(const quantd::v1::TaskReportHeader& h,
                                               const std::string* data) ABSL_LOCKS_EXCLUDED(mu_);

  // Engine pass: marks workers not heard from for 3 heartbeats + the lease timeout as lost, and
  // expires leases past their expiry (each expiry stored as a failed attempt; the job fails at
  // max_attempts). Appends the jobs it changed to `changed`.
  void ExpireLeases(std::vector<quantd::v1::Job>* changed) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct WorkerEntry {
    quantd::v1::RegisterRequest info;
    absl::Time last_seen;
    bool lost = false;
  };
  // Marks `worker_id` as heard from now and returns its registration; NOT_FOUND when unknown.
  absl::StatusOr<quantd::v1::RegisterRequest> Seen(const std::string& worker_id, bool revive)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The job of report `h` when h's lease is still held; NOT_FOUND (job), INVALID_ARGUMENT (task),
  // FAILED_PRECONDITION "lease <id> of job <j> task <t>" + `gone` otherwise.
  absl::StatusOr<JobEntry*> ReportedJobLocked(const quantd::v1::TaskReportHeader& h,
                                              const char* gone)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(table_->mu());
  // quantd_workers{state=live|lost}.
  void PublishWorkerCountsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SchedulerOptions options_;
  JobTable* const table_;
  Metrics* const metrics_;

  Mutex mu_;
  std::map<std::string, WorkerEntry> workers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace quantd::server

#endif  // QUANTD_SERVER_SCHEDULER_H_
