#include "server/coordinator.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <random>

#include "absl/strings/match.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "auth/scopes.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "server/job_budget.h"
#include "server/job_builder.h"
#include "server/job_finetune.h"
#include "engine/spec/quant_spec.h"
#include "engine/quant/quantize.h"

namespace quantd::server {
namespace {

using quantd::v1::Job;
using quantd::v1::JobState;

std::string RandomId(std::string_view prefix) {
  static thread_local std::mt19937_64 rng(std::random_device{}() ^
                                          static_cast<uint64_t>(absl::ToUnixNanos(absl::Now())));
  return absl::StrCat(std::string(prefix), absl::Hex(rng(), absl::kZeroPad16));
}

int64_t NowMs() { return absl::ToUnixMillis(absl::Now()); }

// sha256 of everything that shapes a job: the request as the client sent it, without its
// request_id, in protobuf's deterministic serialization (unset and default fields are equal).
std::string RequestFingerprint(const quantd::v1::SubmitJobRequest& in) {
  quantd::v1::SubmitJobRequest r = in;
  r.clear_request_id();
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream out(&bytes);
    google::protobuf::io::CodedOutputStream coded(&out);
    coded.SetSerializationDeterministic(true);
    r.SerializeToCodedStream(&coded);
  }
  return Sha256Hex(bytes);
}

bool Terminal(JobState s) {
  return s == quantd::v1::JOB_STATE_SUCCEEDED || s == quantd::v1::JOB_STATE_FAILED ||
         s == quantd::v1::JOB_STATE_CANCELLED;
}

std::string KindName(quantd::v1::TaskKind k) {
  switch (k) {
    case quantd::v1::TASK_KIND_HESSIAN: return "hessian";
    case quantd::v1::TASK_KIND_QUANTIZE: return "quantize";
    case quantd::v1::TASK_KIND_EVAL: return "eval";
    case quantd::v1::TASK_KIND_FINETUNE: return "finetune";
    default: return "unknown";
  }
}

// Errors that will recur on any worker: the job fails at once instead of retrying.
bool Deterministic(absl::StatusCode c) {
  return c == absl::StatusCode::kInvalidArgument || c == absl::StatusCode::kFailedPrecondition ||
         c == absl::StatusCode::kOutOfRange || c == absl::StatusCode::kUnimplemented;
}

}  // namespace

Coordinator::Coordinator(const CoordinatorOptions& options, Metrics* metrics)
    : options_(options),
      metrics_(metrics),
      registry_(JoinPath(options.data_dir, "registry")) {}

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(const CoordinatorOptions& options,
                                                                 Metrics* metrics) {
  std::unique_ptr<Coordinator> c(new Coordinator(options, metrics));
  QUANTD_ASSIGN_OR_RETURN(c->input_roots_,
                          InputRoots::Create(options.input_roots, options.allow_any_input_path));
  QUANTD_RETURN_IF_ERROR(MakeDirs(JoinPath(options.data_dir, "jobs")));
  QUANTD_RETURN_IF_ERROR(c->registry_.Init());
  QUANTD_ASSIGN_OR_RETURN(c->store_, JobStore::Open(JoinPath(options.data_dir, "quantd.db")));
  QUANTD_RETURN_IF_ERROR(c->Recover());
  c->engine_ = std::thread([p = c.get()] { p->EngineLoop(); });
  return c;
}

Coordinator::~Coordinator() {
  {
    MutexLock l(&engine_mu_);
    stop_ = true;
  }
  if (engine_.joinable()) engine_.join();
  // The RPC server has shut down (no handler runs any more), but that ordering was made inside
  // libgrpc. Taking each lock once orders the members' destruction after every critical section
  // the handler threads completed, in a way ThreadSanitizer sees too.
  { MutexLock l(&mu_); }
  { MutexLock l(&watch_mu_); }
}

std::string Coordinator::JobDir(const std::string& job_id) const {
  return JoinPath(JoinPath(options_.data_dir, "jobs"), job_id);
}

