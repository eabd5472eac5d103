#include "server/services.h"

#include <fcntl.h>
#include <cstdio>
#include <unistd.h>

#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "auth/scopes.h"
#include "common/mutex.h"
#include "common/tsan.h"
#include "common/grpc_status.h"
#include "server/caller.h"

namespace quantd::server {
namespace {

using grpc::CallbackServerContext;
using grpc::ServerUnaryReactor;

// Finishes a unary call with the status of `s`, copying the value into `resp` when ok.
template <typename T>
ServerUnaryReactor* Reply(CallbackServerContext* ctx, absl::StatusOr<T> s, T* resp) {
  auto* r = ctx->DefaultReactor();
  if (s.ok()) *resp = std::move(*s);
  r->Finish(ToGrpc(s.status()));
  return r;
}

// A gRPC callback reactor whose reactions are ordered for TSan (common/tsan.h): each reaction
// starts with Begin(), and the calls that let the next reaction start (Finish, StartWrite,
// StartRead) go through FinishWith/Write/Read, which hand off first. Free in normal builds.
template <typename Base>
class OrderedReactor : public Base {
 protected:
  void Begin() { ReactionBegin(this); }
  void FinishWith(const grpc::Status& s) {
    ReactionHandOff(this);
    this->Finish(s);
  }
  template <typename Msg>
  void Write(const Msg* m) {
    ReactionHandOff(this);
    this->StartWrite(m);
  }
  template <typename Msg>
  void Read(Msg* m) {
    ReactionHandOff(this);
    this->StartRead(m);
  }
};

// Streams a file from an offset in <= 2 MiB chunks. Owns the fd.
class FileStreamReactor : public OrderedReactor<grpc::ServerWriteReactor<quantd::v1::Chunk>> {
 public:
  FileStreamReactor(const std::string& path, uint64_t offset, Metrics* metrics)
      : offset_(offset), metrics_(metrics) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) {
      FinishWith(grpc::Status(grpc::StatusCode::NOT_FOUND, absl::StrCat("cannot open ", path)));
      return;
    }
    off_t size = ::lseek(fd_, 0, SEEK_END);
    if (size < 0 || offset > static_cast<uint64_t>(size)) {
      FinishWith(grpc::Status(
          grpc::StatusCode::OUT_OF_RANGE,
          absl::StrCat("offset ", offset, " is past the end (", size, " bytes)")));
      return;
    }
    Next();
  }
  explicit FileStreamReactor(const grpc::Status& error) { FinishWith(error); }
  ~FileStreamReactor() override {
    if (fd_ >= 0) ::close(fd_);
  }
  void OnWriteDone(bool ok) override {
    Begin();
    if (!ok) {
      FinishWith(grpc::Status(grpc::StatusCode::UNAVAILABLE, "client went away"));
      return;
    }
    Next();
  }
  void OnDone() override {
    Begin();
    delete this;
  }

 private:
  void Next() {
    chunk_.set_offset(offset_);
    std::string* buf = chunk_.mutable_data();
    buf->resize(kChunkBytes);
    ssize_t n;
    do {
      n = ::pread(fd_, buf->data(), buf->size(), static_cast<off_t>(offset_));
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      FinishWith(grpc::Status(grpc::StatusCode::INTERNAL, "read error"));
      return;
    }
    if (n == 0) {
      FinishWith(grpc::Status::OK);
      return;
    }
    buf->resize(static_cast<size_t>(n));
    offset_ += static_cast<uint64_t>(n);
    if (metrics_) metrics_->BytesServed(n);
    Write(&chunk_);
  }

  int fd_ = -1;
  uint64_t offset_ = 0;
  Metrics* metrics_ = nullptr;
  quantd::v1::Chunk chunk_;
};

// A server-streaming call that ends at once with an error.
template <typename Msg>
class ErrorWriter : public OrderedReactor<grpc::ServerWriteReactor<Msg>> {
 public:
  explicit ErrorWriter(const grpc::Status& error) { this->FinishWith(error); }
  void OnDone() override {
    this->Begin();
    delete this;
  }
};

// Job `id` if the caller's tenant covers its model name (jobs of other tenants are refused
// like their models).
absl::StatusOr<quantd::v1::Job> VisibleJob(Coordinator* c, const Caller& caller,
                                           const std::string& id) {
  absl::StatusOr<quantd::v1::Job> job = c->GetJob(id);
  if (job.ok() && !auth::TenantAllows(caller.tenant, job->name())) {
    return absl::PermissionDeniedError(absl::StrCat(
        "job ", id, " is outside the tenant \"", caller.tenant, "\" of \"", caller.name, "\""));
  }
  return job;
}

