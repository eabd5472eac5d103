#include "server/scheduler.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/quant/quantize.h"
#include "server/job_builder.h"

namespace quantd::server {
namespace {

using quantd::v1::Job;

std::string KindName(quantd::v1::TaskKind k) {
  switch (k) {
    case quantd::v1::TASK_KIND_HESSIAN: return "hessian";
    case quantd::v1::TASK_KIND_QUANTIZE: return "quantize";
    case quantd::v1::TASK_KIND_EVAL: return "eval";
    case quantd::v1::TASK_KIND_FINETUNE: return "finetune";
    case quantd::v1::TASK_KIND_FINETUNE_E2E: return "finetune_e2e";
    default: return "unknown";
  }
}

// Errors that will recur on any worker: the job fails at once instead of retrying.
bool Deterministic(absl::StatusCode c) {
  return c == absl::StatusCode::kInvalidArgument || c == absl::StatusCode::kFailedPrecondition ||
         c == absl::StatusCode::kOutOfRange || c == absl::StatusCode::kUnimplemented;
}

}  // namespace

// ------------------------------------------------------------------------------------------
// Worker registry

absl::StatusOr<quantd::v1::RegisterResponse> Scheduler::Register(
    const quantd::v1::RegisterRequest& req) {
  if (req.worker_name().empty() || req.worker_name().size() > 128) {
    return absl::InvalidArgumentError("worker_name must have 1-128 characters");
  }
  quantd::v1::RegisterResponse resp;
  resp.set_worker_id(RandomId("w-"));
  resp.set_heartbeat_interval_ms(
      static_cast<int32_t>(absl::ToInt64Milliseconds(options_.heartbeat_interval)));
  resp.set_lease_timeout_ms(static_cast<int32_t>(absl::ToInt64Milliseconds(options_.lease_timeout)));
  MutexLock l(&mu_);
  // A worker that re-registers under the same name replaces its old entry.
  for (auto it = workers_.begin(); it != workers_.end();) {
    if (it->second.info.worker_name() == req.worker_name()) {
      it = workers_.erase(it);
    } else {
      ++it;
    }
  }
  workers_[resp.worker_id()] = WorkerEntry{req, absl::Now(), false};
  PublishWorkerCountsLocked();
  return resp;
}

absl::StatusOr<quantd::v1::RegisterRequest> Scheduler::Seen(const std::string& worker_id,
                                                             bool revive) {
  MutexLock l(&mu_);
  auto w = workers_.find(worker_id);
  if (w == workers_.end()) {
    return absl::NotFoundError(absl::StrCat("unknown worker ", worker_id, ": register again"));
  }
  w->second.last_seen = absl::Now();
  if (revive && w->second.lost) {
    w->second.lost = false;
    PublishWorkerCountsLocked();
  }
  return w->second.info;
}

void Scheduler::PublishWorkerCountsLocked() {
  int live = 0, lost = 0;
  for (const auto& [id, w] : workers_) (w.lost ? lost : live)++;
  metrics_->SetWorkers(live, lost);
}

absl::StatusOr<quantd::v1::HeartbeatResponse> Scheduler::Heartbeat(
    const quantd::v1::HeartbeatRequest& req, std::vector<quantd::v1::Job>* changed) {
  QUANTD_RETURN_IF_ERROR(Seen(req.worker_id(), /*revive=*/true).status());
  quantd::v1::HeartbeatResponse resp;
  MutexLock l(table_->mu());
  for (const std::string& lease : req.lease_ids()) {
    bool alive = false;
    for (const std::string& id : table_->OrderLocked()) {
      JobEntry& e = *table_->FindLocked(id);
      if (Terminal(e.job.state())) continue;
      for (TaskState& t : e.tasks) {
        if (t.leased && t.lease_id == lease && t.worker_id == req.worker_id()) {
          t.lease_expiry = absl::Now() + options_.lease_timeout;
          alive = true;
          // A running KL stage's held-out KL so far: into the job status (in memory; the
          // task's report replaces it) and the metrics.
          if (req.has_finetune_e2e() &&
              t.row.task.kind() == quantd::v1::TASK_KIND_FINETUNE_E2E &&
              t.row.state != TaskRowState::kDone) {
            quantd::v1::FinetuneE2eStatus* st = e.job.mutable_finetune_e2e();
            *st = req.finetune_e2e();
            st->set_done(false);
            e.job.set_updated_unix_ms(absl::ToUnixMillis(absl::Now()));
            if (st->heldout_curve_size() > 0) {
              metrics_->FinetuneE2eProgress(e.job.id(), st->heldout_before(),
                                            st->heldout_curve(st->heldout_curve_size() - 1));
            }
            if (changed != nullptr) changed->push_back(e.job);
          }
        }
      }
    }
    if (!alive) resp.add_cancelled_lease_ids(lease);
  }
  for (const std::string& id : req.cached_job_ids()) {
    const JobEntry* e = table_->FindLocked(id);
    if (e == nullptr || Terminal(e->job.state())) resp.add_finished_job_ids(id);
  }
  return resp;
}

// ------------------------------------------------------------------------------------------
// Leases

absl::StatusOr<Scheduler::LeaseOutcome> Scheduler::Lease(const quantd::v1::LeaseTaskRequest& req) {
  QUANTD_ASSIGN_OR_RETURN(const quantd::v1::RegisterRequest worker,
                          Seen(req.worker_id(), /*revive=*/false));
  LeaseOutcome out;
  MutexLock l(table_->mu());
  for (const std::string& id : table_->OrderLocked()) {
    JobEntry& e = *table_->FindLocked(id);
    if (Terminal(e.job.state()) || e.inputs_unverified) continue;
    for (TaskState& t : e.tasks) {
      if (t.row.phase != e.phase || t.leased || t.row.state != TaskRowState::kPending) continue;
      // Memory admission: a worker that advertises its memory only gets tasks that fit.
      const uint64_t have = worker.memory_bytes();
      if (have > 0 && t.row.task.memory_bytes() > have) {
        if (!t.admission_logged) {
          t.admission_logged = true;
          std::fprintf(stderr,
                       "quantd: task %lld of job %s needs ~%llu MiB; worker %s offers %llu MiB, "
                       "left for a bigger worker\n",
                       static_cast<long long>(t.row.task_id), id.c_str(),
                       static_cast<unsigned long long>(t.row.task.memory_bytes() >> 20),
                       worker.worker_name().c_str(), static_cast<unsigned long long>(have >> 20));
        }
        continue;
      }
      // The job's first lease makes it RUNNING: stored before the lease is handed out.
      if (e.job.state() == quantd::v1::JOB_STATE_QUEUED) {
        Transition tr = JobTable::Begin(e);
        tr.job.set_state(quantd::v1::JOB_STATE_RUNNING);
        QUANTD_RETURN_IF_ERROR(table_->CommitLocked(e, std::move(tr)));
        out.started = true;
      }
      const std::string lease = table_->GrantLeaseLocked(
          e, t, req.worker_id(), worker.worker_name(), absl::Now() + options_.lease_timeout);
      out.response.set_found(true);
      *out.response.mutable_task() = t.row.task;
      out.response.mutable_task()->set_lease_id(lease);
      out.changed = e.job;
      return out;
    }
  }
  return out;
}

// ------------------------------------------------------------------------------------------
// Reports

absl::StatusOr<JobEntry*> Scheduler::ReportedJobLocked(const quantd::v1::TaskReportHeader& h,
                                                        const char* gone) {
  JobEntry* e = table_->FindLocked(h.job_id());
  if (e == nullptr) return absl::NotFoundError(absl::StrCat("no job ", h.job_id()));
  if (h.task_id() < 0 || h.task_id() >= static_cast<int64_t>(e->tasks.size())) {
    return absl::InvalidArgumentError(absl::StrCat("job ", h.job_id(), " has no task ", h.task_id()));
  }
  const TaskState& t = e->tasks[h.task_id()];
  if (Terminal(e->job.state()) || !t.leased || t.lease_id != h.lease_id()) {
    return absl::FailedPreconditionError(absl::StrCat("lease ", h.lease_id(), " of job ",
                                                      h.job_id(), " task ", h.task_id(), gone));
  }
  return e;
}

absl::StatusOr<Scheduler::ReportTarget> Scheduler::BeginReport(
    const quantd::v1::TaskReportHeader& h) {
  MutexLock l(table_->mu());
  QUANTD_ASSIGN_OR_RETURN(JobEntry * e, ReportedJobLocked(h, " is no longer valid: result dropped"));
  TaskState& t = e->tasks[h.task_id()];
  ReportTarget target;
  target.kind = t.row.task.kind();
  if (h.ok() && target.kind == quantd::v1::TASK_KIND_HESSIAN) {
    target.result_path = JoinPath(table_->JobDir(h.job_id()), HessianShardResult(h.task_id()));
  } else if (h.ok() && target.kind == quantd::v1::TASK_KIND_QUANTIZE) {
    target.result_path = JoinPath(table_->JobDir(h.job_id()), QuantizedResult(h.task_id()));
  } else if (h.ok() && (target.kind == quantd::v1::TASK_KIND_FINETUNE ||
                        target.kind == quantd::v1::TASK_KIND_FINETUNE_E2E)) {
    target.result_path =
        JoinPath(table_->JobDir(h.job_id()), jobfiles::FinetuneResult(h.task_id()));
  }
  if (!target.result_path.empty()) t.storing = true;
  return target;
}

void Scheduler::EndStoring(const quantd::v1::TaskReportHeader& h) {
  // A lease that ran out meanwhile expires at the engine's next pass.
  MutexLock l(table_->mu());
  JobEntry* e = table_->FindLocked(h.job_id());
  if (e != nullptr && h.task_id() >= 0 && h.task_id() < static_cast<int64_t>(e->tasks.size())) {
    e->tasks[h.task_id()].storing = false;
  }
}

absl::StatusOr<Job> Scheduler::FinishReport(const quantd::v1::TaskReportHeader& h,
                                            const std::string* data) {
  std::string worker_name;
  {
    MutexLock l(&mu_);
    auto w = workers_.find(h.worker_id());
    if (w != workers_.end()) worker_name = w->second.info.worker_name();
  }
  MutexLock l(table_->mu());
  QUANTD_ASSIGN_OR_RETURN(JobEntry * e,
                          ReportedJobLocked(h, " was cancelled while the result was stored"));
  TaskState& t = e->tasks[h.task_id()];
  const quantd::v1::TaskKind kind = t.row.task.kind();
  // The task's next row is stored first; the lease ends only once that write succeeded (a
  // failed write leaves the lease held: the worker's report fails and the lease can expire).
  Transition tr = JobTable::Begin(*e);
  tr.end_leases.push_back(h.task_id());
  TaskRow row = t.row;
  row.attempts++;
  if (h.ok()) {
    row.state = TaskRowState::kDone;
    row.result = h;
    tr.rows.push_back(std::move(row));
    QUANTD_RETURN_IF_ERROR(table_->CommitLocked(*e, std::move(tr)));
    metrics_->TaskFinished(KindName(kind), "ok", h.seconds());
    if (!worker_name.empty()) metrics_->WorkerTaskCompleted(worker_name);
    if (kind == quantd::v1::TASK_KIND_HESSIAN) metrics_->HessianTokens(h.tokens());
    if (kind == quantd::v1::TASK_KIND_FINETUNE) {
      metrics_->FinetuneBlock(h.job_id(), h.finetune().layer(), h.finetune().heldout_before(),
                              h.finetune().heldout_best());
    }
    if (kind == quantd::v1::TASK_KIND_FINETUNE_E2E) {
      metrics_->FinetuneE2e(h.job_id(), h.finetune_e2e().heldout_before(),
                            h.finetune_e2e().heldout_best());
    }
    if (kind == quantd::v1::TASK_KIND_QUANTIZE) {
      metrics_->MatrixProxyLoss(h.proxy_loss());
      if (auto info = quant::InspectPacked(data != nullptr ? *data : std::string()); info.ok()) {
        metrics_->WeightsQuantized(int64_t{info->m} * info->n);
      }
    }
    return e->job;
  }
  const auto code = static_cast<absl::StatusCode>(h.error_code());
  const std::string& tensor = t.row.task.quantize().tensor_name();
  const std::string what =
      absl::StrCat(KindName(kind), " task ", h.task_id(), tensor.empty() ? "" : " (", tensor,
                   tensor.empty() ? "" : ")", ": ", h.error());
  const bool fail_job = Deterministic(code) || row.attempts >= options_.max_attempts;
  tr.rows.push_back(std::move(row));
  if (fail_job) {
    QUANTD_RETURN_IF_ERROR(table_->FailJobLocked(*e, what, std::move(tr)));
  } else {
    QUANTD_RETURN_IF_ERROR(table_->CommitLocked(*e, std::move(tr)));
  }
  metrics_->TaskFinished(KindName(kind), "error", h.seconds());
  return e->job;
}

// ------------------------------------------------------------------------------------------
// Expiry

void Scheduler::ExpireLeases(std::vector<Job>* changed) {
  const absl::Time now = absl::Now();
  {
    MutexLock l(&mu_);
    bool lost = false;
    for (auto& [wid, w] : workers_) {
      if (!w.lost && now - w.last_seen > 3 * options_.heartbeat_interval + options_.lease_timeout) {
        w.lost = lost = true;
      }
    }
    if (lost) PublishWorkerCountsLocked();
  }
  MutexLock l(table_->mu());
  for (const std::string& id : table_->OrderLocked()) {
    JobEntry& e = *table_->FindLocked(id);
    if (Terminal(e.job.state())) continue;
    for (TaskState& t : e.tasks) {
      if (!t.leased || t.storing || t.lease_expiry > now) continue;
      // The attempt is stored before the lease ends; if the write fails the lease stays
      // (expired) and the next pass tries again.
      Transition tr = JobTable::Begin(e);
      tr.end_leases.push_back(t.row.task_id);
      tr.leases_expired = true;
      TaskRow row = t.row;
      row.attempts++;
      const bool fail_job = row.attempts >= options_.max_attempts;
      const std::string why = absl::StrCat("task ", row.task_id, " lost its lease ", row.attempts,
                                           " times (workers died or hung)");
      tr.rows.push_back(std::move(row));
      absl::Status s = fail_job ? table_->FailJobLocked(e, why, std::move(tr))
                                : table_->CommitLocked(e, std::move(tr));
      if (!s.ok()) {
        std::fprintf(stderr, "quantd: job %s: storing the expiry of task %lld failed, retrying: %s\n",
                     id.c_str(), static_cast<long long>(t.row.task_id), s.ToString().c_str());
        break;
      }
      changed->push_back(e.job);  // watchers see one busy worker fewer
      if (fail_job) break;
    }
  }
}

}  // namespace quantd::server
