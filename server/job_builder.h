// Job construction: validation of a SubmitJobRequest against the files it names, a snapshot of
// the inputs into the job's directory (so later changes to the user's files cannot change a
// running job), and the task list. Pure functions of their arguments and the file system.
#ifndef QUANTD_SERVER_JOB_BUILDER_H_
#define QUANTD_SERVER_JOB_BUILDER_H_

#include <string>

#include "absl/status/statusor.h"
#include "proto/quantd.pb.h"
#include "server/job_store.h"
#include "worker/model/config.h"

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

// The fingerprints BuildJob records, recomputed from the snapshot in `job_dir`/inputs: what a
// restarted coordinator compares before it resumes a job (model files: sha256 over "name sha256"
// lines of the sorted snapshot files; calib/eval: sha256 of the token files, "" when absent).
struct InputFingerprints {
  std::string model, calib, eval;
};
absl::StatusOr<InputFingerprints> FingerprintJobInputs(const std::string& job_dir);

// sha256 over the deterministic serialization of `spec` and the quantizer version (quantd's
// version, the packed format's and, for quarot, model::kQuarotVersion): changes when the spec or
// the code that interprets it (a quantd upgrade) changes.
std::string SpecFingerprint(const quantd::v1::QuantSpec& spec);

// Estimated peak working memory (bytes) of `task` on a worker, from the model's shape: fp32
// weights for forward passes (Hessian, evaluation) plus fp64 Hessian accumulators and
// activations; for quantization the fp64 Hessian and its factorizations plus the weight copies.
// Deliberately generous (about 1.5x of what the worker allocates).
uint64_t TaskMemoryBytes(const model::LlamaConfig& cfg, const quantd::v1::Task& task);

// Blob names used between coordinator and workers (relative to the job's blob space).
std::string HessianShardResult(int64_t task_id);       // results/hessian_<id>.safetensors
std::string MergedHessianBlob(int layer, std::string_view group);  // hessians/L<l>.<g>.safetensors
std::string QuantizedResult(int64_t task_id);          // results/quant_<id>.qpm

}  // namespace quantd::server

#endif  // QUANTD_SERVER_JOB_BUILDER_H_
