#include "server/phase_runner.h"

#include <cstdio>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/file_util.h"
#include "server/job_budget.h"
#include "server/job_builder.h"
#include "server/job_finetune.h"
#include "engine/spec/quant_spec.h"

namespace quantd::server {

using quantd::v1::Job;

// ------------------------------------------------------------------------------------------
// Recovery

// Why a restarted coordinator must not resume `job` ("" = it may): its snapshot of the inputs,
// or the meaning of its spec, is no longer what its finished tasks were computed from.
std::string PhaseRunner::ResumeRefusal(const Job& job) const {
  auto fps = FingerprintJobInputs(table_->JobDir(job.id()));
  if (!fps.ok()) return absl::StrCat("its input snapshot is unreadable: ", fps.status().message());
  auto changed = [](const char* what, const std::string& was, const std::string& now) {
    return absl::StrCat("the ", what, " changed since the job was submitted (fingerprint ",
                        was.substr(0, 12), " -> ", now.substr(0, 12), ")");
  };
  if (fps->model != job.model_fingerprint()) {
    return changed("model files", job.model_fingerprint(), fps->model);
  }
  if (fps->calib != job.calib_fingerprint()) {
    return changed("calibration data", job.calib_fingerprint(), fps->calib);
  }
  // Jobs stored before these fingerprints existed have them empty.
  if (!job.eval_fingerprint().empty() && fps->eval != job.eval_fingerprint()) {
    return changed("evaluation data", job.eval_fingerprint(), fps->eval);
  }
  const std::string spec = SpecFingerprint(job.spec());
  if (!job.spec_fingerprint().empty() && spec != job.spec_fingerprint()) {
    return changed("spec or the quantizer version", job.spec_fingerprint(), spec);
  }
  return "";
}

void PhaseRunner::VerifyRecoveredJobs(std::vector<Job>* changed) {
  std::vector<Job> pending;
  {
    MutexLock l(table_->mu());
    for (const std::string& id : table_->OrderLocked()) {
      const JobEntry& e = *table_->FindLocked(id);
      if (e.inputs_unverified && !Terminal(e.job.state())) pending.push_back(e.job);
    }
  }
  for (const Job& job : pending) {
    const std::string refusal = ResumeRefusal(job);  // hashes the snapshot: no lock held
    MutexLock l(table_->mu());
    JobEntry& e = *table_->FindLocked(job.id());
    if (!e.inputs_unverified || Terminal(e.job.state())) continue;  // cancelled meanwhile
    if (refusal.empty()) {
      e.inputs_unverified = false;
      std::fprintf(stderr, "quantd: resuming job %s: %d/%d tasks already done\n", job.id().c_str(),
                   e.job.tasks_done(), e.job.tasks_total());
      continue;
    }
    std::fprintf(stderr, "quantd: job %s not resumed: %s\n", job.id().c_str(), refusal.c_str());
    absl::Status s = table_->FailJobLocked(
        e, absl::StrCat("resume refused after a coordinator restart: ", refusal,
                        "; resubmit the job"));
    if (!s.ok()) {
      std::fprintf(stderr, "quantd: job %s: storing the refusal failed, retrying: %s\n",
                   job.id().c_str(), s.ToString().c_str());
      continue;
    }
    e.inputs_unverified = false;
    changed->push_back(e.job);
  }
}

// ------------------------------------------------------------------------------------------
// Steps

std::string PhaseRunner::ApplyStepResultLocked(JobEntry& e, int phase, const std::string& step,
                                               const absl::Status& s, int published_version,
                                               std::vector<Job>* changed) {
  if (Terminal(e.job.state()) || e.phase != phase) return "";  // cancelled meanwhile
  if (!s.ok()) {
    // The steps are idempotent and their writes atomic, so an I/O failure (a full disk, a
    // transient error) is retried with backoff before the job fails; nothing is published
    // until a step succeeds as a whole.
    ++e.step_failures;
    if (e.step_failures < max_step_attempts_ && s.code() != absl::StatusCode::kDataLoss &&
        s.code() != absl::StatusCode::kInvalidArgument) {
      const absl::Duration delay = absl::Milliseconds(500) * (1 << std::min(e.step_failures, 6));
      e.step_retry_at = absl::Now() + delay;
      std::fprintf(stderr, "quantd: job %s: %s step failed (attempt %d of %d), retrying in %s: %s\n",
                   e.job.id().c_str(), step.c_str(), e.step_failures, max_step_attempts_,
                   absl::FormatDuration(delay).c_str(), s.ToString().c_str());
      return "";
    }
    // Failed for good. Its partial output goes before the job shows FAILED (a client that
    // sees the failure must not find the leftovers), outside the lock: the caller.
    return absl::StrCat(step, " step failed: ", s.ToString());
  }
  Transition tr = JobTable::Begin(e);
  tr.phase = phase + 1;
  SetJobPhase(tr.phase, e.stages, &tr.job, e.finetune);
  if (tr.job.state() == quantd::v1::JOB_STATE_QUEUED) {
    tr.job.set_state(quantd::v1::JOB_STATE_RUNNING);  // stepped past an empty first phase
  }
  if (tr.phase == PublishPhase(e.stages, e.finetune)) {
    tr.job.set_state(quantd::v1::JOB_STATE_SUCCEEDED);
    tr.job.set_version(published_version);
    tr.job.set_phase("done");
  }
  double sum = 0;
  int n = 0;
  // A bit budget's mean is over the widths it kept, once every width is in.
  std::optional<JobAllocation> alloc;
  if (runner::HasBitBudget(e.job.spec()) && phase >= QuantizePhase(e.stages - 1)) {
    std::vector<TaskRow> rows;
    for (const TaskState& t : e.tasks) rows.push_back(t.row);
    if (auto a = AllocateJobBits(e.job, rows); a.ok()) alloc = std::move(*a);
  }
  for (const TaskState& t : e.tasks) {
    const auto& r = t.row.result;
    if (t.row.task.kind() == quantd::v1::TASK_KIND_QUANTIZE && t.row.state == TaskRowState::kDone) {
      if (alloc) {
        auto it = alloc->by_tensor.find(t.row.task.quantize().tensor_name());
        if (it == alloc->by_tensor.end() || it->second.task_id != t.row.task_id) continue;
      }
      sum += r.proxy_loss();
      ++n;
    }
    if (t.row.task.kind() == quantd::v1::TASK_KIND_EVAL && t.row.state == TaskRowState::kDone) {
      const std::string& target = t.row.task.eval().target();
      if (target == jobfiles::kEvalTargetFp) tr.job.set_fp_ppl(r.ppl());
      if (target == jobfiles::kEvalTargetQuantized) tr.job.set_quant_ppl(r.ppl());
    }
  }
  if (n > 0) tr.job.set_mean_proxy_loss(sum / n);
  absl::Status st = table_->CommitLocked(e, std::move(tr));
  if (!st.ok()) {
    // Nothing changed: the step (idempotent) runs again after a back-off.
    ++e.step_failures;
    e.step_retry_at = absl::Now() + absl::Seconds(1);
    std::fprintf(stderr, "quantd: job %s: storing the end of its %s step failed, retrying: %s\n",
                 e.job.id().c_str(), step.c_str(), st.ToString().c_str());
    return "";
  }
  e.step_failures = 0;
  e.step_retry_at = absl::InfinitePast();
  changed->push_back(e.job);
  return "";
}

void PhaseRunner::RunSteps(std::vector<Job>* changed) {
  // The jobs whose current phase is complete, copied, so the steps run without the lock.
  struct Pending {
    Job job;
    int phase;
    int stages;
    std::vector<TaskRow> tasks;
    int finetune = 0;
  };
  std::vector<Pending> ready;
  {
    MutexLock l(table_->mu());
    for (const std::string& id : table_->OrderLocked()) {
      const JobEntry& e = *table_->FindLocked(id);
      if (Terminal(e.job.state()) || e.inputs_unverified) continue;
      bool all_done = true, any = false;
      for (const TaskState& t : e.tasks) {
        if (t.row.phase > e.phase) continue;
        any = true;
        if (t.row.state != TaskRowState::kDone) all_done = false;
      }
      // A queued job starts with its first lease, unless it starts with a phase without tasks
      // (an rtn job without calibration or evaluation data: its hessian phase is empty).
      if (e.job.state() == quantd::v1::JOB_STATE_QUEUED && any) continue;
      if (!all_done || absl::Now() < e.step_retry_at) continue;
      Pending p{e.job, e.phase, e.stages, {}, e.finetune};
      for (const TaskState& t : e.tasks) p.tasks.push_back(t.row);
      ready.push_back(std::move(p));
    }
  }
  for (Pending& p : ready) {
    absl::Status s;
    int published_version = 0;
    const PhaseKind kind = KindOfPhase(p.phase, p.stages, p.finetune);
    std::string step;
    if (kind == PhaseKind::kHessian) {
      step = "merge";
      s = MergeHessians(p.job, p.phase, p.tasks);
    } else if (kind == PhaseKind::kQuantize) {
      // The stage's matrices are quantized: its Hessians are no longer needed.
      step = "drop hessians";
      s = DropStageHessians(p.job, p.phase, p.tasks);
      if (s.ok() && p.phase == QuantizePhase(p.stages - 1) && p.finetune == 0) {
        step = "assemble";
        s = Assemble(p.job, p.tasks);
      }
    } else if (kind == PhaseKind::kFinetune) {
      // Every block is tuned: the artifact with its tuned scales (job_finetune.h).
      if (p.phase == FinetunePhase(p.stages, p.finetune - 1)) {
        step = "assemble";
        s = Assemble(p.job, p.tasks);
      }
    } else if (kind == PhaseKind::kEvaluate) {
      step = "publish";
      auto v = Publish(p.job, p.tasks);
      s = v.status();
      if (v.ok()) published_version = *v;
    }
    std::string final_error;  // set when the step failed for good
    {
      MutexLock l(table_->mu());
      JobEntry* e = table_->FindLocked(p.job.id());
      final_error = ApplyStepResultLocked(*e, p.phase, step, s, published_version, changed);
    }
    if (final_error.empty()) continue;
    RemoveAll(registry_->StagingDir(p.job.id())).IgnoreError();
    MutexLock l(table_->mu());
    JobEntry& e = *table_->FindLocked(p.job.id());
    if (Terminal(e.job.state()) || e.phase != p.phase) continue;
    if (!table_->FailJobLocked(e, final_error).ok()) {
      e.step_retry_at = absl::Now() + absl::Seconds(1);  // the store failed: try again
      continue;
    }
    changed->push_back(e.job);
  }
}

void PhaseRunner::CleanUp(const std::vector<Job>& changed) {
  for (const Job& j : changed) {
    if (!Terminal(j.state())) continue;
    RemoveAll(table_->JobDir(j.id())).IgnoreError();
    if (j.state() != quantd::v1::JOB_STATE_SUCCEEDED) {
      RemoveAll(registry_->StagingDir(j.id())).IgnoreError();
    }
  }
}

}  // namespace quantd::server
