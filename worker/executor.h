// Task execution on a worker: turns a leased Task plus its input files into a result
// (Hessian shard, packed matrix, or perplexity). No networking here: the caller resolves
// every input blob to a local path first.
// Thread-safety: Execute may run concurrently for different tasks; the Device is shared.
#ifndef QUANTD_WORKER_EXECUTOR_H_
#define QUANTD_WORKER_EXECUTOR_H_

#include <atomic>
#include <functional>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "proto/quantd.pb.h"
#include "engine/quant/device.h"

namespace quantd::runner {

struct TaskResult {
  quantd::v1::TaskReportHeader header;  // numbers only; identity fields are filled by the caller
  std::string data;                     // result bytes (packed matrix), when data_path is empty
  // When set, the result bytes are this file's (a Hessian shard, written layer by layer) and
  // `data` is empty. The file lies alone in its own directory, which the caller removes after
  // sending.
  std::string data_path;
};

// Maps an input blob name ("inputs/model/config.json") to a local file path.
using BlobResolver = std::function<absl::StatusOr<std::string>(const std::string& name)>;

// Runs `task`. `cancelled` is polled between units of work; when it becomes true the call
// returns CANCELLED. Errors keep their absl code (INVALID_ARGUMENT / FAILED_PRECONDITION are
// final for the job, others are retried elsewhere).
// A Hessian shard is written under `scratch_dir` (a worker passes its cache dir), in a directory
// named quantd_shard_<pid>_XXXXXX.
// `progress` (nullable) is called on the calling thread as a long task advances: for a
// FINETUNE_E2E task with the held-out KL so far after each epoch.
using TaskProgress = std::function<void(const quantd::v1::FinetuneE2eStatus&)>;
absl::StatusOr<TaskResult> ExecuteTask(const quantd::v1::Task& task, const BlobResolver& blobs,
                                       quant::Device& device, const std::atomic<bool>& cancelled,
                                       const std::string& scratch_dir = "/tmp",
                                       const TaskProgress& progress = nullptr);

// Removes the shard directories under `scratch_dir` left by processes that no longer run (a
// worker killed while writing or sending a shard). Returns how many it removed.
int RemoveStaleShards(const std::string& scratch_dir);

}  // namespace quantd::runner

#endif  // QUANTD_WORKER_EXECUTOR_H_
