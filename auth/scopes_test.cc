// Scopes: parsing, the method table (covering every RPC of proto/quantd.proto), tenants, and
// identities from client certificates made in-process with OpenSSL.
#include "auth/scopes.h"

#include <memory>
#include <string>
#include <vector>

#include "auth/client_cert.h"
#include "gtest/gtest.h"
#include "openssl/evp.h"
#include "openssl/pem.h"
#include "openssl/x509.h"
#include "proto/quantd.pb.h"

namespace quantd::auth {
namespace {

TEST(Scopes, ParseAndPrint) {
  EXPECT_EQ(*ParseScopes("submit,read"), kScopeSubmit | kScopeRead);
  EXPECT_EQ(*ParseScopes("worker"), kScopeWorker);
  EXPECT_EQ(ScopesToString(kDefaultScopes), "submit,read,admin");
  EXPECT_EQ(ScopesToString(0), "none");
  EXPECT_NE(ParseScopes("submit,wroker").status().message().find("\"wroker\""), std::string::npos);
  EXPECT_FALSE(ParseScopes("read,read").ok());
  EXPECT_FALSE(ParseScopes("").ok());
  EXPECT_FALSE(ParseScopes("read,").ok());
  EXPECT_FALSE(ParseScopes("read, submit").ok());
}

TEST(Scopes, EveryRpcHasAScopeAndClientScopesNeverIncludeWorker) {
  const google::protobuf::FileDescriptor* file = quantd::v1::Job::descriptor()->file();
  ASSERT_GE(file->service_count(), 3);
  for (int s = 0; s < file->service_count(); ++s) {
    const google::protobuf::ServiceDescriptor* service = file->service(s);
    for (int m = 0; m < service->method_count(); ++m) {
      const std::string path = "/" + service->full_name() + "/" + service->method(m)->name();
      std::optional<uint32_t> scope = RequiredScope(path);
      ASSERT_TRUE(scope.has_value()) << path << " has no scope in auth/scopes.cc";
      EXPECT_NE(*scope, 0u) << path;
      EXPECT_EQ(*scope == kScopeWorker, service->name() == "WorkerService") << path;
    }
  }
  EXPECT_EQ(RequiredScope("/quantd.v1.QuantService/SubmitJob"), kScopeSubmit);
  EXPECT_EQ(RequiredScope("/quantd.v1.RegistryService/FetchArtifact"), kScopeRead);
  EXPECT_EQ(RequiredScope("/quantd.v1.RegistryService/DeleteModel"), kScopeAdmin);
  EXPECT_EQ(RequiredScope("/quantd.v1.QuantService/CancelJob"), kScopeAdmin);
  EXPECT_EQ(RequiredScope("/quantd.v1.WorkerService/Register"), kScopeWorker);
  EXPECT_EQ(RequiredScope("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"), 0u);
  EXPECT_EQ(RequiredScope("/quantd.v1.QuantService/Unknown"), std::nullopt);  // fail closed
  EXPECT_EQ(kDefaultScopes & kScopeWorker, 0u);
}

TEST(Scopes, Tenants) {
  EXPECT_TRUE(ValidateTenant("team-a.", kScopeSubmit | kScopeRead).ok());
  EXPECT_FALSE(ValidateTenant(".hidden", kScopeRead).ok());
  EXPECT_FALSE(ValidateTenant("a/b", kScopeRead).ok());
  EXPECT_FALSE(ValidateTenant("", kScopeRead).ok());
  EXPECT_NE(ValidateTenant("team-a.", kScopeWorker).message().find("worker"), std::string::npos);
  EXPECT_TRUE(TenantAllows("", "anything"));
  EXPECT_TRUE(TenantAllows("team-a.", "team-a.llama"));
  EXPECT_FALSE(TenantAllows("team-a.", "team-b.llama"));
  EXPECT_FALSE(TenantAllows("team-a.", "team-a"));
}

// A self-signed certificate with subject /CN=<cn> plus one OU per entry of `ous`.
std::string Certificate(const std::string& cn, const std::vector<std::string>& ous) {
  EVP_PKEY* key = EVP_PKEY_new();
  EVP_PKEY_CTX* kctx = EVP_PKEY_CTX_new_id(EVP_PKEY_EC, nullptr);
  EVP_PKEY_keygen_init(kctx);
  EVP_PKEY_CTX_set_ec_paramgen_curve_nid(kctx, NID_X9_62_prime256v1);
  EVP_PKEY_keygen(kctx, &key);
  EVP_PKEY_CTX_free(kctx);
  X509* x = X509_new();
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_set_pubkey(x, key);
  X509_NAME* name = X509_get_subject_name(x);
  auto add = [&](const char* field, const std::string& v) {
    X509_NAME_add_entry_by_txt(name, field, MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>(v.c_str()), -1, -1, 0);
  };
  if (!cn.empty()) add("CN", cn);
  for (const std::string& ou : ous) add("OU", ou);
  X509_set_issuer_name(x, name);
  X509_sign(x, key, EVP_sha256());
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(bio, x);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string pem(data, static_cast<size_t>(n));
  BIO_free(bio);
  X509_free(x);
  EVP_PKEY_free(key);
  return pem;
}

TEST(ClientCertificate, ScopesFromQuantdOus) {
  auto id = IdentityFromCertificate(
      Certificate("ci-runner", {"build", "quantd:submit", "quantd:read", "quantd-tenant:team-a."}));
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->name, "ci-runner");
  EXPECT_EQ(id->scopes, kScopeSubmit | kScopeRead);
  EXPECT_EQ(id->tenant, "team-a.");

  auto worker = IdentityFromCertificate(Certificate("gpu-7", {"quantd:worker"}));
  ASSERT_TRUE(worker.ok()) << worker.status();
  EXPECT_EQ(worker->scopes, kScopeWorker);
}

TEST(ClientCertificate, WithoutQuantdOusGetsTheDefaultNeverWorker) {
  auto id = IdentityFromCertificate(Certificate("legacy", {"engineering"}));
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->scopes, kDefaultScopes);
  EXPECT_EQ(id->scopes & kScopeWorker, 0u);
  EXPECT_EQ(id->tenant, "");
}

TEST(ClientCertificate, RefusesUnknownScopesAndBadTenants) {
  auto typo = IdentityFromCertificate(Certificate("x", {"quantd:sumbit"}));
  EXPECT_EQ(typo.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(typo.status().message().find("quantd:sumbit"), std::string::npos) << typo.status();
  EXPECT_FALSE(IdentityFromCertificate(Certificate("x", {"quantd:worker", "quantd-tenant:a"})).ok());
  EXPECT_FALSE(IdentityFromCertificate(Certificate("x", {"quantd-tenant:a/b"})).ok());
  EXPECT_FALSE(IdentityFromCertificate("not a certificate").ok());
}

}  // namespace
}  // namespace quantd::auth
