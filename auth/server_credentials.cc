#include "auth/server_credentials.h"

#include <cstdio>
#include <functional>
#include <set>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "auth/client_cert.h"
#include "auth/pem.h"
#include "auth/scopes.h"
#include "common/mutex.h"
#include "common/status_macros.h"
#include "grpc/grpc.h"
#include "grpc/grpc_security.h"

namespace quantd::auth {
namespace {

constexpr absl::string_view kExemptPrefix = "/grpc.health.v1.Health/";

absl::string_view View(const grpc_slice& s) {
  return absl::string_view(reinterpret_cast<const char*>(GRPC_SLICE_START_PTR(s)),
                           GRPC_SLICE_LENGTH(s));
}

// State of the core auth metadata processor; owned by the core credentials (see Destroy).
struct Processor {
  Mutex mu;
  // Set once at construction; read under mu so that ThreadSanitizer sees the hand-off from the
  // constructing thread to gRPC's (which happens inside uninstrumented libgrpc).
  std::shared_ptr<const TokenStore> tokens ABSL_GUARDED_BY(mu);  // null: no tokens
  bool require_token ABSL_GUARDED_BY(mu) = true;
  std::set<std::string> seen ABSL_GUARDED_BY(mu);  // caller names already logged
};

void Done(grpc_process_auth_metadata_done_cb cb, void* user_data, grpc_status_code code,
          const std::string& message, const grpc_metadata* consumed = nullptr,
          size_t num_consumed = 0) {
  cb(user_data, consumed, num_consumed, nullptr, 0, code, message.c_str());
}

// The PEM of the client certificate of the call's connection, or "".
std::string PeerCertificate(const grpc_auth_context* context) {
  if (context == nullptr) return "";
  grpc_auth_property_iterator it =
      grpc_auth_context_find_properties_by_name(context, GRPC_X509_PEM_CERT_PROPERTY_NAME);
  const grpc_auth_property* p = grpc_auth_property_iterator_next(&it);
  return p == nullptr ? "" : std::string(p->value, p->value_length);
}

// Called by gRPC's server auth filter for every incoming call, before the handler.
void Process(void* state, grpc_auth_context* context, const grpc_metadata* md, size_t n,
             grpc_process_auth_metadata_done_cb cb, void* user_data) {
  auto* p = static_cast<Processor*>(state);
  absl::string_view path;
  const grpc_metadata* auth = nullptr;
  for (size_t i = 0; i < n; ++i) {
    const absl::string_view key = View(md[i].key);
    if (key == ":path") path = View(md[i].value);
    if (key == "authorization") auth = &md[i];
  }
  if (IsExemptMethod(path)) {
    Done(cb, user_data, GRPC_STATUS_OK, "");
    return;
  }
  const std::string method(path);
  std::shared_ptr<const TokenSet> tokens;
  bool require_token = true;
  {
    MutexLock l(&p->mu);
    if (p->tokens) tokens = p->tokens->Get();
    require_token = p->require_token;
  }
  Identity id;
  const char* kind = "token";
  if (auth == nullptr) {
    const std::string pem = require_token ? "" : PeerCertificate(context);
    if (pem.empty()) {
      std::fprintf(stderr, "quantd: auth: %s refused: no token sent\n", method.c_str());
      Done(cb, user_data, GRPC_STATUS_UNAUTHENTICATED,
           absl::StrCat("no token sent: ", method,
                        " needs metadata 'authorization: Bearer <token>' (quantctl: --token-file "
                        "or $QUANTD_TOKEN; quantd-worker: --auth_token_file)"));
      return;
    }
    absl::StatusOr<Identity> cert = IdentityFromCertificate(pem);
    if (!cert.ok()) {
      std::fprintf(stderr, "quantd: auth: %s refused: %s\n", method.c_str(),
                   std::string(cert.status().message()).c_str());
      Done(cb, user_data, GRPC_STATUS_PERMISSION_DENIED, std::string(cert.status().message()));
      return;
    }
    id = *std::move(cert);
    kind = "certificate";
  } else {
    const absl::string_view value = View(auth->value);
    if (value.size() < 7 || !absl::EqualsIgnoreCase(value.substr(0, 7), "Bearer ")) {
      std::fprintf(stderr, "quantd: auth: %s refused: authorization is not a bearer token\n",
                   method.c_str());
      Done(cb, user_data, GRPC_STATUS_UNAUTHENTICATED,
           "no token sent: the authorization metadata is not 'Bearer <token>'");
      return;
    }
    const std::string token(absl::StripAsciiWhitespace(value.substr(7)));
    std::optional<Identity> match = tokens ? tokens->Match(token) : std::nullopt;
    if (!match) {
      std::fprintf(stderr, "quantd: auth: %s refused: token not accepted\n", method.c_str());
      Done(cb, user_data, GRPC_STATUS_PERMISSION_DENIED,
           "token rejected: it is not in quantd's --auth_token_file");
      return;
    }
    id = *std::move(match);
  }
  const std::optional<uint32_t> needed = RequiredScope(path);
  if (!needed) {
    std::fprintf(stderr, "quantd: auth: %s refused: not in the scope table\n", method.c_str());
    Done(cb, user_data, GRPC_STATUS_PERMISSION_DENIED,
         absl::StrCat(method, " is not in quantd's scope table (auth/scopes.cc): no caller may use it"));
    return;
  }
  if ((id.scopes & *needed) != *needed) {
    const std::string scope = ScopesToString(*needed);
    std::fprintf(stderr, "quantd: auth: %s refused: %s \"%s\" lacks scope %s\n", method.c_str(),
                 kind, id.name.c_str(), scope.c_str());
    Done(cb, user_data, GRPC_STATUS_PERMISSION_DENIED,
         absl::StrCat(kind, " \"", id.name, "\" lacks scope \"", scope, "\" needed by ", method,
                      " (it has: ", ScopesToString(id.scopes), "); ",
                      std::string(kind) == "token"
                          ? absl::StrCat("grant it with scopes=...,", scope,
                                         " on the token's line in quantd's --auth_token_file")
                          : absl::StrCat("grant it with OU=quantd:", scope,
                                         " in the client certificate's subject")));
    return;
  }
  if (context != nullptr) {
    grpc_auth_context_add_cstring_property(context, kCallerProperty, id.name.c_str());
    if (!id.tenant.empty()) {
      grpc_auth_context_add_cstring_property(context, kTenantProperty, id.tenant.c_str());
    }
  }
  {
    MutexLock l(&p->mu);
    if (p->seen.insert(absl::StrCat(kind, ":", id.name)).second) {
      std::fprintf(stderr, "quantd: auth: first call with %s \"%s\" (%s; scopes %s%s%s)\n", kind,
                   id.name.c_str(), method.c_str(), ScopesToString(id.scopes).c_str(),
                   id.tenant.empty() ? "" : ", tenant ", id.tenant.c_str());
    }
  }
  // Consuming the authorization entry removes it from what the handler sees.
  if (auth != nullptr) {
    Done(cb, user_data, GRPC_STATUS_OK, "", auth, 1);
  } else {
    Done(cb, user_data, GRPC_STATUS_OK, "");
  }
}

void Destroy(void* state) {
  auto* p = static_cast<Processor*>(state);
  // gRPC destroys the credentials after the last Process call returned (ordered inside
  // libgrpc); taking the lock once makes that order visible to ThreadSanitizer as well.
  { MutexLock l(&p->mu); }
  delete p;
}

// grpc::ServerCredentials over core credentials, with our metadata processor when there are
// tokens. The C++ InsecureServerCredentials() cannot take a processor, the core insecure
// credentials can, so tokens work the same over plaintext and TLS.
class CoreServerCredentials final : public grpc::ServerCredentials {
 public:
  // `make` runs after the base class initialized gRPC; it may return null (see ok()).
  // With neither tokens nor client certificates to check, no processor is installed.
  CoreServerCredentials(const std::function<grpc_server_credentials*()>& make,
                        std::shared_ptr<const TokenStore> tokens, bool require_token,
                        bool client_certificates)
      : core_(make()) {
    if (core_ == nullptr || (tokens == nullptr && !client_certificates)) return;
    auto* p = new Processor;
    {
      MutexLock l(&p->mu);
      p->tokens = std::move(tokens);
      p->require_token = require_token && p->tokens != nullptr;
    }
    grpc_server_credentials_set_auth_metadata_processor(core_, {Process, Destroy, p});
  }
  ~CoreServerCredentials() override {
    if (core_ != nullptr) grpc_server_credentials_release(core_);
  }
  bool ok() const { return core_ != nullptr; }

