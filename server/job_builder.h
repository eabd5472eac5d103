// Job construction: validation of a SubmitJobRequest against the files it names, a snapshot of
// the inputs into the job's directory (so later changes to the user's files cannot change a
// running job), and the task list. Pure functions of their arguments and the file system.
#ifndef QUANTD_SERVER_JOB_BUILDER_H_
#define QUANTD_SERVER_JOB_BUILDER_H_

#include <string>

#include "absl/status/statusor.h"
#include "proto/quantd.pb.h"
#include "server/job_store.h"

namespace quantd::server {

// Job phases; tasks of phase p are leased only while the job is in phase p.
inline constexpr int kPhaseHessian = 0;   // Hessian shards (+ fp evaluation)
inline constexpr int kPhaseQuantize = 1;  // one task per weight matrix
inline constexpr int kPhaseEvaluate = 2;  // evaluation of the staged artifact
inline constexpr int kPhasePublish = 3;   // coordinator publishes; no tasks
std::string PhaseName(int phase);

// Checks the request's own fields (name, method, bits, numeric options) without touching files.
// Fills defaults into `req`. INVALID_ARGUMENT with the reason.
absl::Status ValidateAndDefault(quantd::v1::SubmitJobRequest* req);

// Validates the model, calibration and evaluation files, snapshots them into `job_dir`/inputs,
// and returns the job row (state QUEUED) with all its tasks. INVALID_ARGUMENT / NOT_FOUND name
// the bad file and value.
absl::StatusOr<JobRow> BuildJob(const quantd::v1::SubmitJobRequest& req, const std::string& job_id,
                                const std::string& job_dir, int max_hessian_shards);

// Blob names used between coordinator and workers (relative to the job's blob space).
std::string HessianShardResult(int64_t task_id);       // results/hessian_<id>.safetensors
std::string MergedHessianBlob(int layer, std::string_view group);  // hessians/L<l>.<g>.safetensors
std::string QuantizedResult(int64_t task_id);          // results/quant_<id>.qpm

}  // namespace quantd::server

#endif  // QUANTD_SERVER_JOB_BUILDER_H_
