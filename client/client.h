// QuantdClient: a thin, synchronous C++ client over quantd's public gRPC services
// (QuantService and RegistryService). Every call returns absl::Status / absl::StatusOr with the
// server's gRPC code mapped 1:1 (see grpc_status.h); UNAVAILABLE / DEADLINE_EXCEEDED mean the
// server could not be reached or did not answer in time.
// Thread-safety: a QuantdClient may be used from several threads at once (gRPC stubs are).
#ifndef QUANTD_CLIENT_CLIENT_H_
#define QUANTD_CLIENT_CLIENT_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "auth/channel.h"
#include "client/model_fetcher.h"
#include "grpcpp/channel.h"
#include "proto/quantd.grpc.pb.h"
#include "proto/quantd.pb.h"

namespace quantd::client {

struct ClientOptions {
  // How long Connect waits for the channel to become ready. Default: 5 s.
  absl::Duration connect_timeout = absl::Seconds(5);
  // Deadline of each unary call (SubmitJob hashes the model on the server). Default: 120 s.
  absl::Duration rpc_timeout = absl::Seconds(120);
  // Watch: how long to keep re-attaching after the stream broke with UNAVAILABLE before giving
  // up; the clock restarts with every event received. Default: 120 s.
  absl::Duration reattach_timeout = absl::Seconds(120);
  // TLS files and bearer token for Connect. Default: plaintext, no token.
  auth::ChannelSecurity security;
};

// True for SUCCEEDED, FAILED and CANCELLED.
bool IsTerminal(quantd::v1::JobState state);

class QuantdClient {
 public:
  // Opens a channel to `addr` ("HOST:PORT") with options.security and waits up to
  // options.connect_timeout for it to connect. UNAVAILABLE naming the address if it does not
  // (with TLS this includes a failed handshake); INVALID_ARGUMENT / NOT_FOUND for bad TLS files.
  static absl::StatusOr<std::unique_ptr<QuantdClient>> Connect(const std::string& addr,
                                                               const ClientOptions& options = {});

  // Uses an existing channel (tests use an in-process server's channel). Does not wait.
  QuantdClient(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options);

  absl::StatusOr<quantd::v1::SubmitJobResponse> Submit(const quantd::v1::SubmitJobRequest& req);
  absl::StatusOr<quantd::v1::Job> GetJob(const std::string& id);
  // Every job, following page tokens until the last page.
  absl::StatusOr<std::vector<quantd::v1::Job>> ListJobs();
  absl::StatusOr<quantd::v1::Job> Cancel(const std::string& id);

  // Streams WatchJob, calling `on_event` for every event, until the job reaches a terminal
  // state; returns that last Job. If the stream breaks with UNAVAILABLE (or ends without a
  // terminal state) it waits for the channel and calls WatchJob again, for at most
  // options.reattach_timeout since the last event; then UNAVAILABLE. Other errors are returned
  // as they are. `on_reattach` (may be empty) is called before each re-attach attempt.
  absl::StatusOr<quantd::v1::Job> Watch(
      const std::string& id, const std::function<void(const quantd::v1::JobEvent&)>& on_event,
      const std::function<void(const absl::Status&)>& on_reattach = {});

  // `name` empty = every model.
  absl::StatusOr<std::vector<quantd::v1::ModelVersion>> ListModels(const std::string& name);
  // `version` 0 = latest.
  absl::StatusOr<quantd::v1::ModelVersion> GetModel(const std::string& name, int32_t version);
  // Deletes one version (≥ 1); returns what it was.
  absl::StatusOr<quantd::v1::ModelVersion> DeleteModel(const std::string& name, int32_t version);

  // GetModel, then downloads every file into `dir` with resume and verification; see
  // model_fetcher.h for the contract. Returns the ModelVersion that was fetched.
  absl::StatusOr<quantd::v1::ModelVersion> Fetch(const std::string& name, int32_t version,
                                                 const std::string& dir,
                                                 const FetchOptions& options = {});

 private:
  // One unary call on `stub` with the client's deadline: (stub.*rpc)(ctx, req, &resp).
  template <typename Stub, typename Req, typename Resp>
  absl::StatusOr<Resp> Unary(Stub& stub,
                             grpc::Status (Stub::*rpc)(grpc::ClientContext*, const Req&, Resp*),
                             const Req& req);

  std::shared_ptr<grpc::Channel> channel_;
  ClientOptions options_;
  std::unique_ptr<quantd::v1::QuantService::Stub> jobs_;
  std::unique_ptr<quantd::v1::RegistryService::Stub> registry_;
};

}  // namespace quantd::client

#endif  // QUANTD_CLIENT_CLIENT_H_
