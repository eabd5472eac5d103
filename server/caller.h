// Caller: who made a gRPC call, as the auth metadata processor established it
// (auth/server_credentials.h), for tenant checks and the audit log.
// Thread-safety: plain values and functions; Audit writes one line to stderr per call.
#ifndef QUANTD_SERVER_CALLER_H_
#define QUANTD_SERVER_CALLER_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "grpcpp/server_context.h"

namespace quantd::server {

struct Caller {
  std::string name;    // token name or certificate CN; "anonymous" when quantd checks no credentials
  std::string tenant;  // model-name prefix the caller is limited to; "" = every model
  std::string peer;    // gRPC peer address ("ipv4:127.0.0.1:52110")
};

Caller CallerOf(const grpc::ServerContextBase& ctx);

// PERMISSION_DENIED when `caller` is limited to a tenant prefix that model `name` does not
// start with, naming the caller, the model and the prefix; OK otherwise.
absl::Status CheckTenant(const Caller& caller, absl::string_view name);

// One audit line on stderr:
//   quantd: audit: <action> by "<caller>" (tenant <t>, <peer>) <what>: <OK or the status>
void Audit(const Caller& caller, absl::string_view action, absl::string_view what,
           const absl::Status& result);

}  // namespace quantd::server

#endif  // QUANTD_SERVER_CALLER_H_
