#include "auth/token_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace quantd::auth {
namespace {

std::string TempFile(const std::string& text, mode_t mode) {
  char tmpl[] = "/tmp/quantd_token_test_XXXXXX";
  int fd = ::mkstemp(tmpl);
  EXPECT_GE(fd, 0);
  ::close(fd);
  std::ofstream(tmpl) << text;
  ::chmod(tmpl, mode);
  return tmpl;
}

TEST(TokenFile, ParsesTokensNamesCommentsAndBlankLines) {
  auto e = ParseTokenFile("f", "# ops tokens\n\n  aaaaaaaaaaaaaaaa   ci runner \r\nbbbbbbbbbbbbbbbb\n");
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_EQ(e->size(), 2u);
  EXPECT_EQ((*e)[0].token, "aaaaaaaaaaaaaaaa");
  EXPECT_EQ((*e)[0].name, "ci runner");
  EXPECT_EQ((*e)[1].token, "bbbbbbbbbbbbbbbb");
  EXPECT_EQ((*e)[1].name, "line 4");
  // Old-format lines (no scopes=) get the default: everything a client did before scopes
  // existed, but not worker.
  for (const TokenEntry& t : *e) {
    EXPECT_EQ(t.scopes, kDefaultScopes);
    EXPECT_FALSE(t.scopes_given);
    EXPECT_EQ(t.scopes & kScopeWorker, 0u);
    EXPECT_EQ(t.tenant, "");
  }
}

TEST(TokenFile, ParsesScopesAndTenants) {
  auto e = ParseTokenFile("f",
                          "aaaaaaaaaaaaaaaa team a ci scopes=submit,read tenant=team-a.\n"
                          "bbbbbbbbbbbbbbbb scopes=worker gpu box\n"
                          "cccccccccccccccc\tscopes=metrics\n");
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_EQ(e->size(), 3u);
  EXPECT_EQ((*e)[0].name, "team a ci");
  EXPECT_EQ((*e)[0].scopes, kScopeSubmit | kScopeRead);
  EXPECT_TRUE((*e)[0].scopes_given);
  EXPECT_EQ((*e)[0].tenant, "team-a.");
  EXPECT_EQ((*e)[1].name, "gpu box");
  EXPECT_EQ((*e)[1].scopes, kScopeWorker);
  EXPECT_EQ((*e)[2].name, "line 3");
  EXPECT_EQ((*e)[2].scopes, kScopeMetrics);
}

TEST(TokenFile, RejectsBadScopesAndTenants) {
  for (const auto& [line, expected] : std::vector<std::pair<std::string, std::string>>{
           {"aaaaaaaaaaaaaaaa ci scopes=submit,wroker", "f:1: scopes=submit,wroker: unknown scope \"wroker\""},
           {"aaaaaaaaaaaaaaaa ci scopes=", "empty scope list"},
           {"aaaaaaaaaaaaaaaa ci scopes=read scopes=submit", "scopes= given twice"},
           // A misspelt field must not leave the token with the default scopes.
           {"aaaaaaaaaaaaaaaa ci scope=read", "unknown field \"scope=read\""},
           {"aaaaaaaaaaaaaaaa ci tenant=../x", "not a model-name prefix"},
           {"aaaaaaaaaaaaaaaa ci scopes=worker tenant=a.", "worker scope"},
       }) {
    auto r = ParseTokenFile("f", line + "\n");
    ASSERT_FALSE(r.ok()) << line;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(expected), std::string::npos) << r.status();
    EXPECT_EQ(r.status().message().find("aaaaaaaaaaaaaaaa"), std::string::npos) << r.status();
  }
}

TEST(TokenFile, RejectsEmptyShortDuplicateAndNonAscii) {
  auto empty = ParseTokenFile("t.txt", "# nothing\n\n");
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.status().message().find("t.txt: no tokens"), std::string::npos);
  auto shrt = ParseTokenFile("t.txt", "short\n");
  ASSERT_FALSE(shrt.ok());
  EXPECT_NE(shrt.status().message().find("t.txt:1: token is 5 characters"), std::string::npos);
  EXPECT_EQ(shrt.status().message().find("short"), std::string::npos)  // never echoes a token
      << shrt.status().message();
  auto dup = ParseTokenFile("t.txt", "cccccccccccccccc a\ncccccccccccccccc b\n");
  ASSERT_FALSE(dup.ok());
  EXPECT_NE(dup.status().message().find("t.txt:2: duplicate token (also on a)"),
            std::string::npos);
  auto bad = ParseTokenFile("t.txt", "ccccccccccccccc\x01\n");
  EXPECT_FALSE(bad.ok());
}

TEST(TokenFile, LoadRefusesWorldReadableAndMissingFiles) {
  const std::string open_file = TempFile("dddddddddddddddd\n", 0644);
  auto r = LoadTokenFile(open_file);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(r.status().message().find("mode 0644"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("chmod 600"), std::string::npos) << r.status();

  const std::string private_file = TempFile("dddddddddddddddd worker\n", 0640);
  auto ok = LoadTokenFile(private_file);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)[0].name, "worker");
  auto token = ReadClientToken(private_file);
  ASSERT_TRUE(token.ok());
  EXPECT_EQ(*token, "dddddddddddddddd");

  EXPECT_EQ(LoadTokenFile("/nonexistent/tokens").status().code(), absl::StatusCode::kNotFound);
  ::unlink(open_file.c_str());
  ::unlink(private_file.c_str());
}

TEST(TokenSet, MatchesOnlyWholeTokens) {
  TokenEntry one{"eeeeeeeeeeeeeeee", "one"};
  TokenEntry two{"ffffffffffffffff", "two", kScopeRead, "team-b."};
  TokenSet set({one, two});
  set.Add("gggggggggggggggg", Identity{"local workers", kScopeWorker, ""});
  EXPECT_EQ(set.size(), 3u);
  auto name = [&set](const std::string& t) -> std::optional<std::string> {
    auto id = set.Match(t);
    if (!id) return std::nullopt;
    return id->name;
  };
  EXPECT_EQ(name("eeeeeeeeeeeeeeee"), "one");
  EXPECT_EQ(name("ffffffffffffffff"), "two");
  EXPECT_EQ(name("gggggggggggggggg"), "local workers");
  EXPECT_EQ(set.Match("eeeeeeeeeeeeeeee")->scopes, kDefaultScopes);
  EXPECT_EQ(set.Match("ffffffffffffffff")->scopes, kScopeRead);
  EXPECT_EQ(set.Match("ffffffffffffffff")->tenant, "team-b.");
  EXPECT_EQ(set.Match("gggggggggggggggg")->scopes, kScopeWorker);
  EXPECT_EQ(name("eeeeeeeeeeeeeee"), std::nullopt);    // prefix
  EXPECT_EQ(name("eeeeeeeeeeeeeeeee"), std::nullopt);  // longer
  EXPECT_EQ(name(""), std::nullopt);
  EXPECT_EQ(TokenSet().Match("eeeeeeeeeeeeeeee"), std::nullopt);
}

TEST(TokenFile, RandomTokensArePrivateAndDistinct) {
  auto a = RandomToken(), b = RandomToken();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->size(), 64u);
  EXPECT_NE(*a, *b);
  const std::string path = TempFile("", 0644);
  ASSERT_TRUE(WritePrivateFile(path, *a + "\n").ok());
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto read = ReadClientToken(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, *a);
  ::unlink(path.c_str());
}

}  // namespace
}  // namespace quantd::auth
