#include "client/connection_security.h"

#include "absl/strings/ascii.h"
#include "auth/token_file.h"
#include "common/status_macros.h"

namespace quantd::client {
namespace {

std::string FlagOrEnv(const std::string& flag_value, const EnvLookup& getenv, const char* var) {
  if (!flag_value.empty()) return flag_value;
  const char* v = getenv(var);
  return v == nullptr ? "" : v;
}

}  // namespace

absl::StatusOr<auth::ChannelSecurity> ResolveChannelSecurity(const Invocation& inv,
                                                             const EnvLookup& getenv) {
  auth::ChannelSecurity sec;
  if (!inv.token_file.empty()) {
    QUANTD_ASSIGN_OR_RETURN(sec.token, auth::ReadClientToken(inv.token_file));
  } else if (const char* env = getenv("QUANTD_TOKEN"); env != nullptr && env[0] != '\0') {
    sec.token = std::string(absl::StripAsciiWhitespace(env));
    for (unsigned char c : sec.token) {
      if (c <= 0x20 || c >= 0x7f) {
        return absl::InvalidArgumentError(
            "$QUANTD_TOKEN has a space or a character outside printable ASCII");
      }
    }
  }
  sec.tls_ca_file = FlagOrEnv(inv.tls_ca, getenv, "QUANTD_TLS_CA");
  sec.tls_cert_file = FlagOrEnv(inv.tls_cert, getenv, "QUANTD_TLS_CERT");
  sec.tls_key_file = FlagOrEnv(inv.tls_key, getenv, "QUANTD_TLS_KEY");
  if (sec.tls_cert_file.empty() != sec.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "a client certificate needs its key: give both --tls-cert and --tls-key "
        "($QUANTD_TLS_CERT and $QUANTD_TLS_KEY)");
  }
  return sec;
}

}  // namespace quantd::client
