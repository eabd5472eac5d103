#include "client/connection_security.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <map>

#include "gtest/gtest.h"

namespace quantd::client {
namespace {

EnvLookup Env(std::map<std::string, std::string> vars) {
  auto shared = std::make_shared<std::map<std::string, std::string>>(std::move(vars));
  return [shared](const char* name) -> const char* {
    auto it = shared->find(name);
    return it == shared->end() ? nullptr : it->second.c_str();
  };
}

TEST(ConnectionSecurity, FlagsParseBeforeAndAfterTheCommand) {
  auto before = ParseCommandLine({"--token-file", "t", "--tls-ca=ca.pem", "jobs"}, nullptr);
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_EQ(before->token_file.front(), '/');  // made absolute
  EXPECT_NE(before->tls_ca.find("ca.pem"), std::string::npos);
  auto after = ParseCommandLine(
      {"status", "j1", "--tls-ca", "/ca", "--tls-cert", "/c", "--tls-key", "/k"}, nullptr);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->tls_cert, "/c");
  EXPECT_EQ(after->tls_key, "/k");
  EXPECT_FALSE(ParseCommandLine({"--token-file", "a", "jobs", "--token-file", "b"}, nullptr).ok());
  EXPECT_FALSE(ParseCommandLine({"jobs", "--tls-cert", "/c"}, nullptr).ok());  // no key
  EXPECT_FALSE(ParseCommandLine({"jobs", "--token-file="}, nullptr).ok());
}

TEST(ConnectionSecurity, EnvironmentFillsWhatFlagsLeaveOut) {
  Invocation inv;
  auto none = ResolveChannelSecurity(inv, Env({}));
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->token.empty());
  EXPECT_FALSE(none->tls());

  auto env = ResolveChannelSecurity(
      inv, Env({{"QUANTD_TOKEN", " abcdefghijklmnop\n"}, {"QUANTD_TLS_CA", "/env/ca.pem"}}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->token, "abcdefghijklmnop");
  EXPECT_EQ(env->tls_ca_file, "/env/ca.pem");

  inv.tls_ca = "/flag/ca.pem";
  auto flag = ResolveChannelSecurity(inv, Env({{"QUANTD_TLS_CA", "/env/ca.pem"}}));
  ASSERT_TRUE(flag.ok());
  EXPECT_EQ(flag->tls_ca_file, "/flag/ca.pem");

  EXPECT_FALSE(ResolveChannelSecurity(Invocation(), Env({{"QUANTD_TOKEN", "two words"}})).ok());
  EXPECT_FALSE(ResolveChannelSecurity(Invocation(), Env({{"QUANTD_TLS_KEY", "/k"}})).ok());
}

TEST(ConnectionSecurity, TokenFileWinsOverEnvironmentAndMustBePrivate) {
  char tmpl[] = "/tmp/quantd_cs_test_XXXXXX";
  int fd = ::mkstemp(tmpl);
  ASSERT_GE(fd, 0);
  ::close(fd);
  std::ofstream(tmpl) << "# mine\nfile-token-0123456789 me\n";
  ::chmod(tmpl, 0600);
  Invocation inv;
  inv.token_file = tmpl;
  auto sec = ResolveChannelSecurity(inv, Env({{"QUANTD_TOKEN", "env-token-0123456789"}}));
  ASSERT_TRUE(sec.ok()) << sec.status();
  EXPECT_EQ(sec->token, "file-token-0123456789");
  ::chmod(tmpl, 0604);
  auto open = ResolveChannelSecurity(inv, Env({}));
  EXPECT_EQ(open.status().code(), absl::StatusCode::kPermissionDenied);
  ::unlink(tmpl);
}

}  // namespace
}  // namespace quantd::client
