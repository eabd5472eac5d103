// RAII owners for the OpenSSL objects quantd::auth reads PEM with (internal to auth/).
// Thread-safety: as the owned objects (none shared).
#ifndef QUANTD_AUTH_OPENSSL_PTR_H_
#define QUANTD_AUTH_OPENSSL_PTR_H_

#include <memory>

#include "absl/strings/string_view.h"
#include "openssl/bio.h"
#include "openssl/evp.h"
#include "openssl/x509.h"

namespace quantd::auth {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};

// A read-only memory BIO over `s` (which must outlive it); null if OpenSSL fails.
inline std::unique_ptr<BIO, BioFree> MemBio(absl::string_view s) {
  return std::unique_ptr<BIO, BioFree>(BIO_new_mem_buf(s.data(), static_cast<int>(s.size())));
}

}  // namespace quantd::auth

#endif  // QUANTD_AUTH_OPENSSL_PTR_H_
