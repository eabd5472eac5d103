#include "server/coordinator.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "server/job_builder.h"
#include "server/job_finetune.h"

namespace quantd::server {
namespace {

using quantd::v1::Job;

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
  QUANTD_RETURN_IF_ERROR(c->registry_.Init());
  QUANTD_ASSIGN_OR_RETURN(c->table_, JobTable::Open(options.data_dir, metrics));
  SchedulerOptions so;
  so.lease_timeout = options.lease_timeout;
  so.heartbeat_interval = options.heartbeat_interval;
  so.max_attempts = options.max_attempts;
  c->scheduler_ = std::make_unique<Scheduler>(so, c->table_.get(), metrics);
  c->runner_ =
      std::make_unique<PhaseRunner>(c->table_.get(), &c->registry_, options.max_step_attempts);
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
  // (The JobTable and the Scheduler do the same for their locks.)
  { MutexLock l(&watch_mu_); }
}

void Coordinator::Notify(const Job& job) {
  MutexLock l(&watch_mu_);
  for (auto& [id, w] : watchers_) {
    if (w.job_id == job.id()) w.listener(job);
  }
}

void Coordinator::Kick() {
  MutexLock l(&engine_mu_);
  kick_ = true;
}

// ------------------------------------------------------------------------------------------
// QuantService

absl::StatusOr<quantd::v1::SubmitJobResponse> Coordinator::Submit(
    const quantd::v1::SubmitJobRequest& in) {
  quantd::v1::SubmitJobRequest req = in;
  const std::string fingerprint = RequestFingerprint(in);
  if (req.request_id().empty()) req.set_request_id(RandomId("r-"));
  const std::string request_id = req.request_id();
  QUANTD_ASSIGN_OR_RETURN(std::optional<Job> prev, table_->ReserveRequest(req, fingerprint));
  if (prev.has_value()) {
    quantd::v1::SubmitJobResponse resp;
    *resp.mutable_job() = std::move(*prev);
    resp.set_created(false);
    return resp;
  }
  // Validation, the input snapshot and tokenization run outside every lock, so submissions of
  // different requests build their jobs concurrently.
  absl::StatusOr<quantd::v1::SubmitJobResponse> resp = BuildAndStore(std::move(req), fingerprint);
  if (!resp.ok()) table_->ReleaseRequest(request_id);
  return resp;
}

absl::StatusOr<quantd::v1::SubmitJobResponse> Coordinator::BuildAndStore(
    quantd::v1::SubmitJobRequest req, const std::string& fingerprint) {
  if (build_hook_) build_hook_(req);
  QUANTD_RETURN_IF_ERROR(ValidateAndDefault(&req));
  const std::string job_id = RandomId("j-");
  const std::string dir = table_->JobDir(job_id);
  auto row = BuildJob(req, input_roots_, job_id, dir, options_.max_hessian_shards,
                      options_.hessian_stage_bytes);
  if (!row.ok()) {
    RemoveAll(dir).IgnoreError();
    return row.status();
  }
  row->job.set_request_fingerprint(fingerprint);
  row->job.set_created_unix_ms(absl::ToUnixMillis(absl::Now()));
  row->job.set_updated_unix_ms(row->job.created_unix_ms());
  absl::StatusOr<Job> job = table_->Insert(std::move(*row), req.request_id());
  if (!job.ok()) {
    RemoveAll(dir).IgnoreError();
    return job.status();
  }
  quantd::v1::SubmitJobResponse resp;
  resp.set_created(true);
  *resp.mutable_job() = std::move(*job);
  return resp;
}

absl::StatusOr<Job> Coordinator::GetJob(const std::string& id) { return table_->Get(id); }

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
  int64_t next = -1;
  for (Job& job : table_->List(start, size, tenant, &next)) *resp.add_jobs() = std::move(job);
  if (next >= 0) resp.set_next_page_token(std::to_string(next));
  return resp;
}

absl::StatusOr<Job> Coordinator::Cancel(const std::string& id) {
  Job out;
  {
    MutexLock l(table_->mu());
    JobEntry* e = table_->FindLocked(id);
    if (e == nullptr) return absl::NotFoundError(absl::StrCat("no job ", id));
    if (Terminal(e->job.state())) return e->job;
    QUANTD_RETURN_IF_ERROR(
        table_->EndJobLocked(*e, quantd::v1::JOB_STATE_CANCELLED, JobTable::Begin(*e)));
    out = e->job;
  }
  RemoveAll(registry_.StagingDir(id)).IgnoreError();
  RemoveAll(table_->JobDir(id)).IgnoreError();
  Notify(out);
  return out;
}

