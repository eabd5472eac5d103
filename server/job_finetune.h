// Fine-tuning after rounding in the service (issue 27): the coordinator's side of the
// FINETUNE tasks. A job whose spec has finetune.enabled gets, after its last quantize phase,
// one phase per decoder block, each with one FINETUNE task (block l in phase
// FinetunePhase(stages, l), so block l runs only once blocks 0..l-1 are tuned and stored); then
// the artifact is assembled with the tuned norms and real scales (quantd_format 2), evaluated
// and published. Each task recomputes its block's inputs from the model, the quantized matrices
// and the earlier blocks' tuned parameters (docs/ARCHITECTURE.md "Fine-tuning after rounding"),
// so a task is a deterministic function of stored blobs and resumes like any other.
// Thread-safety: pure functions of their arguments and the file system.
#ifndef QUANTD_SERVER_JOB_FINETUNE_H_
#define QUANTD_SERVER_JOB_FINETUNE_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "proto/quantd.pb.h"
#include "server/job_store.h"
#include "engine/model/config.h"

namespace quantd::server {

inline bool HasFinetune(const quantd::v1::QuantSpec& spec) { return spec.finetune().enabled(); }

// The fine-tuning phases a job with this (filled-in) spec gets: one per block, and one more for
// the end-to-end KL stage (finetune.e2e "on": one FINETUNE_E2E task after the last block,
// whose result replaces the blocks' norms and scales). 0 without fine-tuning.
int FinetunePhases(const quantd::v1::QuantSpec& spec, const model::LlamaConfig& cfg);

// At submit (ValidateAndDefault): fills the fine-tuning defaults into req->spec().finetune and
// refuses what the fine-tuning does not support, naming why: INVALID_ARGUMENT for a bad value
// or option set without enabled, for quarot (its online rotations), a bit budget (the tasks
// would need the width allocation), or a job without calibration data.
absl::Status ValidateFinetuneRequest(quantd::v1::SubmitJobRequest* req);

// At build time, once the model and the calibration data are known: FAILED_PRECONDITION for a
// model whose blocks the backward pass does not cover or whose linears are stored fused
// (Phi-3) or, with the KL stage, final logit soft-capping; INVALID_ARGUMENT when `nseq`
// sequences leave none to train on after the held-out ones, or for e2e_head on a model whose
// head is tied to the embedding.
absl::Status CheckFinetuneModel(const quantd::v1::SubmitJobRequest& req,
                                const model::LlamaConfig& cfg, int64_t nseq);

// The FINETUNE tasks of a job with `stages` quantize stages: one per block, block l in phase
// FinetunePhase(stages, l); with the KL stage, the FINETUNE_E2E task in phase
// FinetunePhase(stages, num_layers) (inputs: every quantized matrix and tuned block). `new_task` makes a row with its identity (as BuildJob's);
// `model_inputs` adds the model snapshot's inputs.
void AddFinetuneTasks(const quantd::v1::SubmitJobRequest& req, const model::LlamaConfig& cfg,
                      int stages, int seq_len, int64_t nseq,
                      const std::function<TaskRow(int, quantd::v1::TaskKind)>& new_task,
                      const std::function<void(quantd::v1::Task*)>& model_inputs,
                      std::vector<TaskRow>* tasks);

// The number of fine-tuning phases of a built job (its FINETUNE tasks; 0 without).
int FinetunePhasesOf(const std::vector<TaskRow>& tasks);

// The job-relative path of the tuned block a "finetuned/<block>" blob names, from the job's
// tasks: NOT_FOUND for no such block, FAILED_PRECONDITION while it is not tuned yet.
absl::StatusOr<std::string> FinetunedBlobResult(const std::string& name,
                                                const std::vector<const TaskRow*>& tasks);

// Sets job's finetune_blocks / finetune_blocks_done / finetune_losses and finetune_e2e (when
// the job has the KL stage: its status, `done` with the losses once its task is done) from its
// task rows.
void SetFinetuneStatus(const std::vector<const TaskRow*>& tasks, quantd::v1::Job* job);

// Writes `out_path` (the staged model.safetensors) for a fine-tuned job: the source model's
// tensors with every linear as its packed matrix (`packed_files`: weight name -> file), the
// tuned norms replacing the checkpoint's, and each linear's real scales (quantd_format 2); with
// the KL stage its result's norms, scales, final norm and (tuned) head instead of the blocks'.
// `job_dir` holds the tasks' results. DATA_LOSS for a corrupt result.
absl::Status WriteFinetunedModel(const std::string& job_dir, const std::string& src_dir,
                                 const std::map<std::string, std::string>& packed_files,
                                 const std::vector<TaskRow>& tasks, const std::string& out_path);

// The manifest's "finetune" object: the options, each block's held-out losses and, with the KL
// stage, "e2e": its options and held-out KL (null when the job has no KL stage).
nlohmann::json FinetuneManifest(const quantd::v1::Job& job, const std::vector<TaskRow>& tasks);

}  // namespace quantd::server

#endif  // QUANTD_SERVER_JOB_FINETUNE_H_