  void SetAuthMetadataProcessor(
      const std::shared_ptr<grpc::AuthMetadataProcessor>& /*processor*/) override {
    // Ours is set at construction; nothing else in quantd calls this.
  }

 private:
  int AddPortToServer(const std::string& addr, grpc_server* server) override {
    return grpc_server_add_http2_port(server, addr.c_str(), core_);
  }

  grpc_server_credentials* core_;
};

}  // namespace

bool IsExemptMethod(absl::string_view path) { return absl::StartsWith(path, kExemptPrefix); }

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerSecurityOptions& options) {
  const bool tls = !options.tls_cert_file.empty() || !options.tls_key_file.empty();
  if (tls && (options.tls_cert_file.empty() || options.tls_key_file.empty())) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key must be given together");
  }
  if (!tls && !options.tls_client_ca_file.empty()) {
    return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key");
  }
  if (options.tokens && options.tokens->Get()->size() == 0) {
    return absl::InvalidArgumentError("the token set is empty");
  }
  if (!tls && !options.tokens) return grpc::InsecureServerCredentials();
  std::string cert, key, client_ca;
  if (tls) {
    QUANTD_ASSIGN_OR_RETURN(cert, ReadCertificates(options.tls_cert_file, "--tls_cert"));
    QUANTD_ASSIGN_OR_RETURN(
        key, ReadPrivateKey(options.tls_key_file, "--tls_key", cert, options.tls_cert_file));
    if (!options.tls_client_ca_file.empty()) {
      QUANTD_ASSIGN_OR_RETURN(client_ca,
                              ReadCertificates(options.tls_client_ca_file, "--tls_client_ca"));
    }
  }
  auto make = [&]() -> grpc_server_credentials* {
    if (!tls) return grpc_insecure_server_credentials_create();
    grpc_ssl_pem_key_cert_pair pair = {key.c_str(), cert.c_str()};
    return grpc_ssl_server_credentials_create_ex(
        client_ca.empty() ? nullptr : client_ca.c_str(), &pair, 1,
        client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                          : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY,
        nullptr);
  };
  auto creds = std::make_shared<CoreServerCredentials>(
      make, options.tokens, options.require_token, !client_ca.empty());
  if (!creds->ok()) {
    return absl::InvalidArgumentError(absl::StrCat("gRPC refused the TLS files ",
                                                   options.tls_cert_file, " / ",
                                                   options.tls_key_file));
  }
  return std::shared_ptr<grpc::ServerCredentials>(std::move(creds));
}

}  // namespace quantd::auth
