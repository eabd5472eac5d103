// The FINETUNE task (issue 27): tunes one decoder block of a quantized model after rounding
// (engine/model/finetune.h). The block's inputs are recomputed from the job's blobs: the
// calibration sequences go through the fp layers and, on the quantized path, through layers
// 0..block-1 with their quantized matrices and their tuned parameters (ReplayBlock), one layer
// in memory at a time; then the block is tuned. Deterministic: the same inputs give the same
// result bytes on any worker of the same device kind (docs/ARCHITECTURE.md "Fine-tuning after
// rounding"): the backward's ops run on the worker's device (model/backward_device.h), a GPU's
// in its own rounding order.
// Thread-safety: as ExecuteTask.
#ifndef QUANTD_WORKER_FINETUNE_TASK_H_
#define QUANTD_WORKER_FINETUNE_TASK_H_

#include <atomic>
#include <string>

#include "absl/status/statusor.h"
#include "engine/quant/device.h"
#include "proto/quantd.pb.h"
#include "worker/executor.h"

namespace quantd::runner {

// `scratch_dir` holds the result file while it is written. INVALID_ARGUMENT for a task whose
// block, inputs or options do not fit the model; CANCELLED when `cancelled` turns true; the
// device's errors.
absl::StatusOr<TaskResult> RunFinetuneTask(const quantd::v1::Task& task, const BlobResolver& blobs,
                                           quant::Device& device,
                                           const std::atomic<bool>& cancelled,
                                           const std::string& scratch_dir);

// The KL stage (TASK_KIND_FINETUNE_E2E): rebuilds the block-tuned quantized model from the
// quantized matrices and every block's tuned parameters, then FinetuneEndToEnd against the fp
// model; the result is a model::TunedModel file (tuned_block_file.h). Holds both models in
// memory (TaskMemoryBytes). Errors as RunFinetuneTask.
// `progress` (nullable) gets the held-out KL after each epoch.
absl::StatusOr<TaskResult> RunFinetuneE2eTask(const quantd::v1::Task& task,
                                              const BlobResolver& blobs, quant::Device& device,
                                              const std::atomic<bool>& cancelled,
                                              const std::string& scratch_dir,
                                              const TaskProgress& progress = nullptr);

}  // namespace quantd::runner

#endif  // QUANTD_WORKER_FINETUNE_TASK_H_