// Why a restarted coordinator must not resume `job` ("" = it may): its snapshot of the inputs,
// or the meaning of its spec, is no longer what its finished tasks were computed from.
std::string Coordinator::ResumeRefusal(const Job& job) const {
  auto fps = FingerprintJobInputs(JobDir(job.id()));
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

absl::Status Coordinator::Recover() {
  QUANTD_ASSIGN_OR_RETURN(std::vector<JobRow> rows, store_->LoadAll());
  MutexLock l(&mu_);
  for (JobRow& row : rows) {
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
    e.job.set_tasks_running(0);  // no lease survives a restart
    if (!Terminal(e.job.state())) {
      SetProgress(e, {}, &e.job);
      UpdateProgressLocked(e);
      // Its inputs are re-hashed by the engine thread before anything of it runs.
      e.inputs_unverified = true;
    }
    jobs_.emplace(id, std::move(e));
  }
  return absl::OkStatus();
}

std::vector<Job> Coordinator::VerifyRecoveredJobs() {
  std::vector<Job> pending;
  {
    MutexLock l(&mu_);
    for (const std::string& id : job_order_) {
      const JobEntry& e = jobs_.at(id);
      if (e.inputs_unverified && !Terminal(e.job.state())) pending.push_back(e.job);
    }
  }
  std::vector<Job> changed;
  for (const Job& job : pending) {
    const std::string refusal = ResumeRefusal(job);  // hashes the snapshot: no lock held
    MutexLock l(&mu_);
    JobEntry& e = jobs_.at(job.id());
    if (!e.inputs_unverified || Terminal(e.job.state())) continue;  // cancelled meanwhile
    if (refusal.empty()) {
      e.inputs_unverified = false;
      std::fprintf(stderr, "quantd: resuming job %s: %d/%d tasks already done\n", job.id().c_str(),
                   e.job.tasks_done(), e.job.tasks_total());
      continue;
    }
    std::fprintf(stderr, "quantd: job %s not resumed: %s\n", job.id().c_str(), refusal.c_str());
    absl::Status s = FailJobLocked(
        e, absl::StrCat("resume refused after a coordinator restart: ", refusal,
                        "; resubmit the job"));
    if (!s.ok()) {
      std::fprintf(stderr, "quantd: job %s: storing the refusal failed, retrying: %s\n",
                   job.id().c_str(), s.ToString().c_str());
      continue;
    }
    e.inputs_unverified = false;
    changed.push_back(e.job);
  }
  return changed;
}

void Coordinator::SetProgress(const JobEntry& e, const std::vector<TaskRow>& rows, Job* job) {
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
  job->set_updated_unix_ms(NowMs());
}

void Coordinator::UpdateProgressLocked(JobEntry& e) {
  if (Terminal(e.job.state())) {
    // The job counts move before its progress series goes, under the same lock, so a scrape
    // never sees the job neither in progress nor counted as ended.
    PublishJobCountsLocked();
    metrics_->RemoveJobProgress(e.job.id());
  } else {
    metrics_->SetJobProgress(e.job.id(), e.job.progress());
  }
}

absl::Status Coordinator::CommitLocked(JobEntry& e, Transition tr) {
  for (const TaskRow& r : tr.rows) {
    if (r.task_id < 0 || r.task_id >= static_cast<int64_t>(e.tasks.size())) {
      return absl::InternalError(absl::StrCat("job ", e.job.id(), " has no task ", r.task_id));
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
  UpdateProgressLocked(e);
  return absl::OkStatus();
}

void Coordinator::ReleaseLeaseLocked(TaskState& t) {
  if (!t.leased) return;
  t.leased = false;
  metrics_->WorkerLeases(t.worker_name, -1);
}

void Coordinator::CountRunningLocked(JobEntry& e) {
  int running = 0;
  if (!Terminal(e.job.state())) {
    for (const TaskState& t : e.tasks) running += t.leased;
  }
  e.job.set_tasks_running(running);
}

absl::Status Coordinator::FailJobLocked(JobEntry& e, const std::string& error, Transition tr) {
  tr.job.set_error(error);
  return EndJobLocked(e, quantd::v1::JOB_STATE_FAILED, std::move(tr));
}

absl::Status Coordinator::EndJobLocked(JobEntry& e, quantd::v1::JobState state, Transition tr) {
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
  QUANTD_RETURN_IF_ERROR(CommitLocked(e, std::move(tr)));
  for (TaskState& t : e.tasks) ReleaseLeaseLocked(t);
  CountRunningLocked(e);
  return absl::OkStatus();
}

void Coordinator::Notify(const Job& job) {
  MutexLock l(&watch_mu_);
  for (auto& [id, w] : watchers_) {
    if (w.job_id == job.id()) w.listener(job);
  }
}

void Coordinator::PublishJobCounts() {
  MutexLock l(&mu_);
  PublishJobCountsLocked();
}

void Coordinator::PublishJobCountsLocked() {
  std::map<std::string, int> counts = {
      {"queued", 0}, {"running", 0}, {"succeeded", 0}, {"failed", 0}, {"cancelled", 0}};
  int live = 0, lost = 0;
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
  for (const auto& [id, w] : workers_) (w.lost ? lost : live)++;
  metrics_->SetJobsByState(counts);
  metrics_->SetWorkers(live, lost);
}

// ------------------------------------------------------------------------------------------
// QuantService

absl::StatusOr<quantd::v1::SubmitJobResponse> Coordinator::Submit(
    const quantd::v1::SubmitJobRequest& in) {
  quantd::v1::SubmitJobRequest req = in;
  const std::string fingerprint = RequestFingerprint(in);
  if (req.request_id().empty()) req.set_request_id(RandomId("r-"));
  const std::string request_id = req.request_id();
  {
    MutexLock l(&mu_);
    // A submission of the same request id that is still being built: wait until it is stored
    // (or failed), then answer from its outcome.
    auto not_building = [this, &request_id]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return building_.count(request_id) == 0;
    };
    while (!not_building()) mu_.AwaitWithTimeout(not_building, absl::Seconds(1));
    auto it = by_request_.find(request_id);
    if (it != by_request_.end()) {
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
            "request_id ", request_id, " was already used for a different request (job ",
            prev.id(), ", name ", prev.name(), "); use a new request_id"));
      }
      quantd::v1::SubmitJobResponse resp;
      *resp.mutable_job() = prev;
      resp.set_created(false);
      return resp;
    }
    building_.insert(request_id);
  }
  // Validation, the input snapshot and tokenization run outside every lock, so submissions of
  // different requests build their jobs concurrently.
  absl::StatusOr<quantd::v1::SubmitJobResponse> resp = BuildAndStore(std::move(req), fingerprint);
  if (!resp.ok()) {
    MutexLock l(&mu_);
    building_.erase(request_id);
  }
  return resp;
}

