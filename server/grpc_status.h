// absl::Status <-> grpc::Status, 1:1 by code (the codes share numbering).
#ifndef QUANTD_SERVER_GRPC_STATUS_H_
#define QUANTD_SERVER_GRPC_STATUS_H_

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

#endif  // QUANTD_SERVER_GRPC_STATUS_H_
