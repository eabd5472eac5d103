// Coordinator: the job engine of quantd, as the RPC services see it. It validates and records
// jobs, turns each into tasks (Hessian shards, one quantize task per weight matrix,
// evaluations), leases tasks to workers with heartbeats, re-queues expired leases, merges
// Hessian shards in shard order, assembles the artifact in the registry's staging directory and
// publishes it. It is a facade over three parts:
//   JobTable    (job_table.h)    jobs and tasks in memory, changed only by save-then-apply
//                                transitions through the JobStore;
//   Scheduler   (scheduler.h)    worker registry, leases, heartbeats, expiry, memory admission;
//   PhaseRunner (phase_runner.h) the coordinator's steps between phases (merge, assemble,
//                                publish), their retries, and the recovered jobs' checks;
// and owns what is the service's own: submission (job_builder.h), watchers, blob names workers
// may read, and the engine thread that runs expiry and the steps.
//
// Durability: every job and task state change is written to the JobStore before the call that
// caused it returns; a restarted coordinator resumes each unfinished job from its finished tasks.
// Thread-safety: thread-safe. One internal engine thread runs lease expiry and phase changes.
#ifndef QUANTD_SERVER_COORDINATOR_H_
#define QUANTD_SERVER_COORDINATOR_H_

#include <atomic>
#include <functional>
#include <map>
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
#include "server/job_table.h"
#include "server/metrics.h"
#include "server/phase_runner.h"
#include "server/registry.h"
#include "server/scheduler.h"

namespace quantd::server {

// The worker RPCs' version: 2 since Task carries its per-kind fields in `oneof work` (1 sent them
// flat); 3 since a job may hold TASK_KIND_FINETUNE_E2E tasks (a version-2 worker cannot run them,
// and leasing it one would fail the job). A worker of another version is refused at Register.
inline constexpr int kWorkerApiVersion = 3;

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
  JobStore& store_for_testing() { return table_->store(); }
  // Test seam: called by Submit while it builds a job, outside every lock (a test blocks it to
  // show that other submissions proceed meanwhile). Default: none. Set before any Submit.
  void SetBuildHookForTesting(std::function<void(const quantd::v1::SubmitJobRequest&)> hook) {
    build_hook_ = std::move(hook);
  }
  Metrics& metrics() { return *metrics_; }

 private:
  struct Watcher {
    std::string job_id;
    JobListener listener;
  };

  Coordinator(const CoordinatorOptions& options, Metrics* metrics);
  // Submit's work once `req`'s request id is reserved in the JobTable: validate, snapshot and
  // tokenize the inputs, store the job.
  absl::StatusOr<quantd::v1::SubmitJobResponse> BuildAndStore(quantd::v1::SubmitJobRequest req,
                                                              const std::string& fingerprint);
  // Report / ReportSpooled: the result bytes are *data, or the file `spool` when data is null.
  absl::Status ReportResult(const quantd::v1::TaskReportHeader& header, const std::string* data,
                            const std::string& spool);
  // The engine thread: every 250 ms or when kicked, one EngineStep.
  void EngineLoop();
  // Recovered jobs' verification, lease expiry and the phase steps, then the watchers.
  void EngineStep();
  void Kick();
  void Notify(const quantd::v1::Job& job);

  CoordinatorOptions options_;
  Metrics* metrics_;
  Registry registry_;
  InputRoots input_roots_;  // set once in Create
  std::unique_ptr<JobTable> table_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<PhaseRunner> runner_;
  std::function<void(const quantd::v1::SubmitJobRequest&)> build_hook_;

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
