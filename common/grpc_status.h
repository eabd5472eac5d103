// absl::Status <-> grpc::Status. The codes have the same numbers (both follow google.rpc.Code),
// so the mapping is 1:1; the message is kept as written. Used by the server, the worker and the
// client (header-only: the including target links gRPC).
// Thread-safety: pure functions.
#ifndef QUANTD_COMMON_GRPC_STATUS_H_
#define QUANTD_COMMON_GRPC_STATUS_H_

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace quantd {

inline grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

inline absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

}  // namespace quantd

#endif  // QUANTD_COMMON_GRPC_STATUS_H_
