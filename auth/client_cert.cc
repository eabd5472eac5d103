#include "auth/client_cert.h"

#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "auth/openssl_ptr.h"
#include "openssl/pem.h"
#include "openssl/x509.h"

namespace quantd::auth {
namespace {

// The UTF-8 text of subject entry `i`; "" when it cannot be converted.
std::string EntryText(X509_NAME* name, int i) {
  unsigned char* utf8 = nullptr;
  const int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i)));
  if (n < 0) return "";
  std::string out(reinterpret_cast<const char*>(utf8), static_cast<size_t>(n));
  OPENSSL_free(utf8);
  return out;
}

}  // namespace

absl::StatusOr<Identity> IdentityFromCertificate(absl::string_view pem) {
  std::unique_ptr<BIO, BioFree> bio = MemBio(pem);
  std::unique_ptr<X509, X509Free> cert(
      bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr);
  if (!cert) return absl::InvalidArgumentError("the client certificate is not readable PEM");
  X509_NAME* subject = X509_get_subject_name(cert.get());
  Identity id;
  id.scopes = 0;
  bool any_scope = false, tenant_given = false;
  for (int i = -1; (i = X509_NAME_get_index_by_NID(subject, NID_commonName, i)) >= 0;) {
    id.name = EntryText(subject, i);
  }
  for (int i = -1; (i = X509_NAME_get_index_by_NID(subject, NID_organizationalUnitName, i)) >= 0;) {
    absl::string_view ou;
    const std::string text = EntryText(subject, i);
    ou = text;
    if (absl::ConsumePrefix(&ou, "quantd-tenant:")) {
      if (tenant_given) return absl::InvalidArgumentError("the client certificate has two quantd-tenant: OUs");
      id.tenant = std::string(ou);
      tenant_given = true;
    } else if (absl::ConsumePrefix(&ou, "quantd:")) {
      absl::StatusOr<uint32_t> s = ParseScopes(ou);
      if (!s.ok() || (id.scopes & *s)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "client certificate OU \"", text, "\": ",
            s.ok() ? "repeated scope" : std::string(s.status().message())));
      }
      id.scopes |= *s;
      any_scope = true;
    }
  }
  if (!any_scope) id.scopes = kDefaultScopes;
  if (id.name.empty()) id.name = "certificate without CN";
  if (tenant_given) {
    absl::Status t = ValidateTenant(id.tenant, id.scopes);
    if (!t.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("client certificate OU quantd-tenant:", t.message()));
    }
  }
  return id;
}

}  // namespace quantd::auth
