// quantctl's connection security: the bearer token and TLS files of an Invocation, filled in
// from the environment where the command line left them out ($QUANTD_TOKEN, $QUANTD_TLS_CA,
// $QUANTD_TLS_CERT, $QUANTD_TLS_KEY). Flags win over the environment, field by field.
// Thread-safety: pure function (the environment is read through `getenv`).
#ifndef QUANTD_CLIENT_CONNECTION_SECURITY_H_
#define QUANTD_CLIENT_CONNECTION_SECURITY_H_

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "auth/channel.h"
#include "client/command_line.h"

namespace quantd::client {

// Returns nullptr or the value of an environment variable.
using EnvLookup = std::function<const char*(const char*)>;

// Reads the token from inv.token_file when given (auth::ReadClientToken: NOT_FOUND,
// PERMISSION_DENIED for a world-readable file, INVALID_ARGUMENT for a bad file), else takes
// $QUANTD_TOKEN (INVALID_ARGUMENT if it has spaces or non-ASCII characters). INVALID_ARGUMENT
// if only one of the client certificate and key is set.
absl::StatusOr<auth::ChannelSecurity> ResolveChannelSecurity(const Invocation& inv,
                                                             const EnvLookup& getenv);

}  // namespace quantd::client

#endif  // QUANTD_CLIENT_CONNECTION_SECURITY_H_
