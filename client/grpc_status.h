// grpc::Status -> absl::Status. The codes have the same numbers (both follow
// google.rpc.Code), so the mapping is 1:1; the message is kept as the server wrote it.
// Thread-safety: pure function.
#ifndef QUANTD_CLIENT_GRPC_STATUS_H_
#define QUANTD_CLIENT_GRPC_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace quantd::client {

inline absl::Status FromGrpcStatus(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

}  // namespace quantd::client

#endif  // QUANTD_CLIENT_GRPC_STATUS_H_
