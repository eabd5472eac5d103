// Coordinator: the job engine of quantd. It validates and records jobs, turns each into tasks
// (Hessian shards, one quantize task per weight matrix, evaluations), leases tasks to workers
// with heartbeats, re-queues expired leases, merges Hessian shards in shard order, assembles the
// artifact in the registry's staging directory and publishes it.
//
// Durability: every job and task state change is written to the JobStore before the call that
// caused it returns; a restarted coordinator resumes each unfinished job from its finished tasks.
// Thread-safety: thread-safe. One internal engine thread runs lease expiry and phase changes.
#ifndef QUANTD_SERVER_COORDINATOR_H_
#define QUANTD_SERVER_COORDINATOR_H_

#include <atomic>
#include <functional>
#include <map>
#include <set>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "proto/quantd.pb.h"
#include "server/input_roots.h"
#include "server/job_store.h"
#include "server/metrics.h"
#include "server/registry.h"

namespace quantd::server {

inline constexpr int kWorkerApiVersion = 1;

struct CoordinatorOptions {
  std::string data_dir = "./var";                     // Default: ./var (job store + registry)
  absl::Duration lease_timeout = absl::Seconds(20);   // Default: 20 s without a heartbeat
  absl::Duration heartbeat_interval = absl::Seconds(2);  // Default: 2 s (told to workers)
  int max_attempts = 3;                               // Default: 3 tries per task
  int max_step_attempts = 4;  // Default: 4 tries of a coordinator step (merge/assemble/publish)
  int max_hessian_shards = 8;                         // Default: 8 shards per stage
  // Coordinator disk for one Hessian stage (its shards plus merged Hessians, packed upper
  // triangles): a model whose Hessians exceed it is captured in blocks of layers
  // (HessianStageLayers). Default: 32 GiB.
  uint64_t hessian_stage_bytes = uint64_t{32} << 30;
  // Directories job inputs must resolve into (server/input_roots.h). Default: none, which
  // refuses every submission unless allow_any_input_path.
  std::vector<std::string> input_roots;
  bool allow_any_input_path = false;  // Default: false
};

class Coordinator {
 public:
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(const CoordinatorOptions& options,
                                                             Metrics* metrics);
  ~Coordinator();

  // --- QuantService ---
  absl::StatusOr<quantd::v1::SubmitJobResponse> Submit(const quantd::v1::SubmitJobRequest& req);
  absl::StatusOr<quantd::v1::Job> GetJob(const std::string& id);
  // Jobs in creation order; with `tenant` set, only jobs whose model name starts with it.
  absl::StatusOr<quantd::v1::ListJobsResponse> ListJobs(const quantd::v1::ListJobsRequest& req,
                                                        const std::string& tenant = "");
  absl::StatusOr<quantd::v1::Job> Cancel(const std::string& id);

  // Calls `listener` with every later change of job `id` (from arbitrary threads, never two
  // calls at once for one subscription) until Unwatch. Returns the current job and the
  // subscription id through `sub`.
  using JobListener = std::function<void(const quantd::v1::Job&)>;
  absl::StatusOr<quantd::v1::Job> Watch(const std::string& id, JobListener listener,
                                        int64_t* sub);
  // After Unwatch returns, the listener is not running and will not be called again.
  void Unwatch(int64_t sub);

  // --- WorkerService ---
  absl::StatusOr<quantd::v1::RegisterResponse> Register(const quantd::v1::RegisterRequest& req);
  absl::StatusOr<quantd::v1::HeartbeatResponse> Heartbeat(const quantd::v1::HeartbeatRequest& req);
  absl::StatusOr<quantd::v1::LeaseTaskResponse> Lease(const quantd::v1::LeaseTaskRequest& req);
  // Absolute path of a job blob (inputs/..., hessians/..., staging/..., and quantized/<tensor>:
  // a finished quantize task's result). NOT_FOUND / INVALID_ARGUMENT / FAILED_PRECONDITION
  // (quantized/ of a matrix not quantized yet).
  absl::StatusOr<std::string> BlobPath(const std::string& job_id, const std::string& name);
  absl::Status Report(const quantd::v1::TaskReportHeader& header, const std::string& data);
  // The same for a result the service spooled to `spool_path` (a file from SpoolPath(), moved
  // into the job directory on success, removed otherwise): large results (Hessian shards) never
  // sit in the coordinator's memory.
  absl::Status ReportSpooled(const quantd::v1::TaskReportHeader& header,
                             const std::string& spool_path);
  // A fresh path under data_dir/spool for ReportSpooled (the directory is created).
  absl::StatusOr<std::string> SpoolPath();

  Registry& registry() { return registry_; }
  JobStore& store_for_testing() { return *store_; }
  // Test seam: called by Submit while it builds a job, outside every lock (a test blocks it to
  // show that other submissions proceed meanwhile). Default: none. Set before any Submit.
  void SetBuildHookForTesting(std::function<void(const quantd::v1::SubmitJobRequest&)> hook) {
    build_hook_ = std::move(hook);
  }
  Metrics& metrics() { return *metrics_; }

 private:
  // Report / ReportSpooled: the result bytes are *data, or the file `spool` when data is null.
  absl::Status ReportResult(const quantd::v1::TaskReportHeader& header, const std::string* data,
                            const std::string& spool);
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
    // that its input snapshot and spec still match their fingerprints (ResumeRefusal): until
    // then none of its tasks is leased and no step runs. Hashing a large model takes a while,
    // so it happens there, after the coordinator already serves, not in Recover.
    bool inputs_unverified = false;
  };
  struct WorkerEntry {
    quantd::v1::RegisterRequest info;
    absl::Time last_seen;
    bool lost = false;
  };
  struct Watcher {
    std::string job_id;
    JobListener listener;
  };

