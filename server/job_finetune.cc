#include "server/job_finetune.h"

#include <algorithm>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/artifact/artifact.h"
#include "engine/format/checkpoint.h"
#include "engine/model/block_grad.h"
#include "engine/model/finetune_e2e.h"
#include "engine/model/tuned_block_file.h"
#include "engine/model/weights.h"
#include "engine/spec/job_files.h"
#include "engine/spec/quant_spec.h"
#include "server/job_builder.h"

namespace quantd::server {
using json = nlohmann::json;

absl::Status ValidateFinetuneRequest(quantd::v1::SubmitJobRequest* req) {
  quantd::v1::QuantSpec* spec = req->mutable_spec();
  if (!spec->has_finetune()) return absl::OkStatus();
  QUANTD_RETURN_IF_ERROR(runner::FillFinetuneDefaults(spec->mutable_finetune()));
  if (!spec->finetune().enabled()) {
    spec->clear_finetune();  // all zero: the same job (and fingerprint) as without the field
    return absl::OkStatus();
  }
  if (runner::MethodOf(*spec).transforms_model) {
    return absl::InvalidArgumentError(absl::StrCat(
        "finetune is not supported with ", spec->method(),
        ": its online Hadamard rotations have no backward pass in the block fine-tuning"));
  }
  if (runner::HasBitBudget(*spec)) {
    return absl::InvalidArgumentError(
        "finetune is not supported with a bit budget (avg_bits): the fine-tuning tasks would "
        "need the per-matrix width allocation, which is made after they are built");
  }
  if (req->calib_path().empty()) {
    return absl::InvalidArgumentError(
        "finetune needs calibration data (calib_path): it tunes on the calibration sequences");
  }
  return absl::OkStatus();
}

int FinetunePhases(const quantd::v1::QuantSpec& spec, const model::LlamaConfig& cfg) {
  if (!HasFinetune(spec)) return 0;
  return cfg.num_layers + (runner::FinetuneE2eOn(spec.finetune()) ? 1 : 0);
}

absl::Status CheckFinetuneModel(const quantd::v1::SubmitJobRequest& req,
                                const model::LlamaConfig& cfg, int64_t nseq) {
  if (!HasFinetune(req.spec())) return absl::OkStatus();
  for (const model::StoredLinear& sl : model::StoredLinears(cfg)) {
    if (sl.parts.size() != 1) {
      return absl::FailedPreconditionError(absl::StrCat(
          "finetune is not supported for this model: it stores ", std::string(sl.name),
          " fused, and one packed matrix cannot carry its parts' separate input scales"));
    }
  }
  for (int l = 0; l < cfg.num_layers; ++l) {
    absl::StatusOr<model::grad::BlockDims> d = model::grad::BlockDimsFor(cfg, l);
    if (!d.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("finetune is not supported for this model: ", d.status().message()));
    }
  }
  const quantd::v1::FinetuneSpec& f = req.spec().finetune();
  if (runner::FinetuneE2eOn(f)) {
    if (absl::StatusOr<model::grad::ModelDims> d = model::grad::ModelDimsFor(cfg); !d.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "finetune e2e is not supported for this model: ", d.status().message(),
          " (submit with --ft-e2e off)"));
    }
    if (f.e2e_head() && cfg.tie_word_embeddings) {
      return absl::InvalidArgumentError(
          "finetune e2e_head: this model ties its head to the embedding "
          "(tie_word_embeddings), and only an untied head can be tuned");
    }
  }
  const int64_t holdout = f.holdout_sequences();
  if (nseq <= holdout) {
    return absl::InvalidArgumentError(absl::StrCat(
        "finetune holdout_sequences ", holdout, " leaves none of the ", nseq,
        " calibration sequences to train on; give more calibration data or hold out fewer"));
  }
  return absl::OkStatus();
}

