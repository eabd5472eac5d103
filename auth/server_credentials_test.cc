// In-process server with MakeServerCredentials and clients from MakeChannel: the token checks
// and the health exemption, over plaintext loopback. TLS is covered by tests/auth_test.cc.
#include "auth/server_credentials.h"

#include <memory>
#include <string>

#include "auth/channel.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "gtest/gtest.h"

namespace quantd::auth {
namespace {

constexpr char kToken[] = "tttttttttttttttttttt";
constexpr char kReader[] = "rrrrrrrrrrrrrrrrrrrr";   // scopes=read tenant=team-a.
constexpr char kWorker[] = "wwwwwwwwwwwwwwwwwwww";   // scopes=worker

// Answers every method with "saw-token" / "no-token": whether the handler saw authorization
// metadata (the processor must consume it).
class Echo final : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    class Reactor final : public grpc::ServerGenericBidiReactor {
     public:
      explicit Reactor(grpc::GenericCallbackServerContext* ctx) {
        std::string body = ctx->client_metadata().count("authorization") ? "saw-token" : "no-token";
        for (const char* property : {kCallerProperty, kTenantProperty}) {
          for (const auto& v : ctx->auth_context()->FindPropertyValues(property)) {
            body += " " + std::string(property) + "=" + std::string(v.data(), v.size());
          }
        }
        grpc::Slice s(body);
        resp_ = grpc::ByteBuffer(&s, 1);
        StartRead(&req_);
      }
      void OnReadDone(bool ok) override {
        if (ok) {
          StartWriteAndFinish(&resp_, grpc::WriteOptions(), grpc::Status::OK);
        } else {
          Finish(grpc::Status::OK);
        }
      }
      void OnDone() override { delete this; }

     private:
      grpc::ByteBuffer req_, resp_;
    };
    return new Reactor(ctx);
  }
};

struct Reply {
  grpc::Status status;
  std::string body;
};

Reply Call(const std::shared_ptr<grpc::Channel>& ch, const std::string& method,
           const std::string& raw_authorization = "") {
  grpc::GenericStub stub(ch);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  if (!raw_authorization.empty()) ctx.AddMetadata("authorization", raw_authorization);
  grpc::Slice empty;
  grpc::ByteBuffer req(&empty, 1), resp;
  grpc::CompletionQueue cq;
  auto call = stub.PrepareUnaryCall(&ctx, method, req, &cq);
  call->StartCall();
  Reply r;
  call->Finish(&resp, &r.status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  EXPECT_TRUE(cq.Next(&tag, &ok));
  std::vector<grpc::Slice> slices;
  if (r.status.ok() && resp.Dump(&slices).ok()) {
    for (const auto& s : slices) r.body.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return r;
}

class ServerCredentialsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tokens_ = std::make_shared<TokenStore>(
        std::make_shared<TokenSet>(std::vector<TokenEntry>{
            {kToken, "tester"},
            {kReader, "reader", kScopeRead, "team-a."},
            {kWorker, "worker", kScopeWorker, ""}}));
    ServerSecurityOptions o;
    o.tokens = tokens_;
    auto creds = MakeServerCredentials(o);
    ASSERT_TRUE(creds.ok()) << creds.status();
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", *creds, &port_);
    b.RegisterCallbackGenericService(&echo_);
    server_ = b.BuildAndStart();
    ASSERT_TRUE(server_ != nullptr);
    addr_ = "127.0.0.1:" + std::to_string(port_);
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }
  std::shared_ptr<grpc::Channel> Channel(const std::string& token) {
    ChannelSecurity sec;
    sec.token = token;
    auto ch = MakeChannel(addr_, sec, grpc::ChannelArguments(), "--tls-");
    EXPECT_TRUE(ch.ok()) << ch.status();
    return *ch;
  }

  Echo echo_;
  std::shared_ptr<TokenStore> tokens_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::string addr_;
};

