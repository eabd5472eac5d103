// Job construction: validation of a SubmitJobRequest against the files it names, a snapshot of
// the inputs into the job's directory (so later changes to the user's files cannot change a
// running job), and the task list. Pure functions of their arguments and the file system.
#ifndef QUANTD_SERVER_JOB_BUILDER_H_
#define QUANTD_SERVER_JOB_BUILDER_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/quantd.pb.h"
#include "server/input_roots.h"
#include "server/job_store.h"
#include "engine/model/config.h"
#include "engine/spec/job_files.h"

namespace quantd::server {

// Job phases; tasks of phase p are leased only while the job is in phase p. A job has S stages
// (one per layer for a sequential job, else blocks of HessianStageLayers layers: 1 stage for a
// model whose Hessians fit the budget): stage s is a Hessian phase 2s (shards, and in stage
// 0 the fp evaluation) and a quantize phase 2s + 1 (one task per weight matrix of the stage's
// layers). A fine-tuned job (spec.finetune, server/job_finetune.h) then has F = num_layers
// fine-tuning phases 2S + b, one per block b. Then come evaluate (2S + F: the staged
// artifact) and publish (2S + F + 1: coordinator only, no tasks). A one-stage job without
// fine-tuning thus has phases 0..3, the numbering jobs stored before sequential jobs existed
// use. `finetune` below is F (0 without fine-tuning).
enum class PhaseKind { kHessian, kQuantize, kFinetune, kEvaluate, kPublish, kDone };
PhaseKind KindOfPhase(int phase, int stages, int finetune = 0);
// "hessian" | "quantize" | "finetune" | ... | "done"
std::string PhaseName(int phase, int stages, int finetune = 0);
inline int HessianPhase(int stage) { return 2 * stage; }
inline int QuantizePhase(int stage) { return 2 * stage + 1; }
inline int FinetunePhase(int stages, int block) { return 2 * stages + block; }
inline int EvaluatePhase(int stages, int finetune = 0) { return 2 * stages + finetune; }
inline int PublishPhase(int stages, int finetune = 0) { return 2 * stages + finetune + 1; }
// The number of stages of a built job, from its tasks (1 + the last quantize task's stage).
int StagesOf(const std::vector<TaskRow>& tasks);
// Sets job->phase and, for a sequential job (stages > 1), layer_stage/layer_stages.
void SetJobPhase(int phase, int stages, quantd::v1::Job* job, int finetune = 0);

// Checks the request's own fields (name, method, bits, numeric options) without touching files.
// Fills defaults into `req`. INVALID_ARGUMENT with the reason.
absl::Status ValidateAndDefault(quantd::v1::SubmitJobRequest* req);

// Validates the model, calibration and evaluation files, snapshots them into `job_dir`/inputs,
// and returns the job row (state QUEUED) with all its tasks. Every file is resolved through
// `roots` first and read through its resolved path: PERMISSION_DENIED / FAILED_PRECONDITION as
// InputRoots::Resolve says. INVALID_ARGUMENT / NOT_FOUND name the bad file and value.
absl::StatusOr<JobRow> BuildJob(const quantd::v1::SubmitJobRequest& req, const InputRoots& roots,
                                const std::string& job_id, const std::string& job_dir,
                                int max_hessian_shards, uint64_t stage_bytes);

// Bytes of one layer's Hessian sums as a shard or merged blob stores them: the upper triangle
// of each group's fp64 sum (n(n+1)/2 values) plus its token count.
uint64_t HessianLayerBytes(const model::LlamaConfig& cfg);
// Layers per Hessian stage of a (non-sequential) job with `shards` shards per stage: the fewest
// stages whose shards plus merged Hessians, (shards + 1) x layers x HessianLayerBytes, fit
// `stage_bytes`, with the layers spread evenly over them (the last block may be smaller); at
// least 1 layer, at most every layer.
int HessianStageLayers(const model::LlamaConfig& cfg, int64_t shards, uint64_t stage_bytes);

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

// Estimated peak working memory (bytes) of `task` on a worker, from the model's shape: for the
// layer-streamed forward passes (Hessian, evaluation) one layer's weights, the batch's
// activations and one layer's fp64 Hessian accumulators (QuaRot: the whole rotated model); for
// quantization the fp64 Hessian and its factorizations plus the weight copies.
// Deliberately generous (about 1.5x of what the worker allocates).
uint64_t TaskMemoryBytes(const model::LlamaConfig& cfg, const quantd::v1::Task& task);

// Blob names used between coordinator and workers: engine/spec/job_files.h.
using jobfiles::HessianShardResult;
using jobfiles::MergedHessianBlob;
using jobfiles::QuantizedInput;
using jobfiles::QuantizedResult;

}  // namespace quantd::server

#endif  // QUANTD_SERVER_JOB_BUILDER_H_