bool TerminalState(quantd::v1::JobState s) {
  return s == quantd::v1::JOB_STATE_SUCCEEDED || s == quantd::v1::JOB_STATE_FAILED ||
         s == quantd::v1::JOB_STATE_CANCELLED;
}

// Sends the job now and after every change; finishes after a terminal state was written.
class WatchReactor : public OrderedReactor<grpc::ServerWriteReactor<quantd::v1::JobEvent>> {
 public:
  WatchReactor(Coordinator* c, const std::string& id) : c_(c) {
    auto job = c_->Watch(id, [this](const quantd::v1::Job& j) { OnChange(j); }, &sub_);
    if (!job.ok()) {
      sub_ = 0;
      FinishWith(ToGrpc(job.status()));
      return;
    }
    OnChange(*job);
  }
  void OnWriteDone(bool ok) override {
    Begin();
    MutexLock l(&mu_);
    if (!ok) {
      finishing_ = true;
      FinishWith(grpc::Status(grpc::StatusCode::UNAVAILABLE, "client went away"));
      return;
    }
    if (sent_terminal_) {
      finishing_ = true;
      FinishWith(grpc::Status::OK);
      return;
    }
    if (has_pending_) {
      WriteLocked();
    } else {
      writing_ = false;
    }
  }
  void OnCancel() override {}
  void OnDone() override {
    Begin();
    if (sub_) c_->Unwatch(sub_);
    delete this;
  }

 private:
  void OnChange(const quantd::v1::Job& job) {
    MutexLock l(&mu_);
    if (finishing_ || sent_terminal_) return;
    *pending_.mutable_job() = job;
    pending_.set_message(absl::StrCat(job.phase(), " ", job.tasks_done(), "/", job.tasks_total()));
    has_pending_ = true;
    if (!writing_) WriteLocked();
  }
  void WriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    writing_ = true;
    has_pending_ = false;
    out_ = pending_;
    sent_terminal_ = TerminalState(out_.job().state());
    Write(&out_);
  }

  Coordinator* c_;
  int64_t sub_ = 0;
  Mutex mu_;
  quantd::v1::JobEvent pending_ ABSL_GUARDED_BY(mu_);
  quantd::v1::JobEvent out_ ABSL_GUARDED_BY(mu_);
  bool has_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool sent_terminal_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
};

// Reads a task report: a header, then the result bytes.
class ReportReactor : public OrderedReactor<grpc::ServerReadReactor<quantd::v1::TaskReport>> {
 public:
  ReportReactor(Coordinator* c, WorkQueue* work) : c_(c), work_(work) {
    Read(&msg_);
  }
  void OnReadDone(bool ok) override {
    Begin();
    if (!ok) {  // client finished sending
      if (!have_header_) {
        FinishWith(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "report without a header"));
        return;
      }
      // The fsync, the hash and the decode take seconds for a big result: off this thread.
      work_->Post([this] { FinishWith(ToGrpc(Store())); });
      return;
    }
    if (msg_.has_header()) {
      if (have_header_) {
        FinishWith(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "two report headers"));
        return;
      }
      header_ = msg_.header();
      have_header_ = true;
      // Spooled to disk above kSpoolBytes; a 70B model's fp64 Hessian shard is ~190 GiB.
      if (header_.result_size() > (uint64_t{256} << 30)) {
        FinishWith(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "result larger than 256 GiB"));
        return;
      }
      if (header_.result_size() > kSpoolBytes) {
        // Large results (Hessian shards) go to a file as they arrive.
        absl::StatusOr<std::string> path = c_->SpoolPath();
        if (path.ok()) {
          spool_path_ = *path;
          spool_.open(spool_path_, std::ios::binary | std::ios::trunc);
        }
        if (!path.ok() || !spool_.is_open()) {
          FinishWith(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                  "cannot spool the report to disk"));
          return;
        }
      } else {
        data_.reserve(header_.result_size());
      }
    } else {
      if (!have_header_ || received_ + msg_.data().size() > header_.result_size()) {
        FinishWith(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                "report data before the header or beyond result_size"));
        return;
      }
      received_ += msg_.data().size();
      if (spool_.is_open()) {
        spool_.write(msg_.data().data(), static_cast<std::streamsize>(msg_.data().size()));
      } else {
        data_ += msg_.data();
      }
    }
    Read(&msg_);
  }
  void OnDone() override {
    Begin();
    if (spool_.is_open()) {  // the stream broke off before the last message
      spool_.close();
      ::unlink(spool_path_.c_str());
    }
    delete this;
  }

 private:
  // Hands the complete report to the coordinator (a WorkQueue thread).
  absl::Status Store() {
    absl::Status reported;
    if (spool_.is_open()) {
      spool_.flush();
      const bool ok = spool_.good();
      spool_.close();
      // fsync before the coordinator renames it into the job directory.
      const int fd = ::open(spool_path_.c_str(), O_RDONLY | O_CLOEXEC);
      const bool synced = fd >= 0 && ::fsync(fd) == 0;
      if (fd >= 0) ::close(fd);
      reported = ok && synced ? c_->ReportSpooled(header_, spool_path_)
                              : absl::ResourceExhaustedError("writing the spooled report failed");
      ::unlink(spool_path_.c_str());
    } else {
      reported = c_->Report(header_, data_);
    }
    return reported;
  }

  // Results larger than this are spooled to disk instead of memory (every Hessian shard of the
  // example model already is, so the e2e tests cover the path).
  static constexpr uint64_t kSpoolBytes = uint64_t{1} << 20;
  Coordinator* c_;
  WorkQueue* work_;
  quantd::v1::TaskReport msg_;
  quantd::v1::TaskReportHeader header_;
  bool have_header_ = false;
  uint64_t received_ = 0;
  std::string data_;
  std::string spool_path_;
  std::ofstream spool_;
};

}  // namespace