absl::StatusOr<quantd::v1::SubmitJobResponse> Coordinator::BuildAndStore(
    quantd::v1::SubmitJobRequest req, const std::string& fingerprint) {
  if (build_hook_) build_hook_(req);
  QUANTD_RETURN_IF_ERROR(ValidateAndDefault(&req));
  const std::string job_id = RandomId("j-");
  const std::string dir = JobDir(job_id);
  auto row = BuildJob(req, input_roots_, job_id, dir, options_.max_hessian_shards,
                      options_.hessian_stage_bytes);
  if (!row.ok()) {
    RemoveAll(dir).IgnoreError();
    return row.status();
  }
  row->job.set_request_fingerprint(fingerprint);
  row->job.set_created_unix_ms(NowMs());
  row->job.set_updated_unix_ms(row->job.created_unix_ms());
  absl::Status s = store_->InsertJob(*row);
  if (!s.ok()) {
    RemoveAll(dir).IgnoreError();
    return s;
  }
  JobEntry e;
  e.job = row->job;
  e.phase = row->phase;
  e.stages = StagesOf(row->tasks);
  e.finetune = FinetunePhasesOf(row->tasks);
  for (TaskRow& t : row->tasks) {
    TaskState ts;
    ts.row = std::move(t);
    e.tasks.push_back(std::move(ts));
  }
  quantd::v1::SubmitJobResponse resp;
  {
    MutexLock l(&mu_);
    SetProgress(e, {}, &e.job);
    UpdateProgressLocked(e);
    resp.set_created(true);
    *resp.mutable_job() = e.job;
    by_request_[req.request_id()] = job_id;
    building_.erase(req.request_id());
    job_order_.push_back(job_id);
    jobs_.emplace(job_id, std::move(e));
  }
  PublishJobCounts();
  return resp;
}

