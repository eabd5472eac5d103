#include "auth/token_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

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
  TokenSet set({{"eeeeeeeeeeeeeeee", "one"}, {"ffffffffffffffff", "two"}});
  set.Add("gggggggggggggggg", "local workers");
  EXPECT_EQ(set.size(), 3u);
  EXPECT_EQ(set.Match("eeeeeeeeeeeeeeee"), "one");
  EXPECT_EQ(set.Match("ffffffffffffffff"), "two");
  EXPECT_EQ(set.Match("gggggggggggggggg"), "local workers");
  EXPECT_EQ(set.Match("eeeeeeeeeeeeeee"), std::nullopt);    // prefix
  EXPECT_EQ(set.Match("eeeeeeeeeeeeeeeee"), std::nullopt);  // longer
  EXPECT_EQ(set.Match(""), std::nullopt);
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