// --- QuantService ---
// Scopes were checked before these handlers run (auth/scopes.cc); they check tenants and write
// the audit lines.

ServerUnaryReactor* QuantServiceImpl::SubmitJob(CallbackServerContext* ctx,
                                                const quantd::v1::SubmitJobRequest* req,
                                                quantd::v1::SubmitJobResponse* resp) {
  const Caller caller = CallerOf(*ctx);
  auto* reactor = ctx->DefaultReactor();
  // Validation, the inputs' snapshot and tokenization take seconds for a big model: off the
  // callback thread. gRPC keeps *req and *resp alive until the reactor finishes.
  work_->Post([this, caller, req, resp, reactor] {
    const absl::Status tenant = CheckTenant(caller, req->name());
    absl::StatusOr<quantd::v1::SubmitJobResponse> out =
        tenant.ok() ? c_->Submit(*req) : absl::StatusOr<quantd::v1::SubmitJobResponse>(tenant);
    std::string what = absl::StrCat("name=", req->name(), " model_dir=", req->model_dir(),
                                    " calib=", req->calib_path());
    if (!req->eval_path().empty()) absl::StrAppend(&what, " eval=", req->eval_path());
    if (out.ok()) absl::StrAppend(&what, " job=", out->job().id(), out->created() ? "" : " (retry)");
    Audit(caller, "submit", what, out.status());
    if (out.ok()) *resp = std::move(*out);
    reactor->Finish(ToGrpc(out.status()));
  });
  return reactor;
}

ServerUnaryReactor* QuantServiceImpl::GetJob(CallbackServerContext* ctx,
                                             const quantd::v1::GetJobRequest* req,
                                             quantd::v1::Job* resp) {
  return Reply(ctx, VisibleJob(c_, CallerOf(*ctx), req->id()), resp);
}

ServerUnaryReactor* QuantServiceImpl::ListJobs(CallbackServerContext* ctx,
                                               const quantd::v1::ListJobsRequest* req,
                                               quantd::v1::ListJobsResponse* resp) {
  return Reply(ctx, c_->ListJobs(*req, CallerOf(*ctx).tenant), resp);
}

grpc::ServerWriteReactor<quantd::v1::JobEvent>* QuantServiceImpl::WatchJob(
    CallbackServerContext* ctx, const quantd::v1::WatchJobRequest* req) {
  const Caller caller = CallerOf(*ctx);
  if (!caller.tenant.empty()) {
    absl::StatusOr<quantd::v1::Job> job = VisibleJob(c_, caller, req->id());
    if (!job.ok()) return new ErrorWriter<quantd::v1::JobEvent>(ToGrpc(job.status()));
  }
  return new WatchReactor(c_, req->id());
}

ServerUnaryReactor* QuantServiceImpl::CancelJob(CallbackServerContext* ctx,
                                                const quantd::v1::CancelJobRequest* req,
                                                quantd::v1::Job* resp) {
  const Caller caller = CallerOf(*ctx);
  absl::StatusOr<quantd::v1::Job> out = VisibleJob(c_, caller, req->id());
  if (out.ok()) out = c_->Cancel(req->id());
  Audit(caller, "cancel", absl::StrCat("job=", req->id(), out.ok() ? " name=" + out->name() : ""),
        out.status());
  return Reply(ctx, std::move(out), resp);
}

// --- RegistryService ---

