// Reading PEM files for TLS: certificates, private keys and CA bundles, with errors that name
// the file and the flag it came from, checked before gRPC sees them (gRPC would only fail
// later, at listen or handshake time, without saying which file was wrong).
// Thread-safety: pure functions.
#ifndef QUANTD_AUTH_PEM_H_
#define QUANTD_AUTH_PEM_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace quantd::auth {

// The file's text if it holds at least one certificate. `what` names it in errors
// ("--tls_cert"). NOT_FOUND if unreadable, INVALID_ARGUMENT if it has no PEM certificate.
absl::StatusOr<std::string> ReadCertificates(const std::string& path, absl::string_view what);

// The file's text if it holds a PEM private key that matches the first certificate of
// `cert_pem`. INVALID_ARGUMENT naming both files otherwise.
absl::StatusOr<std::string> ReadPrivateKey(const std::string& path, absl::string_view what,
                                           const std::string& cert_pem,
                                           const std::string& cert_path);

}  // namespace quantd::auth

#endif  // QUANTD_AUTH_PEM_H_