absl::StatusOr<Job> Coordinator::Watch(const std::string& id, JobListener listener,
                                       int64_t* sub) {
  MutexLock wl(&watch_mu_);
  QUANTD_ASSIGN_OR_RETURN(Job current, table_->Get(id));
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
    return absl::FailedPreconditionError(absl::StrCat(
        "worker ", req.worker_name(), " speaks worker API version ", req.api_version(),
        ", this coordinator ", kWorkerApiVersion, ": run the quantd-worker of the coordinator's ",
        "release (", QUANTD_VERSION, ")"));
  }
  return scheduler_->Register(req);
}

absl::StatusOr<quantd::v1::HeartbeatResponse> Coordinator::Heartbeat(
    const quantd::v1::HeartbeatRequest& req) {
  std::vector<Job> changed;
  auto r = scheduler_->Heartbeat(req, &changed);
  for (const Job& j : changed) Notify(j);
  return r;
}

absl::StatusOr<quantd::v1::LeaseTaskResponse> Coordinator::Lease(
    const quantd::v1::LeaseTaskRequest& req) {
  QUANTD_ASSIGN_OR_RETURN(Scheduler::LeaseOutcome out, scheduler_->Lease(req));
  if (out.changed.has_value()) Notify(*out.changed);
  if (out.started) table_->PublishJobCounts();
  return std::move(out.response);
}

absl::StatusOr<std::string> Coordinator::BlobPath(const std::string& job_id,
                                                  const std::string& name) {
  if (name.empty() || name.find("..") != std::string::npos || name.front() == '/' ||
      name.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("bad blob name '", name, "'"));
  }
  QUANTD_RETURN_IF_ERROR(table_->Get(job_id).status());
  if (absl::StartsWith(name, jobfiles::kStagingPrefix)) {
    return JoinPath(registry_.StagingDir(job_id), name.substr(std::string_view(jobfiles::kStagingPrefix).size()));
  }
  if (absl::StartsWith(name, jobfiles::kInputsPrefix) ||
      absl::StartsWith(name, jobfiles::kHessiansPrefix)) {
    return JoinPath(table_->JobDir(job_id), name);
  }
  if (absl::StartsWith(name, jobfiles::kQuantizedPrefix)) {
    const std::string tensor = name.substr(std::string_view(jobfiles::kQuantizedPrefix).size());
    MutexLock l(table_->mu());
    const JobEntry* e = table_->FindLocked(job_id);
    if (e == nullptr) return absl::NotFoundError(absl::StrCat("no job ", job_id));
    for (const TaskState& t : e->tasks) {
      const quantd::v1::Task& task = t.row.task;
      if (task.kind() != quantd::v1::TASK_KIND_QUANTIZE || task.quantize().tensor_name() != tensor) {
        continue;
      }
      if (t.row.state != TaskRowState::kDone) {
        return absl::FailedPreconditionError(
            absl::StrCat("blob '", name, "': ", tensor, " is not quantized yet"));
      }
      return JoinPath(table_->JobDir(job_id), QuantizedResult(t.row.task_id));
    }
    return absl::NotFoundError(
        absl::StrCat("blob '", name, "': job ", job_id, " quantizes no ", tensor));
  }
  if (absl::StartsWith(name, jobfiles::kFinetunedPrefix)) {
    MutexLock l(table_->mu());
    const JobEntry* e = table_->FindLocked(job_id);
    if (e == nullptr) return absl::NotFoundError(absl::StrCat("no job ", job_id));
    std::vector<const TaskRow*> rows;
    for (const TaskState& t : e->tasks) rows.push_back(&t.row);
    QUANTD_ASSIGN_OR_RETURN(std::string rel, FinetunedBlobResult(name, rows));
    return JoinPath(table_->JobDir(job_id), rel);
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
  QUANTD_ASSIGN_OR_RETURN(const Scheduler::ReportTarget target, scheduler_->BeginReport(h));
  const std::string& result_path = target.result_path;
  // The result is checked and stored without a lock; its lease does not expire until this
  // returns (a lease that ran out meanwhile expires at the engine's next pass).
  struct StoringDone {
    Scheduler* s;
    const quantd::v1::TaskReportHeader& h;
    bool storing;
    ~StoringDone() {
      if (storing) s->EndStoring(h);
    }
  } storing_done{scheduler_.get(), h, !result_path.empty()};
  if (!result_path.empty()) {
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
  QUANTD_ASSIGN_OR_RETURN(const Job job, scheduler_->FinishReport(h, data));
  Notify(job);
  Kick();
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

void Coordinator::EngineStep() {
  std::vector<Job> changed;
  // Jobs reloaded after a restart: their inputs are checked before anything of them runs.
  runner_->VerifyRecoveredJobs(&changed);
  scheduler_->ExpireLeases(&changed);
  // Phase transitions, one job at a time, without a lock held during file work.
  runner_->RunSteps(&changed);
  for (const Job& j : changed) Notify(j);
  if (!changed.empty()) table_->PublishJobCounts();
  // Free the work directory of finished jobs.
  runner_->CleanUp(changed);
}

}  // namespace quantd::server
