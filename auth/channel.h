// Client-side transport security: opens a gRPC channel to quantd that speaks TLS (optionally
// presenting a client certificate for mutual TLS) and sends a bearer token with every call
// ("authorization: Bearer <token>", added by a client interceptor so that it works over
// plaintext too, where gRPC call credentials are refused). Used by quantctl and quantd-worker.
// Thread-safety: pure functions; the returned channel is thread-safe.
#ifndef QUANTD_AUTH_CHANNEL_H_
#define QUANTD_AUTH_CHANNEL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/channel.h"
#include "grpcpp/support/channel_arguments.h"

namespace quantd::auth {

struct ChannelSecurity {
  std::string token;  // bearer token sent with every call. Default: empty = none
  // TLS is on when any of the three files is set. Default: all empty = plaintext.
  std::string tls_ca_file;    // PEM roots that verify the server. Empty: gRPC's default roots
  std::string tls_cert_file;  // PEM client certificate chain (mutual TLS); needs tls_key_file
  std::string tls_key_file;

  bool tls() const {
    return !tls_ca_file.empty() || !tls_cert_file.empty() || !tls_key_file.empty();
  }
};

// A channel to `addr` ("HOST:PORT"). Reads and checks the PEM files; INVALID_ARGUMENT /
// NOT_FOUND naming the file (and `flag_prefix`, e.g. "--tls-" or "--tls_", in messages).
// With TLS the server certificate must name the host of `addr` (DNS or IP SAN).
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& addr,
                                                           const ChannelSecurity& security,
                                                           const grpc::ChannelArguments& args,
                                                           const std::string& flag_prefix);

// True if `addr`'s host is a loopback address, "localhost" or a unix: socket.
bool IsLoopbackAddress(const std::string& addr);

// A warning to print when a bearer token would travel in plaintext to a host that is not
// loopback; empty otherwise.
std::string PlaintextTokenWarning(const std::string& addr, const ChannelSecurity& security);

}  // namespace quantd::auth

#endif  // QUANTD_AUTH_CHANNEL_H_