void AddFinetuneTasks(const quantd::v1::SubmitJobRequest& req, const model::LlamaConfig& cfg,
                      int stages, int seq_len, int64_t nseq,
                      const std::function<TaskRow(int, quantd::v1::TaskKind)>& new_task,
                      const std::function<void(quantd::v1::Task*)>& model_inputs,
                      std::vector<TaskRow>* tasks) {
  if (!HasFinetune(req.spec())) return;
  const std::vector<model::StoredLinear> stored = model::StoredLinears(cfg);
  for (int b = 0; b < cfg.num_layers; ++b) {
    TaskRow t = new_task(FinetunePhase(stages, b), quantd::v1::TASK_KIND_FINETUNE);
    *t.task.mutable_spec() = req.spec();
    model_inputs(&t.task);
    t.task.add_inputs()->set_name(std::string(jobfiles::kCalibTokens));
    for (int l = 0; l <= b; ++l) {
      for (const model::StoredLinear& sl : stored) {
        t.task.add_inputs()->set_name(jobfiles::QuantizedInput(model::StoredTensorName(l, sl)));
      }
    }
    for (int l = 0; l < b; ++l) t.task.add_inputs()->set_name(jobfiles::FinetunedInput(l));
    quantd::v1::FinetuneTask* ft = t.task.mutable_finetune();
    ft->set_block(b);
    ft->set_seq_len(seq_len);
    ft->set_token_begin(0);  // every calibration sequence (TaskMemoryBytes reads the range)
    ft->set_token_end(nseq * seq_len);
    tasks->push_back(std::move(t));
  }
  if (!runner::FinetuneE2eOn(req.spec().finetune())) return;
  TaskRow t = new_task(FinetunePhase(stages, cfg.num_layers), quantd::v1::TASK_KIND_FINETUNE_E2E);
  *t.task.mutable_spec() = req.spec();
  model_inputs(&t.task);
  t.task.add_inputs()->set_name(std::string(jobfiles::kCalibTokens));
  for (int l = 0; l < cfg.num_layers; ++l) {
    for (const model::StoredLinear& sl : stored) {
      t.task.add_inputs()->set_name(jobfiles::QuantizedInput(model::StoredTensorName(l, sl)));
    }
  }
  for (int l = 0; l < cfg.num_layers; ++l) t.task.add_inputs()->set_name(jobfiles::FinetunedInput(l));
  quantd::v1::FinetuneE2eTask* e = t.task.mutable_finetune_e2e();
  e->set_seq_len(seq_len);
  e->set_token_begin(0);
  e->set_token_end(nseq * seq_len);
  tasks->push_back(std::move(t));
}

int FinetunePhasesOf(const std::vector<TaskRow>& tasks) {
  int n = 0;
  for (const TaskRow& t : tasks) {
    n += t.task.kind() == quantd::v1::TASK_KIND_FINETUNE ||
         t.task.kind() == quantd::v1::TASK_KIND_FINETUNE_E2E;
  }
  return n;
}

absl::StatusOr<std::string> FinetunedBlobResult(const std::string& name,
                                                const std::vector<const TaskRow*>& tasks) {
  const std::string_view prefix = jobfiles::kFinetunedPrefix;
  int block = -1;
  if (name.rfind(prefix, 0) != 0 || !absl::SimpleAtoi(name.substr(prefix.size()), &block) ||
      block < 0) {
    return absl::InvalidArgumentError(absl::StrCat("bad blob name '", name, "'"));
  }
  for (const TaskRow* t : tasks) {
    if (t->task.kind() != quantd::v1::TASK_KIND_FINETUNE || t->task.finetune().block() != block) {
      continue;
    }
    if (t->state != TaskRowState::kDone) {
      return absl::FailedPreconditionError(
          absl::StrCat("blob '", name, "': block ", block, " is not tuned yet"));
    }
    return jobfiles::FinetuneResult(t->task_id);
  }
  return absl::NotFoundError(absl::StrCat("blob '", name, "': the job tunes no block ", block));
}

void SetFinetuneStatus(const std::vector<const TaskRow*>& tasks, quantd::v1::Job* job) {
  job->clear_finetune_losses();
  job->set_finetune_blocks(0);
  job->set_finetune_blocks_done(0);
  job->clear_finetune_e2e();
  std::vector<const TaskRow*> done;
  for (const TaskRow* t : tasks) {
    if (t->task.kind() == quantd::v1::TASK_KIND_FINETUNE_E2E) {
      quantd::v1::FinetuneE2eStatus* e = job->mutable_finetune_e2e();
      if (t->state == TaskRowState::kDone) {
        *e = t->result.finetune_e2e();
        e->set_done(true);
      }
      continue;
    }
    if (t->task.kind() != quantd::v1::TASK_KIND_FINETUNE) continue;
    job->set_finetune_blocks(job->finetune_blocks() + 1);
    if (t->state == TaskRowState::kDone) done.push_back(t);
  }
  std::sort(done.begin(), done.end(), [](const TaskRow* a, const TaskRow* b) {
    return a->task.finetune().block() < b->task.finetune().block();
  });
  job->set_finetune_blocks_done(static_cast<int32_t>(done.size()));
  for (const TaskRow* t : done) *job->add_finetune_losses() = t->result.finetune();
}