  Coordinator(const CoordinatorOptions& options, Metrics* metrics);
  absl::Status Recover();
  // Submit's work once `req`'s request id is reserved in building_: validate, snapshot and
  // tokenize the inputs, store the job, then publish it and release the reservation.
  absl::StatusOr<quantd::v1::SubmitJobResponse> BuildAndStore(quantd::v1::SubmitJobRequest req,
                                                              const std::string& fingerprint);
  std::string ResumeRefusal(const quantd::v1::Job& job) const;
  void EngineLoop();
  void EngineStep();
  // Applies the outcome `s` of the coordinator's own step of `phase` (merge, assemble, publish)
  // to `e`: the next phase on success, a retry with back-off on a transient failure. Returns the
  // job's error when the step failed for good (the caller removes the staging directory, then
  // fails the job), else "". Appends changed jobs to `changed`.
  std::string ApplyStepResultLocked(JobEntry& e, int phase, const std::string& step,
                                    const absl::Status& s, int published_version,
                                    std::vector<quantd::v1::Job>* changed)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Checks the reloaded jobs marked inputs_unverified (outside mu_), failing those whose inputs
  // changed; returns the jobs it changed.
  std::vector<quantd::v1::Job> VerifyRecoveredJobs();
  // Phase work, run on the engine thread without mu_ held.
  // Merges the Hessian shards of phase `phase` (all of a one-stage job's, one layer's in a
  // sequential job).
  absl::Status MergeHessians(const quantd::v1::Job& job, int phase,
                             const std::vector<TaskRow>& tasks);
  // Deletes the Hessian shards of the stage whose quantize phase `phase` has finished and the
  // merged Hessians its quantize tasks read, so the coordinator's disk holds one stage's
  // Hessian data at a time (docs/ARCHITECTURE.md). Idempotent.
  absl::Status DropStageHessians(const quantd::v1::Job& job, int phase,
                                 const std::vector<TaskRow>& tasks);
  absl::Status Assemble(const quantd::v1::Job& job, const std::vector<TaskRow>& tasks);
  absl::StatusOr<int> Publish(const quantd::v1::Job& job, const std::vector<TaskRow>& tasks);

  // One save-then-apply change of a job (leveldb's LogAndApply): the job's next proto and phase
  // and the task rows that change with it. CommitLocked writes it to the JobStore first and
  // changes memory only when the write succeeded, so a failed write leaves the job exactly as
  // it was (and the caller's RPC fails with the store's error).
  struct Transition {
    quantd::v1::Job job;
    int phase = 0;
    std::vector<TaskRow> rows;  // replacements, by row.task_id
  };
  static Transition BeginLocked(const JobEntry& e) { return Transition{e.job, e.phase, {}}; }
  absl::Status CommitLocked(JobEntry& e, Transition tr) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets `job`'s tasks_done/total/progress from `e`'s tasks as replaced by `rows`.
  static void SetProgress(const JobEntry& e, const std::vector<TaskRow>& rows,
                          quantd::v1::Job* job);
  // Publishes e's progress (or its removal once terminal) to the metrics.
  void UpdateProgressLocked(JobEntry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends `t`'s lease, if any (reported, expired or dropped), and counts it off its worker's
  // quantd_worker_leases.
  void ReleaseLeaseLocked(TaskState& t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets e.job.tasks_running to the leases its tasks hold (0 once it ended): in memory only,
  // after every lease, report, expiry and end.
  void CountRunningLocked(JobEntry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `tr` (with the rows already in it) plus the job's end: terminal state, pending tasks
  // cancelled; committed, then the job's leases are dropped. On a failed write nothing changes.
  absl::Status FailJobLocked(JobEntry& e, const std::string& error, Transition tr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status FailJobLocked(JobEntry& e, const std::string& error)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return FailJobLocked(e, error, BeginLocked(e));
  }
  absl::Status EndJobLocked(JobEntry& e, quantd::v1::JobState state, Transition tr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Notify(const quantd::v1::Job& job);
  void PublishJobCounts() ABSL_LOCKS_EXCLUDED(mu_);
  void PublishJobCountsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string JobDir(const std::string& job_id) const;

  CoordinatorOptions options_;
  Metrics* metrics_;
  Registry registry_;
  InputRoots input_roots_;  // set once in Create
  std::unique_ptr<JobStore> store_;

  Mutex mu_;
  std::map<std::string, JobEntry> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> job_order_ ABSL_GUARDED_BY(mu_);  // creation order
  std::map<std::string, std::string> by_request_ ABSL_GUARDED_BY(mu_);
  // Request ids whose job Submit is building outside mu_ (a second submission of one waits).
  std::set<std::string> building_ ABSL_GUARDED_BY(mu_);
  std::function<void(const quantd::v1::SubmitJobRequest&)> build_hook_;
  std::map<std::string, WorkerEntry> workers_ ABSL_GUARDED_BY(mu_);

  Mutex watch_mu_;
  std::map<int64_t, Watcher> watchers_ ABSL_GUARDED_BY(watch_mu_);
  int64_t next_watch_ ABSL_GUARDED_BY(watch_mu_) = 1;

  Mutex engine_mu_;
  bool stop_ ABSL_GUARDED_BY(engine_mu_) = false;
  bool kick_ ABSL_GUARDED_BY(engine_mu_) = false;
  std::thread engine_;
};

}  // namespace quantd::server

#endif  // QUANTD_SERVER_COORDINATOR_H_