absl::StatusOr<Job> Coordinator::GetJob(const std::string& id) {
  MutexLock l(&mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job ", id));
  return it->second.job;
}

absl::StatusOr<quantd::v1::ListJobsResponse> Coordinator::ListJobs(
    const quantd::v1::ListJobsRequest& req, const std::string& tenant) {
  int size = req.page_size() <= 0 ? 50 : req.page_size();
  if (size > 500) size = 500;
  size_t start = 0;
  if (!req.page_token().empty()) {
    uint64_t v = 0;
    if (!absl::SimpleAtoi(req.page_token(), &v)) {
      return absl::InvalidArgumentError(absl::StrCat("bad page_token '", req.page_token(), "'"));
    }
    start = v;
  }
  quantd::v1::ListJobsResponse resp;
  MutexLock l(&mu_);
  size_t i = start;
  for (; i < job_order_.size() && resp.jobs_size() < size; ++i) {
    const Job& job = jobs_.at(job_order_[i]).job;
    if (auth::TenantAllows(tenant, job.name())) *resp.add_jobs() = job;
  }
  if (i < job_order_.size()) resp.set_next_page_token(std::to_string(i));
  return resp;
}

absl::StatusOr<Job> Coordinator::Cancel(const std::string& id) {
  Job out;
  {
    MutexLock l(&mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job ", id));
    JobEntry& e = it->second;
    if (Terminal(e.job.state())) return e.job;
    QUANTD_RETURN_IF_ERROR(EndJobLocked(e, quantd::v1::JOB_STATE_CANCELLED, BeginLocked(e)));
    out = e.job;
  }
  RemoveAll(registry_.StagingDir(id)).IgnoreError();
  RemoveAll(JobDir(id)).IgnoreError();
  Notify(out);
  PublishJobCounts();
  return out;
}

absl::StatusOr<Job> Coordinator::Watch(const std::string& id, JobListener listener,
                                       int64_t* sub) {
  MutexLock wl(&watch_mu_);
  Job current;
  {
    MutexLock l(&mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job ", id));
    current = it->second.job;
  }
  *sub = next_watch_++;
  watchers_[*sub] = Watcher{id, std::move(listener)};
  return current;
}

void Coordinator::Unwatch(int64_t sub) {
  MutexLock l(&watch_mu_);
  watchers_.erase(sub);
}

// ------------------------------------------------------------------------------------------
// WorkerService

absl::StatusOr<quantd::v1::RegisterResponse> Coordinator::Register(
    const quantd::v1::RegisterRequest& req) {
  if (req.api_version() != kWorkerApiVersion) {
    return absl::FailedPreconditionError(absl::StrCat("worker speaks API version ",
                                                      req.api_version(), ", coordinator ",
                                                      kWorkerApiVersion));
  }
  if (req.worker_name().empty() || req.worker_name().size() > 128) {
    return absl::InvalidArgumentError("worker_name must have 1-128 characters");
  }
  quantd::v1::RegisterResponse resp;
  resp.set_worker_id(RandomId("w-"));
  resp.set_heartbeat_interval_ms(
      static_cast<int32_t>(absl::ToInt64Milliseconds(options_.heartbeat_interval)));
  resp.set_lease_timeout_ms(static_cast<int32_t>(absl::ToInt64Milliseconds(options_.lease_timeout)));
  {
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
  }
  PublishJobCounts();
  return resp;
}

absl::StatusOr<quantd::v1::HeartbeatResponse> Coordinator::Heartbeat(
    const quantd::v1::HeartbeatRequest& req) {
  quantd::v1::HeartbeatResponse resp;
  MutexLock l(&mu_);
  auto w = workers_.find(req.worker_id());
  if (w == workers_.end()) {
    return absl::NotFoundError(absl::StrCat("unknown worker ", req.worker_id(), ": register again"));
  }
  w->second.last_seen = absl::Now();
  w->second.lost = false;
  for (const std::string& lease : req.lease_ids()) {
    bool alive = false;
    for (auto& [id, e] : jobs_) {
      if (Terminal(e.job.state())) continue;
      for (TaskState& t : e.tasks) {
        if (t.leased && t.lease_id == lease && t.worker_id == req.worker_id()) {
          t.lease_expiry = absl::Now() + options_.lease_timeout;
          alive = true;
        }
      }
    }
    if (!alive) resp.add_cancelled_lease_ids(lease);
  }
  for (const std::string& id : req.cached_job_ids()) {
    auto j = jobs_.find(id);
    if (j == jobs_.end() || Terminal(j->second.job.state())) resp.add_finished_job_ids(id);
  }
  return resp;
}

absl::StatusOr<quantd::v1::LeaseTaskResponse> Coordinator::Lease(
    const quantd::v1::LeaseTaskRequest& req) {
  quantd::v1::LeaseTaskResponse resp;
  Job changed;
  bool notify = false, counts_changed = false;
  {
    MutexLock l(&mu_);
    auto w = workers_.find(req.worker_id());
    if (w == workers_.end()) {
      return absl::NotFoundError(absl::StrCat("unknown worker ", req.worker_id(), ": register again"));
    }
    w->second.last_seen = absl::Now();
    for (const std::string& id : job_order_) {
      JobEntry& e = jobs_.at(id);
      if (Terminal(e.job.state()) || e.inputs_unverified) continue;
      for (TaskState& t : e.tasks) {
        if (t.row.phase != e.phase || t.leased || t.row.state != TaskRowState::kPending) continue;
        // Memory admission: a worker that advertises its memory only gets tasks that fit.
        const uint64_t have = w->second.info.memory_bytes();
        if (have > 0 && t.row.task.memory_bytes() > have) {
          if (!t.admission_logged) {
            t.admission_logged = true;
            std::fprintf(stderr,
                         "quantd: task %lld of job %s needs ~%llu MiB; worker %s offers %llu MiB, "
                         "left for a bigger worker\n",
                         static_cast<long long>(t.row.task_id), id.c_str(),
                         static_cast<unsigned long long>(t.row.task.memory_bytes() >> 20),
                         w->second.info.worker_name().c_str(),
                         static_cast<unsigned long long>(have >> 20));
          }
          continue;
        }
        // The job's first lease makes it RUNNING: stored before the lease is handed out.
        if (e.job.state() == quantd::v1::JOB_STATE_QUEUED) {
          Transition tr = BeginLocked(e);
          tr.job.set_state(quantd::v1::JOB_STATE_RUNNING);
          QUANTD_RETURN_IF_ERROR(CommitLocked(e, std::move(tr)));
          counts_changed = true;
        }
        t.leased = true;
        t.lease_id = RandomId("l-");
        t.worker_id = req.worker_id();
        t.worker_name = w->second.info.worker_name();
        t.lease_expiry = absl::Now() + options_.lease_timeout;
        metrics_->WorkerLeases(t.worker_name, +1);
        resp.set_found(true);
        *resp.mutable_task() = t.row.task;
        resp.mutable_task()->set_lease_id(t.lease_id);
        // Watchers see one more busy worker (tasks_running, in memory only).
        CountRunningLocked(e);
        changed = e.job;
        notify = true;
        break;
      }
      if (resp.found()) break;
    }
  }
  if (notify) Notify(changed);
  if (counts_changed) PublishJobCounts();
  return resp;
}

absl::StatusOr<std::string> Coordinator::BlobPath(const std::string& job_id,
                                                  const std::string& name) {
  if (name.empty() || name.find("..") != std::string::npos || name.front() == '/' ||
      name.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("bad blob name '", name, "'"));
  }
  {
    MutexLock l(&mu_);
    if (jobs_.find(job_id) == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job ", job_id));
  }
  if (absl::StartsWith(name, jobfiles::kStagingPrefix)) {
    return JoinPath(registry_.StagingDir(job_id), name.substr(std::string_view(jobfiles::kStagingPrefix).size()));
  }
  if (absl::StartsWith(name, jobfiles::kInputsPrefix) ||
      absl::StartsWith(name, jobfiles::kHessiansPrefix)) {
    return JoinPath(JobDir(job_id), name);
  }
  if (absl::StartsWith(name, jobfiles::kQuantizedPrefix)) {
    const std::string tensor = name.substr(std::string_view(jobfiles::kQuantizedPrefix).size());
    MutexLock l(&mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job ", job_id));
    for (const TaskState& t : it->second.tasks) {
      const quantd::v1::Task& task = t.row.task;
      if (task.kind() != quantd::v1::TASK_KIND_QUANTIZE || task.tensor_name() != tensor) continue;
      if (t.row.state != TaskRowState::kDone) {
        return absl::FailedPreconditionError(
            absl::StrCat("blob '", name, "': ", tensor, " is not quantized yet"));
      }
      return JoinPath(JobDir(job_id), QuantizedResult(t.row.task_id));
    }
    return absl::NotFoundError(
        absl::StrCat("blob '", name, "': job ", job_id, " quantizes no ", tensor));
  }
  if (absl::StartsWith(name, jobfiles::kFinetunedPrefix)) {
    MutexLock l(&mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job ", job_id));
    std::vector<const TaskRow*> rows;
    for (const TaskState& t : it->second.tasks) rows.push_back(&t.row);
    QUANTD_ASSIGN_OR_RETURN(std::string rel, FinetunedBlobResult(name, rows));
    return JoinPath(JobDir(job_id), rel);
  }
  return absl::InvalidArgumentError(absl::StrCat("blob '", name, "' is not readable by workers"));
}

absl::StatusOr<std::string> Coordinator::SpoolPath() {
  const std::string dir = JoinPath(options_.data_dir, "spool");
  QUANTD_RETURN_IF_ERROR(MakeDirs(dir));
  static std::atomic<uint64_t> next{0};
  return JoinPath(dir, absl::StrCat("report.", ::getpid(), ".", absl::ToUnixNanos(absl::Now()),
                                    ".", next.fetch_add(1)));
}

absl::Status Coordinator::Report(const quantd::v1::TaskReportHeader& h, const std::string& data) {
  return ReportResult(h, &data, "");
}

absl::Status Coordinator::ReportSpooled(const quantd::v1::TaskReportHeader& h,
                                        const std::string& spool_path) {
  absl::Status s = ReportResult(h, nullptr, spool_path);
  ::unlink(spool_path.c_str());  // moved on success; dropped otherwise
  return s;
}

absl::Status Coordinator::ReportResult(const quantd::v1::TaskReportHeader& h,
                                       const std::string* data, const std::string& spool) {
  std::string result_path;
  quantd::v1::TaskKind kind;
  {
    MutexLock l(&mu_);
    auto it = jobs_.find(h.job_id());
    if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job ", h.job_id()));
    JobEntry& e = it->second;
    if (h.task_id() < 0 || h.task_id() >= static_cast<int64_t>(e.tasks.size())) {
      return absl::InvalidArgumentError(absl::StrCat("job ", h.job_id(), " has no task ", h.task_id()));
    }
    TaskState& t = e.tasks[h.task_id()];
    if (Terminal(e.job.state()) || !t.leased || t.lease_id != h.lease_id()) {
      return absl::FailedPreconditionError(
          absl::StrCat("lease ", h.lease_id(), " is no longer valid (job ", h.job_id(),
                       " task ", h.task_id(), "): result dropped"));
    }
    kind = t.row.task.kind();
    if (h.ok() && kind == quantd::v1::TASK_KIND_HESSIAN) {
      result_path = JoinPath(JobDir(h.job_id()), HessianShardResult(h.task_id()));
    } else if (h.ok() && kind == quantd::v1::TASK_KIND_QUANTIZE) {
      result_path = JoinPath(JobDir(h.job_id()), QuantizedResult(h.task_id()));
    } else if (h.ok() && kind == quantd::v1::TASK_KIND_FINETUNE) {
      result_path = JoinPath(JobDir(h.job_id()), jobfiles::FinetuneResult(h.task_id()));
    }
    if (!result_path.empty()) t.storing = true;
  }
  // Clears `storing` however this returns; a lease that ran out meanwhile expires at the
  // engine's next pass.
  struct StoringDone {
    Coordinator* c;
    const quantd::v1::TaskReportHeader& h;
    ~StoringDone() {
      MutexLock l(&c->mu_);
      auto it = c->jobs_.find(h.job_id());
      if (it != c->jobs_.end() && h.task_id() >= 0 &&
          h.task_id() < static_cast<int64_t>(it->second.tasks.size())) {
        it->second.tasks[h.task_id()].storing = false;
      }
    }
  } storing_done{this, h};
  if (h.ok() && !result_path.empty()) {
    uint64_t size = 0;
    std::string digest;
    if (data != nullptr) {
      size = data->size();
      digest = Sha256Hex(*data);
    } else {
      QUANTD_ASSIGN_OR_RETURN(size, FileSize(spool));
      QUANTD_ASSIGN_OR_RETURN(digest, Sha256File(spool));
    }
    if (size != h.result_size() || digest != h.result_sha256()) {
      return absl::DataLossError(absl::StrCat("task ", h.task_id(), " result: got ", size,
                                              " bytes that do not match the header's size/sha256"));
    }
    if (data != nullptr) {
      QUANTD_RETURN_IF_ERROR(WriteFileAtomic(result_path, *data));
    } else {
      // The spool file is complete and fsynced by the service; rename is the atomic step.
      if (::rename(spool.c_str(), result_path.c_str()) != 0) {
        return absl::InternalError(absl::StrCat("rename ", spool, " -> ", result_path, ": ",
                                                std::strerror(errno)));
      }
      QUANTD_RETURN_IF_ERROR(SyncDir(std::filesystem::path(result_path).parent_path().string()));
    }
  }
  Job snapshot;
  std::string worker_name;
  {
    MutexLock l(&mu_);
    auto it = jobs_.find(h.job_id());
    if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job ", h.job_id()));
    JobEntry& e = it->second;
    TaskState& t = e.tasks[h.task_id()];
    if (Terminal(e.job.state()) || !t.leased || t.lease_id != h.lease_id()) {
      return absl::FailedPreconditionError("lease was cancelled while the result was stored");
    }
    auto w = workers_.find(h.worker_id());
    if (w != workers_.end()) worker_name = w->second.info.worker_name();
    // The task's next row is stored first; the lease ends only once that write succeeded (a
    // failed write leaves the lease held: the worker's report fails and the lease can expire).
    Transition tr = BeginLocked(e);
    TaskRow row = t.row;
    row.attempts++;
    if (h.ok()) {
      row.state = TaskRowState::kDone;
      row.result = h;
      tr.rows.push_back(std::move(row));
      QUANTD_RETURN_IF_ERROR(CommitLocked(e, std::move(tr)));
      ReleaseLeaseLocked(t);
      metrics_->TaskFinished(KindName(kind), "ok", h.seconds());
      if (!worker_name.empty()) metrics_->WorkerTaskCompleted(worker_name);
      if (kind == quantd::v1::TASK_KIND_HESSIAN) metrics_->HessianTokens(h.tokens());
      if (kind == quantd::v1::TASK_KIND_FINETUNE) {
        metrics_->FinetuneBlock(h.job_id(), h.finetune().layer(), h.finetune().heldout_before(),
                                h.finetune().heldout_best());
      }
      if (kind == quantd::v1::TASK_KIND_QUANTIZE) {
        metrics_->MatrixProxyLoss(h.proxy_loss());
        if (auto info = quant::InspectPacked(data != nullptr ? *data : std::string());
            info.ok()) {
          metrics_->WeightsQuantized(int64_t{info->m} * info->n);
        }
      }
    } else {
      auto code = static_cast<absl::StatusCode>(h.error_code());
      std::string what = absl::StrCat(KindName(kind), " task ", h.task_id(),
                                      t.row.task.tensor_name().empty() ? "" : " (",
                                      t.row.task.tensor_name(),
                                      t.row.task.tensor_name().empty() ? "" : ")", ": ", h.error());
      const bool fail_job = Deterministic(code) || row.attempts >= options_.max_attempts;
      tr.rows.push_back(std::move(row));
      if (fail_job) {
        QUANTD_RETURN_IF_ERROR(FailJobLocked(e, what, std::move(tr)));
      } else {
        QUANTD_RETURN_IF_ERROR(CommitLocked(e, std::move(tr)));
      }
      ReleaseLeaseLocked(t);
      metrics_->TaskFinished(KindName(kind), "error", h.seconds());
    }
    CountRunningLocked(e);
    snapshot = e.job;
  }
  Notify(snapshot);
  {
    MutexLock l(&engine_mu_);
    kick_ = true;
  }
  return absl::OkStatus();
}

// ------------------------------------------------------------------------------------------
// Engine

void Coordinator::EngineLoop() {
  for (;;) {
    {
      MutexLock l(&engine_mu_);
      auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(engine_mu_) { return stop_ || kick_; };
      engine_mu_.AwaitWithTimeout(woken, absl::Milliseconds(250));
      if (stop_) return;
      kick_ = false;
    }
    EngineStep();
  }
}

std::string Coordinator::ApplyStepResultLocked(JobEntry& e, int phase, const std::string& step,
                                               const absl::Status& s, int published_version,
                                               std::vector<Job>* changed) {
  if (Terminal(e.job.state()) || e.phase != phase) return "";  // cancelled meanwhile
  if (!s.ok()) {
    // The steps are idempotent and their writes atomic, so an I/O failure (a full disk, a
    // transient error) is retried with backoff before the job fails; nothing is published
    // until a step succeeds as a whole.
    ++e.step_failures;
    if (e.step_failures < options_.max_step_attempts && s.code() != absl::StatusCode::kDataLoss &&
        s.code() != absl::StatusCode::kInvalidArgument) {
      const absl::Duration delay = absl::Milliseconds(500) * (1 << std::min(e.step_failures, 6));
      e.step_retry_at = absl::Now() + delay;
      std::fprintf(stderr, "quantd: job %s: %s step failed (attempt %d of %d), retrying in %s: %s\n",
                   e.job.id().c_str(), step.c_str(), e.step_failures, options_.max_step_attempts,
                   absl::FormatDuration(delay).c_str(), s.ToString().c_str());
      return "";
    }
    // Failed for good. Its partial output goes before the job shows FAILED (a client that
    // sees the failure must not find the leftovers), outside the lock: below.
    return absl::StrCat(step, " step failed: ", s.ToString());
  }
  Transition tr = BeginLocked(e);
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
        auto it = alloc->by_tensor.find(t.row.task.tensor_name());
        if (it == alloc->by_tensor.end() || it->second.task_id != t.row.task_id) continue;
      }
      sum += r.proxy_loss();
      ++n;
    }
    if (t.row.task.kind() == quantd::v1::TASK_KIND_EVAL && t.row.state == TaskRowState::kDone) {
      if (t.row.task.eval_target() == jobfiles::kEvalTargetFp) tr.job.set_fp_ppl(r.ppl());
      if (t.row.task.eval_target() == jobfiles::kEvalTargetQuantized) tr.job.set_quant_ppl(r.ppl());
    }
  }
  if (n > 0) tr.job.set_mean_proxy_loss(sum / n);
  absl::Status st = CommitLocked(e, std::move(tr));
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

void Coordinator::EngineStep() {
  // 0. Jobs reloaded after a restart: check their inputs before anything of them runs.
  std::vector<Job> changed = VerifyRecoveredJobs();
  // 1. Lease expiry and worker liveness.
  {
    MutexLock l(&mu_);
    const absl::Time now = absl::Now();
    for (auto& [wid, w] : workers_) {
      if (!w.lost && now - w.last_seen > 3 * options_.heartbeat_interval + options_.lease_timeout) {
        w.lost = true;
      }
    }
    for (auto& [id, e] : jobs_) {
      if (Terminal(e.job.state())) continue;
      for (TaskState& t : e.tasks) {
        if (!t.leased || t.storing || t.lease_expiry > now) continue;
        // The attempt is stored before the lease ends; if the write fails the lease stays
        // (expired) and the next step tries again.
        Transition tr = BeginLocked(e);
        TaskRow row = t.row;
        row.attempts++;
        const bool fail_job = row.attempts >= options_.max_attempts;
        const std::string why = absl::StrCat("task ", row.task_id, " lost its lease ",
                                             row.attempts, " times (workers died or hung)");
        tr.rows.push_back(std::move(row));
        absl::Status s = fail_job ? FailJobLocked(e, why, std::move(tr))
                                  : CommitLocked(e, std::move(tr));
        if (!s.ok()) {
          std::fprintf(stderr, "quantd: job %s: storing the expiry of task %lld failed, retrying: %s\n",
                       id.c_str(), static_cast<long long>(t.row.task_id), s.ToString().c_str());
          break;
        }
        // Counted before the lease leaves quantd_worker_leases, so a scrape that sees the
        // worker's lease gone also sees the expiry (tests tell expiry from a report that way).
        // (A job failed here has already dropped its leases, this one included.)
        metrics_->LeaseExpired();
        ReleaseLeaseLocked(t);
        CountRunningLocked(e);  // watchers see one busy worker fewer
        changed.push_back(e.job);
        if (fail_job) break;
      }
    }
  }
  // 2. Phase transitions, one job at a time, without holding mu_ during file work.
  struct Pending {
    Job job;
    int phase;
    int stages;
    std::vector<TaskRow> tasks;
    int finetune = 0;
  };
  std::vector<Pending> ready;
  {
    MutexLock l(&mu_);
    for (const std::string& id : job_order_) {
      JobEntry& e = jobs_.at(id);
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
      MutexLock l(&mu_);
      final_error = ApplyStepResultLocked(jobs_.at(p.job.id()), p.phase, step, s,
                                          published_version, &changed);
    }
    if (!final_error.empty()) {
      RemoveAll(registry_.StagingDir(p.job.id())).IgnoreError();
      MutexLock l(&mu_);
      JobEntry& e = jobs_.at(p.job.id());
      if (Terminal(e.job.state()) || e.phase != p.phase) continue;
      if (!FailJobLocked(e, final_error).ok()) {
        e.step_retry_at = absl::Now() + absl::Seconds(1);  // the store failed: try again
        continue;
      }
      changed.push_back(e.job);
    }
  }
  for (const Job& j : changed) Notify(j);
  if (!changed.empty()) PublishJobCounts();
  // Free the work directory of finished jobs.
  for (const Job& j : changed) {
    if (Terminal(j.state())) {
      RemoveAll(JobDir(j.id())).IgnoreError();
      if (j.state() != quantd::v1::JOB_STATE_SUCCEEDED) {
        RemoveAll(registry_.StagingDir(j.id())).IgnoreError();
      }
    }
  }
}

}  // namespace quantd::server