absl::Status WriteFinetunedModel(const std::string& job_dir, const std::string& src_dir,
                                 const std::map<std::string, std::string>& packed_files,
                                 const std::vector<TaskRow>& tasks, const std::string& out_path) {
  QUANTD_ASSIGN_OR_RETURN(model::LlamaConfig cfg, model::LoadLlamaConfig(src_dir));
  QUANTD_ASSIGN_OR_RETURN(auto ckpt, model::Checkpoint::Open(src_dir));
  // In memory, like QuaRot's assembly (the tuned norms are written in F32, as tuned).
  QUANTD_ASSIGN_OR_RETURN(model::LlamaWeights w, model::LoadLlamaWeights(*ckpt, cfg));
  std::map<std::string, std::string> packed;
  for (const auto& [name, path] : packed_files) {
    QUANTD_ASSIGN_OR_RETURN(packed[name], ReadFile(path));
  }
  std::map<std::string, artifact::RealScales> scales;
  std::vector<bool> seen(cfg.num_layers, false);
  for (const TaskRow& t : tasks) {
    if (t.task.kind() != quantd::v1::TASK_KIND_FINETUNE) continue;
    const int l = t.task.finetune().block();
    if (l < 0 || l >= cfg.num_layers || seen[l]) {
      return absl::DataLossError(absl::StrCat("fine-tuning task ", t.task_id, ": block ", l));
    }
    seen[l] = true;
    QUANTD_ASSIGN_OR_RETURN(
        model::TunedBlock tb,
        model::ReadTunedBlock(JoinPath(job_dir, jobfiles::FinetuneResult(t.task_id)), cfg, l));
    w.layers[l].attn_norm = tb.attn_norm;
    w.layers[l].ffn_norm = tb.ffn_norm;
    for (model::Linear lin : model::kAllLinears) {
      const int i = static_cast<int>(lin);
      scales[model::LinearTensorName(l, lin)] = {tb.scales.out[i], tb.scales.in[i]};
    }
  }
  if (std::find(seen.begin(), seen.end(), false) != seen.end()) {
    return absl::DataLossError("fine-tuned job lacks a block's tuned parameters");
  }
  // The KL stage's result replaces the blocks' (its scales already include theirs).
  for (const TaskRow& t : tasks) {
    if (t.task.kind() != quantd::v1::TASK_KIND_FINETUNE_E2E) continue;
    QUANTD_ASSIGN_OR_RETURN(
        model::TunedModel tm,
        model::ReadTunedModel(JoinPath(job_dir, jobfiles::FinetuneResult(t.task_id)), cfg));
    for (int l = 0; l < cfg.num_layers; ++l) {
      w.layers[l].attn_norm = tm.blocks[l].attn_norm;
      w.layers[l].ffn_norm = tm.blocks[l].ffn_norm;
      for (model::Linear lin : model::kAllLinears) {
        const int i = static_cast<int>(lin);
        scales[model::LinearTensorName(l, lin)] = {tm.blocks[l].scales.out[i],
                                                   tm.blocks[l].scales.in[i]};
      }
    }
    w.final_norm = tm.final_norm;
    if (tm.head.size() != 0) {
      if (cfg.tie_word_embeddings) {
        return absl::DataLossError("the KL stage's result tunes the head of a tied model");
      }
      w.lm_head = std::move(tm.head);
    }
  }
  return artifact::WriteArtifactFromWeights(cfg, w, packed, out_path, scales);
}

json FinetuneManifest(const quantd::v1::Job& job, const std::vector<TaskRow>& tasks) {
  const quantd::v1::FinetuneSpec& f = job.spec().finetune();
  std::vector<const TaskRow*> rows;
  for (const TaskRow& t : tasks) rows.push_back(&t);
  quantd::v1::Job status;
  SetFinetuneStatus(rows, &status);
  json blocks = json::array();
  for (const auto& b : status.finetune_losses()) {
    blocks.push_back({{"block", b.layer()},
                      {"heldout_before", b.heldout_before()},
                      {"heldout_curve", std::vector<double>(b.heldout_curve().begin(),
                                                            b.heldout_curve().end())},
                      {"heldout_best", b.heldout_best()},
                      {"epochs_run", b.epochs_run()},
                      {"seconds", b.seconds()}});
  }
  json e2e = nullptr;  // no KL stage
  if (status.has_finetune_e2e()) {
    const quantd::v1::FinetuneE2eStatus& e = status.finetune_e2e();
    e2e = {{"epochs", f.e2e_epochs()},
           {"learning_rate", f.e2e_learning_rate()},
           {"head", f.e2e_head()},
           {"heldout_kl_before", e.heldout_before()},
           {"heldout_kl_curve",
            std::vector<double>(e.heldout_curve().begin(), e.heldout_curve().end())},
           {"heldout_kl_best", e.heldout_best()},
           {"train_kl_first", e.train_first()},
           {"train_kl_last", e.train_last()},
           {"epochs_run", e.epochs_run()},
           {"seconds", e.seconds()}};
  }
  return {{"kind", "block"},
          {"e2e", e2e},
          {"epochs", f.epochs()},
          {"learning_rate", f.learning_rate()},
          {"batch_sequences", f.batch_sequences()},
          {"holdout_sequences", f.holdout_sequences()},
          {"patience", f.patience()},
          {"seq_len", job.calib_seq_len()},
          {"blocks", blocks}};
}

}  // namespace quantd::server
