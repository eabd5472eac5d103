// Server-side transport security for quantd's gRPC ports: TLS (optionally mutual TLS) and
// bearer-token checks on every call, done by a gRPC auth metadata processor before any
// service handler runs.
//
// With tokens required, every call needs metadata "authorization: Bearer <token>":
//   no authorization metadata (or not "Bearer ...")  -> UNAUTHENTICATED ("no token sent")
//   a token that is not in the set                   -> PERMISSION_DENIED ("token rejected")
// With mutual TLS and tokens not required, a call without a token is identified by its client
// certificate (auth/client_cert.h); a token, when sent, is checked as above and decides.
// The caller's identity (auth/scopes.h) must then hold the scope the method needs
// (RequiredScope), else PERMISSION_DENIED naming the caller, the scope and the method. An
// accepted call carries the auth-context properties kCallerProperty (the identity's name) and,
// for a tenant-limited caller, kTenantProperty.
// Methods under /grpc.health.v1.Health/ are exempt (Kubernetes probes); everything else,
// server reflection included, needs a token. The accepted token is removed from the call's
// metadata, so handlers never see it; tokens are never logged.
// Thread-safety: MakeServerCredentials may be called from any thread; the returned
// credentials are used by one grpc::ServerBuilder.
#ifndef QUANTD_AUTH_SERVER_CREDENTIALS_H_
#define QUANTD_AUTH_SERVER_CREDENTIALS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "auth/token_file.h"
#include "grpcpp/security/server_credentials.h"

namespace quantd::auth {

struct ServerSecurityOptions {
  // Accepted bearer tokens, replaceable while serving. Default: null = no token check.
  std::shared_ptr<TokenStore> tokens;
  // Whether every call must send a token. false only for mutual TLS without a token file: calls
  // without a token are then identified by their certificate. Default: true.
  bool require_token = true;
  // PEM certificate chain and private key; both or neither. Default: empty = plaintext.
  std::string tls_cert_file;
  std::string tls_key_file;
  // PEM CA bundle; when set, clients must present a certificate signed by it (mutual TLS).
  // Needs tls_cert_file. Default: empty = no client certificate asked for.
  std::string tls_client_ca_file;
};

// True for RPC paths served without a token ("/grpc.health.v1.Health/Check").
bool IsExemptMethod(absl::string_view path);

// Reads and checks the PEM files (the key must match the certificate). INVALID_ARGUMENT for
// an inconsistent combination, NOT_FOUND / INVALID_ARGUMENT naming the file otherwise.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerSecurityOptions& options);

}  // namespace quantd::auth

#endif  // QUANTD_AUTH_SERVER_CREDENTIALS_H_