TEST_F(ServerCredentialsTest, MissingTokenIsUnauthenticated) {
  Reply r = Call(Channel(""), "/quantd.v1.QuantService/ListJobs");
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(r.status.error_message().find("no token sent"), std::string::npos);
  Reply basic = Call(Channel(""), "/quantd.v1.QuantService/ListJobs", "Basic dXNlcjpwYXNz");
  EXPECT_EQ(basic.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(ServerCredentialsTest, WrongTokenIsPermissionDenied) {
  Reply r = Call(Channel("wrong-token-wrong-token"), "/quantd.v1.WorkerService/Register");
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(r.status.error_message().find("token rejected"), std::string::npos);
  EXPECT_EQ(r.status.error_message().find("wrong-token"), std::string::npos);
  // A prefix of the right token is not the token.
  Reply prefix = Call(Channel(std::string(kToken).substr(0, 19)), "/quantd.v1.QuantService/GetJob");
  EXPECT_EQ(prefix.status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(ServerCredentialsTest, RightTokenReachesHandlerWithoutTheToken) {
  Reply r = Call(Channel(kToken), "/quantd.v1.RegistryService/ListModels");
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.body, "no-token quantd.caller=tester");  // consumed by the processor
  // The scheme is case-insensitive.
  Reply lower = Call(Channel(""), "/quantd.v1.QuantService/ListJobs", std::string("bearer ") + kToken);
  EXPECT_TRUE(lower.status.ok()) << lower.status.error_message();
}

// Least privilege: each method needs its scope; a client token (default scopes) cannot call
// the WorkerService; the denial names the caller, the scope and the method.
TEST_F(ServerCredentialsTest, ScopesAreCheckedBeforeTheHandler) {
  Reply reg = Call(Channel(kToken), "/quantd.v1.WorkerService/Register");
  EXPECT_EQ(reg.status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(reg.status.error_message().find(
                "token \"tester\" lacks scope \"worker\" needed by /quantd.v1.WorkerService/Register"),
            std::string::npos)
      << reg.status.error_message();
  EXPECT_EQ(reg.body, "");  // the handler never ran
  Reply lease = Call(Channel(kWorker), "/quantd.v1.WorkerService/LeaseTask");
  EXPECT_TRUE(lease.status.ok()) << lease.status.error_message();
  EXPECT_EQ(lease.body, "no-token quantd.caller=worker");
  // A worker token is not a client token.
  Reply submit_by_worker = Call(Channel(kWorker), "/quantd.v1.QuantService/SubmitJob");
  EXPECT_EQ(submit_by_worker.status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(submit_by_worker.status.error_message().find("lacks scope \"submit\""), std::string::npos);
  // read allows reads, not submit or delete; the tenant travels to the handler.
  Reply read = Call(Channel(kReader), "/quantd.v1.RegistryService/FetchArtifact");
  EXPECT_TRUE(read.status.ok()) << read.status.error_message();
  EXPECT_EQ(read.body, "no-token quantd.caller=reader quantd.tenant=team-a.");
  Reply submit = Call(Channel(kReader), "/quantd.v1.QuantService/SubmitJob");
  EXPECT_EQ(submit.status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(submit.status.error_message().find("(it has: read)"), std::string::npos)
      << submit.status.error_message();
  EXPECT_EQ(Call(Channel(kReader), "/quantd.v1.RegistryService/DeleteModel").status.error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(Call(Channel(kToken), "/quantd.v1.RegistryService/DeleteModel").status.ok());
  // A method missing from the scope table is refused (fail closed), even for a full token.
  Reply unknown = Call(Channel(kToken), "/quantd.v1.QuantService/NotARealMethod");
  EXPECT_EQ(unknown.status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(unknown.status.error_message().find("scope table"), std::string::npos);
}

TEST_F(ServerCredentialsTest, ReplacedTokenSetTakesEffectOnTheNextCall) {
  constexpr char kNew[] = "nnnnnnnnnnnnnnnnnnnnnnnn";
  ASSERT_TRUE(Call(Channel(kToken), "/quantd.v1.QuantService/ListJobs").status.ok());
  tokens_->Replace(std::make_shared<TokenSet>(std::vector<TokenEntry>{{kNew, "rotated"}}));
  EXPECT_EQ(Call(Channel(kToken), "/quantd.v1.QuantService/ListJobs").status.error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(Call(Channel(kNew), "/quantd.v1.QuantService/ListJobs").status.ok());
}

TEST_F(ServerCredentialsTest, HealthNeedsNoTokenReflectionDoes) {
  Reply health = Call(Channel(""), "/grpc.health.v1.Health/Check");
  EXPECT_TRUE(health.status.ok()) << health.status.error_message();
  Reply reflection =
      Call(Channel(""), "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo");
  EXPECT_EQ(reflection.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

TEST(ServerCredentials, RejectsInconsistentTlsOptions) {
  ServerSecurityOptions o;
  o.tls_cert_file = "/nonexistent/cert.pem";
  EXPECT_EQ(MakeServerCredentials(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.tls_key_file = "/nonexistent/key.pem";
  auto missing = MakeServerCredentials(o);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("--tls_cert /nonexistent/cert.pem"), std::string::npos)
      << missing.status();
  ServerSecurityOptions ca_only;
  ca_only.tls_client_ca_file = "/nonexistent/ca.pem";
  EXPECT_EQ(MakeServerCredentials(ca_only).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Channel, LoopbackAndPlaintextTokenWarning) {
  EXPECT_TRUE(IsLoopbackAddress("127.0.0.1:7070"));
  EXPECT_TRUE(IsLoopbackAddress("localhost:7070"));
  EXPECT_TRUE(IsLoopbackAddress("[::1]:7070"));
  EXPECT_TRUE(IsLoopbackAddress("unix:/run/quantd.sock"));
  EXPECT_FALSE(IsLoopbackAddress("10.0.0.5:7070"));
  EXPECT_FALSE(IsLoopbackAddress("quantd.internal:7070"));
  ChannelSecurity sec;
  sec.token = kToken;
  EXPECT_EQ(PlaintextTokenWarning("127.0.0.1:7070", sec), "");
  const std::string w = PlaintextTokenWarning("10.0.0.5:7070", sec);
  EXPECT_NE(w.find("plaintext"), std::string::npos);
  EXPECT_EQ(w.find(kToken), std::string::npos);
  sec.tls_ca_file = "/etc/ssl/ca.pem";
  EXPECT_EQ(PlaintextTokenWarning("10.0.0.5:7070", sec), "");
  EXPECT_EQ(PlaintextTokenWarning("10.0.0.5:7070", ChannelSecurity()), "");
}

TEST(Channel, ClientCertNeedsKey) {
  ChannelSecurity sec;
  sec.tls_cert_file = "/nonexistent/client.pem";
  auto ch = MakeChannel("127.0.0.1:1", sec, grpc::ChannelArguments(), "--tls-");
  ASSERT_FALSE(ch.ok());
  EXPECT_NE(ch.status().message().find("--tls-cert and --tls-key"), std::string::npos);
}

}  // namespace
}  // namespace quantd::auth
