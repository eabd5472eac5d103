#include "server/job_table.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "auth/scopes.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "server/job_builder.h"
#include "server/job_finetune.h"

namespace quantd::server {

using quantd::v1::Job;
using quantd::v1::JobState;

std::string RandomId(std::string_view prefix) {
  static thread_local std::mt19937_64 rng(std::random_device{}() ^
                                          static_cast<uint64_t>(absl::ToUnixNanos(absl::Now())));
  return absl::StrCat(std::string(prefix), absl::Hex(rng(), absl::kZeroPad16));
}

bool Terminal(JobState s) {
  return s == quantd::v1::JOB_STATE_SUCCEEDED || s == quantd::v1::JOB_STATE_FAILED ||
         s == quantd::v1::JOB_STATE_CANCELLED;
}

absl::StatusOr<std::unique_ptr<JobTable>> JobTable::Open(const std::string& data_dir,
                                                         Metrics* metrics) {
  QUANTD_RETURN_IF_ERROR(MakeDirs(JoinPath(data_dir, "jobs")));
  QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<JobStore> store,
                          JobStore::Open(JoinPath(data_dir, "quantd.db")));
  std::unique_ptr<JobTable> t(new JobTable(data_dir, metrics, std::move(store)));
  QUANTD_RETURN_IF_ERROR(t->Load());
  return t;
}

std::string JobTable::JobDir(const std::string& job_id) const {
  return JoinPath(JoinPath(data_dir_, "jobs"), job_id);
}

absl::Status JobTable::Load() {
  QUANTD_ASSIGN_OR_RETURN(std::vector<JobRow> rows, store_->LoadAll());
  MutexLock l(&mu_);
  for (JobRow& row : rows) AddLocked(std::move(row), /*reloaded=*/true);
  return absl::OkStatus();
}

void JobTable::AddLocked(JobRow row, bool reloaded) {
  JobEntry e;
  e.job = std::move(row.job);
  e.phase = row.phase;
  e.stages = StagesOf(row.tasks);
  e.finetune = FinetunePhasesOf(row.tasks);
  for (TaskRow& t : row.tasks) {
    TaskState ts;
    ts.row = std::move(t);
    e.tasks.push_back(std::move(ts));
  }
  const std::string id = e.job.id();
  by_request_[e.job.request_id()] = id;
  job_order_.push_back(id);
  if (reloaded) e.job.set_tasks_running(0);  // no lease survives a restart
  if (!reloaded || !Terminal(e.job.state())) {
    SetProgress(e, {}, &e.job);
    UpdateProgressLocked(e);
    // A reloaded job's inputs are re-hashed by the engine thread before anything of it runs.
    e.inputs_unverified = reloaded;
  }
  jobs_.emplace(id, std::move(e));
}

// ------------------------------------------------------------------------------------------
// Submission

absl::StatusOr<std::optional<Job>> JobTable::ReserveRequest(
    const quantd::v1::SubmitJobRequest& req, const std::string& fingerprint) {
  const std::string& request_id = req.request_id();
  MutexLock l(&mu_);
  // A submission of the same request id that is still being built: wait until it is stored
  // (or failed), then answer from its outcome.
  auto not_building = [this, &request_id]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return building_.count(request_id) == 0;
  };
  while (!not_building()) mu_.AwaitWithTimeout(not_building, absl::Seconds(1));
  auto it = by_request_.find(request_id);
  if (it == by_request_.end()) {
    building_.insert(request_id);
    return std::nullopt;
  }
  const Job& prev = jobs_.at(it->second).job;
  // A retried submission must be the same request; reusing an id for another request is a
  // client bug that silently returning the old job would hide. Jobs stored before request
  // fingerprints existed are compared on the fields they recorded.
  const bool same =
      !prev.request_fingerprint().empty()
          ? prev.request_fingerprint() == fingerprint
          : prev.name() == req.name() && prev.model_dir() == req.model_dir() &&
                prev.calib_path() == req.calib_path() && prev.eval_path() == req.eval_path() &&
                prev.spec().method() == req.spec().method() &&
                prev.spec().bits() == req.spec().bits();
  if (!same) {
    return absl::AlreadyExistsError(absl::StrCat(
        "request_id ", request_id, " was already used for a different request (job ", prev.id(),
        ", name ", prev.name(), "); use a new request_id"));
  }
  return prev;
}

