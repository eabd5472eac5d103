// The identity of a mutual-TLS client from its certificate (docs/reliability.md, "Scopes and
// tenants"): the name is the subject's CN; the scopes are the subject's organizationalUnit
// values "quantd:<scope>" (one OU per scope, e.g. /CN=ci-runner/OU=quantd:submit/OU=quantd:read);
// an OU "quantd-tenant:<prefix>" sets the tenant. A certificate without any "quantd:" OU gets
// kDefaultScopes (submit,read,admin; never worker). Other OUs are ignored.
// Thread-safety: a pure function.
#ifndef QUANTD_AUTH_CLIENT_CERT_H_
#define QUANTD_AUTH_CLIENT_CERT_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "auth/scopes.h"

namespace quantd::auth {

// Reads the first certificate of `pem` (what gRPC puts in the x509_pem_cert auth property).
// INVALID_ARGUMENT for unparsable PEM, an unknown "quantd:" scope, two tenant OUs or an invalid
// tenant (ValidateTenant), naming the OU.
absl::StatusOr<Identity> IdentityFromCertificate(absl::string_view pem);

}  // namespace quantd::auth

#endif  // QUANTD_AUTH_CLIENT_CERT_H_
