#include "auth/pem.h"

#include <memory>

#include "absl/strings/str_cat.h"
#include "auth/openssl_ptr.h"
#include "common/file_util.h"
#include "openssl/bio.h"
#include "openssl/err.h"
#include "openssl/evp.h"
#include "openssl/pem.h"
#include "openssl/x509.h"

namespace quantd::auth {
namespace {

absl::StatusOr<std::string> ReadText(const std::string& path, absl::string_view what) {
  absl::StatusOr<std::string> text = ReadFile(path, 1 << 20);
  if (!text.ok()) {
    return absl::NotFoundError(
        absl::StrCat(std::string(what), " ", path, ": ", text.status().message()));
  }
  return text;
}

}  // namespace

absl::StatusOr<std::string> ReadCertificates(const std::string& path, absl::string_view what) {
  absl::StatusOr<std::string> text = ReadText(path, what);
  if (!text.ok()) return text.status();
  auto bio = MemBio(*text);
  std::unique_ptr<X509, X509Free> cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(what), " ", path, ": no PEM certificate in the file"));
  }
  return text;
}

absl::StatusOr<std::string> ReadPrivateKey(const std::string& path, absl::string_view what,
                                           const std::string& cert_pem,
                                           const std::string& cert_path) {
  absl::StatusOr<std::string> text = ReadText(path, what);
  if (!text.ok()) return text.status();
  auto key_bio = MemBio(*text);
  std::unique_ptr<EVP_PKEY, PkeyFree> key(
      PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
  if (!key) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(
        std::string(what), " ", path, ": no unencrypted PEM private key in the file"));
  }
  auto cert_bio = MemBio(cert_pem);
  std::unique_ptr<X509, X509Free> cert(
      PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr));
  if (!cert || X509_check_private_key(cert.get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(std::string(what), " ", path,
                                                   " does not match the certificate in ",
                                                   cert_path));
  }
  return text;
}

}  // namespace quantd::auth