void JobTable::ReleaseRequest(const std::string& request_id) {
  MutexLock l(&mu_);
  building_.erase(request_id);
}

absl::StatusOr<Job> JobTable::Insert(JobRow row, const std::string& request_id) {
  // Stored first (outside mu_: the store has its own lock), then visible.
  QUANTD_RETURN_IF_ERROR(store_->InsertJob(row));
  const std::string id = row.job.id();
  Job out;
  {
    MutexLock l(&mu_);
    AddLocked(std::move(row), /*reloaded=*/false);
    building_.erase(request_id);
    out = jobs_.at(id).job;
  }
  PublishJobCounts();
  return out;
}

// ------------------------------------------------------------------------------------------
// Reads

absl::StatusOr<Job> JobTable::Get(const std::string& id) {
  MutexLock l(&mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job ", id));
  return it->second.job;
}

std::vector<Job> JobTable::List(size_t start, int size, const std::string& tenant,
                                int64_t* next) {
  std::vector<Job> out;
  MutexLock l(&mu_);
  size_t i = start;
  for (; i < job_order_.size() && static_cast<int>(out.size()) < size; ++i) {
    const Job& job = jobs_.at(job_order_[i]).job;
    if (auth::TenantAllows(tenant, job.name())) out.push_back(job);
  }
  *next = i < job_order_.size() ? static_cast<int64_t>(i) : -1;
  return out;
}

JobEntry* JobTable::FindLocked(const std::string& id) {
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : &it->second;
}

// ------------------------------------------------------------------------------------------
// Transitions

void JobTable::SetProgress(const JobEntry& e, const std::vector<TaskRow>& rows, Job* job) {
  int done = 0;
  // Per kind of phase, in phase order: what a client's time-left estimate needs (docs/cli.md).
  job->clear_phase_tasks();
  std::map<std::string, quantd::v1::PhaseTasks*> by_phase;
  for (const TaskState& t : e.tasks) {
    const TaskRow* row = &t.row;
    for (const TaskRow& r : rows) {
      if (r.task_id == t.row.task_id) row = &r;
    }
    const bool task_done = row->state == TaskRowState::kDone;
    done += task_done;
    const std::string phase = PhaseName(row->phase, e.stages, e.finetune);
    quantd::v1::PhaseTasks*& p = by_phase[phase];
    if (p == nullptr) {
      p = job->add_phase_tasks();
      p->set_phase(phase);
    }
    p->set_tasks_total(p->tasks_total() + 1);
    p->set_tasks_done(p->tasks_done() + task_done);
  }
  job->set_tasks_done(done);
  job->set_tasks_total(static_cast<int32_t>(e.tasks.size()));
  if (e.finetune > 0) {
    std::vector<const TaskRow*> current;
    for (const TaskState& t : e.tasks) {
      const TaskRow* row = &t.row;
      for (const TaskRow& r : rows) {
        if (r.task_id == t.row.task_id) row = &r;
      }
      current.push_back(row);
    }
    SetFinetuneStatus(current, job);
  }
  if (Terminal(job->state())) job->set_tasks_running(0);
  // The publish step counts as one more unit so a job is at 100% only when it is done.
  job->set_progress(job->state() == quantd::v1::JOB_STATE_SUCCEEDED
                        ? 1.0
                        : static_cast<double>(done) / (e.tasks.size() + 1));
  job->set_updated_unix_ms(absl::ToUnixMillis(absl::Now()));
}

void JobTable::UpdateProgressLocked(JobEntry& e) {
  if (Terminal(e.job.state())) {
    // The job counts move before its progress series goes, under the same lock, so a scrape
    // never sees the job neither in progress nor counted as ended.
    PublishJobCountsLocked();
    metrics_->RemoveJobProgress(e.job.id());
  } else {
    metrics_->SetJobProgress(e.job.id(), e.job.progress());
  }
}

absl::Status JobTable::CommitLocked(JobEntry& e, Transition tr) {
  for (const TaskRow& r : tr.rows) {
    if (r.task_id < 0 || r.task_id >= static_cast<int64_t>(e.tasks.size())) {
      return absl::InternalError(absl::StrCat("job ", e.job.id(), " has no task ", r.task_id));
    }
  }
  for (int64_t id : tr.end_leases) {
    if (id < 0 || id >= static_cast<int64_t>(e.tasks.size())) {
      return absl::InternalError(absl::StrCat("job ", e.job.id(), " has no task ", id));
    }
  }
  SetProgress(e, tr.rows, &tr.job);
  std::vector<const TaskRow*> rows;
  for (const TaskRow& r : tr.rows) rows.push_back(&r);
  QUANTD_RETURN_IF_ERROR(store_->UpdateJobAndTasks(tr.job, tr.phase, rows));
  // Written: now memory follows.
  for (TaskRow& r : tr.rows) e.tasks[r.task_id].row = std::move(r);
  e.job = std::move(tr.job);
  e.phase = tr.phase;
  for (int64_t id : tr.end_leases) {
    TaskState& t = e.tasks[id];
    // Counted before the lease leaves quantd_worker_leases, so a scrape that sees the worker's
    // lease gone also sees the expiry (tests tell expiry from a report that way).
    if (tr.leases_expired && t.leased) metrics_->LeaseExpired();
    ReleaseLeaseLocked(t);
  }
  if (Terminal(e.job.state())) {
    for (TaskState& t : e.tasks) ReleaseLeaseLocked(t);
  }
  CountRunning(e);
  UpdateProgressLocked(e);
  return absl::OkStatus();
}

absl::Status JobTable::FailJobLocked(JobEntry& e, const std::string& error, Transition tr) {
  tr.job.set_error(error);
  return EndJobLocked(e, quantd::v1::JOB_STATE_FAILED, std::move(tr));
}

absl::Status JobTable::EndJobLocked(JobEntry& e, JobState state, Transition tr) {
  tr.job.set_state(state);
  tr.job.set_phase("done");
  for (const TaskState& t : e.tasks) {
    bool replaced = false;
    for (TaskRow& r : tr.rows) {
      if (r.task_id != t.row.task_id) continue;
      replaced = true;
      if (r.state == TaskRowState::kPending) r.state = TaskRowState::kCancelled;
    }
    if (!replaced && t.row.state == TaskRowState::kPending) {
      TaskRow r = t.row;
      r.state = TaskRowState::kCancelled;
      tr.rows.push_back(std::move(r));
    }
  }
  // CommitLocked ends every lease of a job it makes terminal.
  return CommitLocked(e, std::move(tr));
}

// ------------------------------------------------------------------------------------------
// Leases

std::string JobTable::GrantLeaseLocked(JobEntry& e, TaskState& t, const std::string& worker_id,
                                       const std::string& worker_name, absl::Time expiry) {
  t.leased = true;
  t.lease_id = RandomId("l-");
  t.worker_id = worker_id;
  t.worker_name = worker_name;
  t.lease_expiry = expiry;
  metrics_->WorkerLeases(t.worker_name, +1);
  // Watchers see one more busy worker (tasks_running, in memory only).
  CountRunning(e);
  return t.lease_id;
}

void JobTable::ReleaseLeaseLocked(TaskState& t) {
  if (!t.leased) return;
  t.leased = false;
  metrics_->WorkerLeases(t.worker_name, -1);
}

void JobTable::CountRunning(JobEntry& e) {
  int running = 0;
  if (!Terminal(e.job.state())) {
    for (const TaskState& t : e.tasks) running += t.leased;
  }
  e.job.set_tasks_running(running);
}

void JobTable::PublishJobCounts() {
  MutexLock l(&mu_);
  PublishJobCountsLocked();
}

void JobTable::PublishJobCountsLocked() {
  std::map<std::string, int> counts = {
      {"queued", 0}, {"running", 0}, {"succeeded", 0}, {"failed", 0}, {"cancelled", 0}};
  for (const auto& [id, e] : jobs_) {
    switch (e.job.state()) {
      case quantd::v1::JOB_STATE_QUEUED: counts["queued"]++; break;
      case quantd::v1::JOB_STATE_RUNNING: counts["running"]++; break;
      case quantd::v1::JOB_STATE_SUCCEEDED: counts["succeeded"]++; break;
      case quantd::v1::JOB_STATE_FAILED: counts["failed"]++; break;
      case quantd::v1::JOB_STATE_CANCELLED: counts["cancelled"]++; break;
      default: break;
    }
  }
  metrics_->SetJobsByState(counts);
}

}  // namespace quantd::server
