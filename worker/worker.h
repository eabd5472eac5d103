// Worker: the quantd-worker process loop. Registers with the coordinator (API version
// handshake), heartbeats on its own thread, leases one task at a time, fetches the task's input
// blobs into a local cache (resuming partial downloads), executes the task and streams the
// result back. A task whose lease the coordinator reports as cancelled is abandoned. The cache
// holds one directory per job (cache_dir/jobs/<job id>); each heartbeat names them, and the
// directories of jobs the coordinator reports finished are deleted.
// Thread-safety: Run() from one thread; Stop() from any thread (e.g. a signal watcher).
#ifndef QUANTD_WORKER_WORKER_H_
#define QUANTD_WORKER_WORKER_H_

#include <atomic>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "auth/channel.h"
#include "common/mutex.h"
#include "proto/quantd.grpc.pb.h"
#include "engine/quant/device.h"

namespace quantd::runner {

struct WorkerOptions {
  std::string coordinator = "127.0.0.1:7070";  // Default: 127.0.0.1:7070
  std::string name;                            // Default: hostname-pid
  std::string cache_dir = "/tmp/quantd-worker";  // Default: /tmp/quantd-worker
  std::string device = "auto";                 // Default: auto (GPU if present, else CPU)
  int threads = 0;                             // Default: 0 = all cores
  // Default: 0 = at registration, MemAvailable (/proc/meminfo) for the CPU device, the GPU's
  // free memory for a GPU device
  uint64_t memory_bytes = 0;
  auth::ChannelSecurity security;              // Default: plaintext, no token
};

class Worker {
 public:
  // Creates the device options.device names (auto | cpu | cuda:N); if that fails, Run() returns
  // the error.
  explicit Worker(WorkerOptions options);
  // Runs on `device` (not null), e.g. one device::MakeDevice already created and checked.
  Worker(WorkerOptions options, std::unique_ptr<quant::Device> device);
  // Runs until Stop(). Returns an error only for unrecoverable conditions: API mismatch,
  // unusable TLS files, a token the coordinator refuses (UNAUTHENTICATED / PERMISSION_DENIED).
  absl::Status Run();
  void Stop() { stop_.store(true); }

 private:
  absl::Status RegisterLoop();
  void HeartbeatLoop();
  absl::Status RunTask(const quantd::v1::Task& task);
  absl::StatusOr<std::string> FetchBlob(const std::string& job_id, const std::string& name);
  // Job J's blobs live in JobsCacheDir()/J; besides whole job directories only merged
  // Hessians (EvictUnusedHessians) and dead workers' scratch shards are ever deleted.
  std::string JobsCacheDir() const { return options_.cache_dir + "/jobs"; }
  // Where Hessian shards are written before sending; a dead worker's are removed at start.
  std::string ScratchDir() const { return options_.cache_dir + "/scratch"; }
  // A job's merged Hessians are used by the few quantize tasks of one layer group: before a
  // task runs, the cached ones it does not name are deleted, so the cache holds one group's
  // Hessian rather than the model's (44 GB for a 7B model in full fp64).
  void EvictUnusedHessians(const quantd::v1::Task& task);
  // Deletes the cache directories of `finished` jobs, except the running task's.
  void EvictFinished(const quantd::v1::HeartbeatResponse& resp);

  WorkerOptions options_;
  std::unique_ptr<quantd::v1::WorkerService::Stub> stub_;
  std::unique_ptr<quant::Device> device_;
  absl::Status device_status_;  // why device_ is null
  std::atomic<bool> stop_{false};
  std::atomic<bool> cancelled_{false};
  Mutex mu_;
  std::string worker_id_ ABSL_GUARDED_BY(mu_);
  std::string current_lease_ ABSL_GUARDED_BY(mu_);
  std::string current_job_ ABSL_GUARDED_BY(mu_);  // job of current_lease_; its cache stays
  // The current lease's progress (a FINETUNE_E2E task's epochs so far), sent with heartbeats.
  std::optional<quantd::v1::FinetuneE2eStatus> progress_ ABSL_GUARDED_BY(mu_);
  int heartbeat_ms_ ABSL_GUARDED_BY(mu_) = 2000;  // set by RegisterLoop, read by HeartbeatLoop
};

}  // namespace quantd::runner

#endif  // QUANTD_WORKER_WORKER_H_
