// RunServer: assembles the coordinator, the gRPC services (plus grpc.health.v1 and reflection),
// the metrics endpoint and the local worker pool, and runs until SIGINT/SIGTERM. The gRPC ports
// can require bearer tokens with scopes and serve TLS / mutual TLS (auth/server_credentials.h);
// local workers then get a private worker-only token and what they need to dial the TLS port.
// Job inputs are read only under options.coordinator.input_roots (server/input_roots.h).
#ifndef QUANTD_SERVER_SERVER_H_
#define QUANTD_SERVER_SERVER_H_

#include <string>

#include "absl/status/status.h"
#include "server/coordinator.h"

namespace quantd::server {

struct ServerOptions {
  std::string listen = "127.0.0.1:7070";          // Default: 127.0.0.1:7070
  std::string worker_listen;                      // Default: none (workers use `listen`)
  std::string metrics_listen = "127.0.0.1:9464";  // Default: 127.0.0.1:9464; empty = off
  CoordinatorOptions coordinator;
  int local_workers = -1;   // Default: -1 = one per GPU, else one CPU worker
  std::string worker_binary;  // Default: quantd-worker next to this executable
  std::string device = "auto";
  std::string port_file;    // Default: none
  // Security of both gRPC ports (docs/reliability.md, "Authentication and TLS").
  std::string auth_token_file;  // Default: none = no token check
  std::string tls_cert;         // PEM chain; with tls_key: serve TLS. Default: none = plaintext
  std::string tls_key;          // Default: none
  std::string tls_client_ca;    // PEM CA; clients must present a cert it signed. Default: none
  // /metrics needs HTTP Basic auth whose password is a token of auth_token_file with the
  // metrics scope (docs/reliability.md, "Scopes and tenants"). Default: false = open.
  bool metrics_require_token = false;
};

// Blocks until a termination signal; returns the first startup error otherwise.
absl::Status RunServer(const ServerOptions& options);

}  // namespace quantd::server

#endif  // QUANTD_SERVER_SERVER_H_