ServerUnaryReactor* RegistryServiceImpl::ListModels(CallbackServerContext* ctx,
                                                    const quantd::v1::ListModelsRequest* req,
                                                    quantd::v1::ListModelsResponse* resp) {
  const Caller caller = CallerOf(*ctx);
  absl::StatusOr<quantd::v1::ListModelsResponse> out;
  if (absl::Status t = req->name().empty() ? absl::OkStatus() : CheckTenant(caller, req->name());
      !t.ok()) {
    out = t;
  } else if (auto list = c_->registry().List(req->name()); !list.ok()) {
    out = list.status();
  } else {
    quantd::v1::ListModelsResponse r;
    for (auto& mv : *list) {
      if (auth::TenantAllows(caller.tenant, mv.name())) *r.add_models() = std::move(mv);
    }
    out = std::move(r);
  }
  return Reply(ctx, std::move(out), resp);
}

ServerUnaryReactor* RegistryServiceImpl::GetModel(CallbackServerContext* ctx,
                                                  const quantd::v1::GetModelRequest* req,
                                                  quantd::v1::ModelVersion* resp) {
  const absl::Status tenant = CheckTenant(CallerOf(*ctx), req->name());
  absl::StatusOr<quantd::v1::ModelVersion> out =
      tenant.ok() ? c_->registry().Get(req->name(), req->version())
                  : absl::StatusOr<quantd::v1::ModelVersion>(tenant);
  return Reply(ctx, std::move(out), resp);
}

ServerUnaryReactor* RegistryServiceImpl::DeleteModel(CallbackServerContext* ctx,
                                                     const quantd::v1::DeleteModelRequest* req,
                                                     quantd::v1::ModelVersion* resp) {
  const Caller caller = CallerOf(*ctx);
  const absl::Status tenant = CheckTenant(caller, req->name());
  absl::StatusOr<quantd::v1::ModelVersion> deleted =
      tenant.ok() ? c_->registry().Delete(req->name(), req->version())
                  : absl::StatusOr<quantd::v1::ModelVersion>(tenant);
  Audit(caller, "delete",
        absl::StrCat("model=", req->name(), "@", deleted.ok() ? deleted->version() : req->version()),
        deleted.status());
  return Reply(ctx, std::move(deleted), resp);
}

grpc::ServerWriteReactor<quantd::v1::Chunk>* RegistryServiceImpl::FetchArtifact(
    CallbackServerContext* ctx, const quantd::v1::FetchArtifactRequest* req) {
  const Caller caller = CallerOf(*ctx);
  const absl::Status tenant = CheckTenant(caller, req->name());
  absl::StatusOr<std::string> path =
      tenant.ok() ? c_->registry().VerifiedFile(req->name(), req->version(), req->path())
                  : absl::StatusOr<std::string>(tenant);
  Audit(caller, "fetch",
        absl::StrCat("model=", req->name(), "@", req->version(), " file=", req->path(),
                     req->offset() ? absl::StrCat(" offset=", req->offset()) : ""),
        path.status());
  if (!path.ok()) return new FileStreamReactor(ToGrpc(path.status()));
  return new FileStreamReactor(*path, req->offset(), &c_->metrics());
}

// --- WorkerService ---

ServerUnaryReactor* WorkerServiceImpl::Register(CallbackServerContext* ctx,
                                                const quantd::v1::RegisterRequest* req,
                                                quantd::v1::RegisterResponse* resp) {
  return Reply(ctx, c_->Register(*req), resp);
}

ServerUnaryReactor* WorkerServiceImpl::Heartbeat(CallbackServerContext* ctx,
                                                 const quantd::v1::HeartbeatRequest* req,
                                                 quantd::v1::HeartbeatResponse* resp) {
  return Reply(ctx, c_->Heartbeat(*req), resp);
}

ServerUnaryReactor* WorkerServiceImpl::LeaseTask(CallbackServerContext* ctx,
                                                 const quantd::v1::LeaseTaskRequest* req,
                                                 quantd::v1::LeaseTaskResponse* resp) {
  return Reply(ctx, c_->Lease(*req), resp);
}

grpc::ServerWriteReactor<quantd::v1::Chunk>* WorkerServiceImpl::FetchBlob(
    CallbackServerContext* ctx, const quantd::v1::FetchBlobRequest* req) {
  auto path = c_->BlobPath(req->job_id(), req->name());
  if (!path.ok()) return new FileStreamReactor(ToGrpc(path.status()));
  return new FileStreamReactor(*path, req->offset(), nullptr);
}

grpc::ServerReadReactor<quantd::v1::TaskReport>* WorkerServiceImpl::ReportTask(
    CallbackServerContext* ctx, quantd::v1::TaskReportResponse* resp) {
  return new ReportReactor(c_, work_);
}

}  // namespace quantd::server
