#include "auth/channel.h"

#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "auth/pem.h"
#include "common/status_macros.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/client_interceptor.h"

namespace quantd::auth {
namespace {

namespace gx = grpc::experimental;

class BearerInterceptor final : public gx::Interceptor {
 public:
  explicit BearerInterceptor(const std::string* header) : header_(header) {}
  void Intercept(gx::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(gx::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace("authorization", *header_);
    }
    methods->Proceed();
  }

 private:
  const std::string* header_;  // owned by the factory, which the channel keeps alive
};

class BearerInterceptorFactory final : public gx::ClientInterceptorFactoryInterface {
 public:
  explicit BearerInterceptorFactory(const std::string& token)
      : header_(absl::StrCat("Bearer ", token)) {}
  gx::Interceptor* CreateClientInterceptor(gx::ClientRpcInfo* /*info*/) override {
    return new BearerInterceptor(&header_);
  }

 private:
  const std::string header_;
};

std::string Host(const std::string& addr) {
  std::string a = addr;
  if (absl::StartsWith(a, "dns:///")) a = a.substr(7);
  if (absl::StartsWith(a, "ipv4:") || absl::StartsWith(a, "ipv6:")) a = a.substr(5);
  if (!a.empty() && a.front() == '[') {
    const size_t close = a.find(']');
    return close == std::string::npos ? a : a.substr(1, close - 1);
  }
  const size_t colon = a.rfind(':');
  return colon == std::string::npos ? a : a.substr(0, colon);
}

}  // namespace

bool IsLoopbackAddress(const std::string& addr) {
  if (absl::StartsWith(addr, "unix:") || absl::StartsWith(addr, "unix-abstract:")) return true;
  const std::string host = Host(addr);
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

std::string PlaintextTokenWarning(const std::string& addr, const ChannelSecurity& security) {
  if (security.token.empty() || security.tls() || IsLoopbackAddress(addr)) return "";
  return absl::StrCat("warning: sending a bearer token to ", addr,
                      " over plaintext; anyone on the network path can read it (use TLS)");
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& addr,
                                                           const ChannelSecurity& security,
                                                           const grpc::ChannelArguments& args,
                                                           const std::string& flag_prefix) {
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (security.tls()) {
    grpc::SslCredentialsOptions ssl;
    if (!security.tls_ca_file.empty()) {
      QUANTD_ASSIGN_OR_RETURN(ssl.pem_root_certs,
                              ReadCertificates(security.tls_ca_file, flag_prefix + "ca"));
    }
    if (security.tls_cert_file.empty() != security.tls_key_file.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(flag_prefix, "cert and ", flag_prefix,
                                                     "key must be given together"));
    }
    if (!security.tls_cert_file.empty()) {
      QUANTD_ASSIGN_OR_RETURN(ssl.pem_cert_chain,
                              ReadCertificates(security.tls_cert_file, flag_prefix + "cert"));
      QUANTD_ASSIGN_OR_RETURN(ssl.pem_private_key,
                              ReadPrivateKey(security.tls_key_file, flag_prefix + "key",
                                             ssl.pem_cert_chain, security.tls_cert_file));
    }
    creds = grpc::SslCredentials(ssl);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  if (security.token.empty()) return grpc::CreateCustomChannel(addr, creds, args);
  std::vector<std::unique_ptr<gx::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<BearerInterceptorFactory>(security.token));
  return gx::CreateCustomChannelWithInterceptors(addr, creds, args, std::move(interceptors));
}

}  // namespace quantd::auth
