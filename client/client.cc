#include "client/client.h"

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace quantd::client {
namespace {

namespace v1 = quantd::v1;

std::chrono::system_clock::time_point DeadlineIn(absl::Duration d) {
  return std::chrono::system_clock::now() + absl::ToChronoMilliseconds(d);
}

// A request naming one model version (GetModel, DeleteModel).
template <typename Req>
Req ModelVersionRequest(const std::string& name, int32_t version) {
  Req req;
  req.set_name(name);
  req.set_version(version);
  return req;
}

}  // namespace

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

absl::StatusOr<std::unique_ptr<QuantdClient>> QuantdClient::Connect(const std::string& addr,
                                                                    const ClientOptions& options) {
  QUANTD_ASSIGN_OR_RETURN(
      std::shared_ptr<grpc::Channel> channel,
      auth::MakeChannel(addr, options.security, grpc::ChannelArguments(), "--tls-"));
  if (!channel->WaitForConnected(DeadlineIn(options.connect_timeout))) {
    return absl::UnavailableError(absl::StrCat(
        "cannot reach quantd at ", addr, " within ", absl::FormatDuration(options.connect_timeout),
        options.security.tls()
            ? " (TLS: is the server serving TLS, does its certificate name this host and is it "
              "signed by --tls-ca; with mutual TLS, is --tls-cert signed by the server's client CA?)"
            : ""));
  }
  return std::make_unique<QuantdClient>(std::move(channel), options);
}

QuantdClient::QuantdClient(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options)
    : channel_(std::move(channel)),
      options_(options),
      jobs_(v1::QuantService::NewStub(channel_)),
      registry_(v1::RegistryService::NewStub(channel_)) {}

template <typename Stub, typename Req, typename Resp>
absl::StatusOr<Resp> QuantdClient::Unary(
    Stub& stub, grpc::Status (Stub::*rpc)(grpc::ClientContext*, const Req&, Resp*),
    const Req& req) {
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(options_.rpc_timeout));
  Resp resp;
  QUANTD_RETURN_IF_ERROR(FromGrpc((stub.*rpc)(&ctx, req, &resp)));
  return resp;
}

absl::StatusOr<v1::SubmitJobResponse> QuantdClient::Submit(const v1::SubmitJobRequest& req) {
  return Unary(*jobs_, &v1::QuantService::Stub::SubmitJob, req);
}

absl::StatusOr<v1::Job> QuantdClient::GetJob(const std::string& id) {
  v1::GetJobRequest req;
  req.set_id(id);
  return Unary(*jobs_, &v1::QuantService::Stub::GetJob, req);
}

absl::StatusOr<std::vector<v1::Job>> QuantdClient::ListJobs() {
  std::vector<v1::Job> all;
  std::string token;
  for (int page = 0;; ++page) {
    if (page > 100000) return absl::InternalError("ListJobs: server keeps returning page tokens");
    v1::ListJobsRequest req;
    req.set_page_size(500);
    req.set_page_token(token);
    QUANTD_ASSIGN_OR_RETURN(v1::ListJobsResponse resp,
                            Unary(*jobs_, &v1::QuantService::Stub::ListJobs, req));
    for (v1::Job& j : *resp.mutable_jobs()) all.push_back(std::move(j));
    if (resp.next_page_token().empty()) break;
    if (resp.next_page_token() == token) {
      return absl::InternalError("ListJobs: server returned the same page token twice");
    }
    token = resp.next_page_token();
  }
  return all;
}

absl::StatusOr<v1::Job> QuantdClient::Cancel(const std::string& id) {
  v1::CancelJobRequest req;
  req.set_id(id);
  return Unary(*jobs_, &v1::QuantService::Stub::CancelJob, req);
}

absl::StatusOr<v1::Job> QuantdClient::Watch(
    const std::string& id, const std::function<void(const v1::JobEvent&)>& on_event,
    const std::function<void(const absl::Status&)>& on_reattach) {
  v1::WatchJobRequest req;
  req.set_id(id);
  absl::Time last_event = absl::Now();
  absl::Duration backoff = absl::Milliseconds(250);
  for (int attempt = 0;; ++attempt) {
    if (attempt > 0) {
      const absl::Time give_up = last_event + options_.reattach_timeout;
      absl::SleepFor(std::min(backoff, std::max(absl::ZeroDuration(), give_up - absl::Now())));
      backoff = std::min(backoff * 2, absl::Seconds(4));
      if (absl::Now() >= give_up ||
          !channel_->WaitForConnected(absl::ToChronoTime(give_up))) {
        return absl::UnavailableError(absl::StrCat(
            "lost the WatchJob stream for job ", id, " and could not re-attach within ",
            absl::FormatDuration(options_.reattach_timeout)));
      }
    }
    grpc::ClientContext ctx;  // no deadline: a job may run for hours
    std::unique_ptr<grpc::ClientReader<v1::JobEvent>> reader = jobs_->WatchJob(&ctx, req);
    v1::JobEvent event;
    bool terminal = false;
    v1::Job last;
    while (reader->Read(&event)) {
      last_event = absl::Now();
      backoff = absl::Milliseconds(250);
      if (on_event) on_event(event);
      last = event.job();
      if (IsTerminal(last.state())) {
        terminal = true;
        ctx.TryCancel();  // the server ends the stream itself; do not wait for it
        break;
      }
    }
    absl::Status st = FromGrpc(reader->Finish());
    if (terminal) return last;
    if (st.ok()) {
      st = absl::UnavailableError("WatchJob stream ended before the job finished");
    } else if (!absl::IsUnavailable(st)) {
      return st;
    }
    if (on_reattach) on_reattach(st);
  }
}

absl::StatusOr<std::vector<v1::ModelVersion>> QuantdClient::ListModels(const std::string& name) {
  v1::ListModelsRequest req;
  req.set_name(name);
  QUANTD_ASSIGN_OR_RETURN(v1::ListModelsResponse resp,
                          Unary(*registry_, &v1::RegistryService::Stub::ListModels, req));
  return std::vector<v1::ModelVersion>(resp.models().begin(), resp.models().end());
}

absl::StatusOr<v1::ModelVersion> QuantdClient::DeleteModel(const std::string& name,
                                                           int32_t version) {
  return Unary(*registry_, &v1::RegistryService::Stub::DeleteModel,
               ModelVersionRequest<v1::DeleteModelRequest>(name, version));
}

absl::StatusOr<v1::ModelVersion> QuantdClient::GetModel(const std::string& name,
                                                        int32_t version) {
  return Unary(*registry_, &v1::RegistryService::Stub::GetModel,
               ModelVersionRequest<v1::GetModelRequest>(name, version));
}

absl::StatusOr<v1::ModelVersion> QuantdClient::Fetch(const std::string& name, int32_t version,
                                                     const std::string& dir,
                                                     const FetchOptions& options) {
  QUANTD_ASSIGN_OR_RETURN(v1::ModelVersion mv, GetModel(name, version));
  QUANTD_RETURN_IF_ERROR(FetchModelVersion(*registry_, mv, dir, options));
  return mv;
}

}  // namespace quantd::client
