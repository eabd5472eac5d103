#include "client/cli_args.h"

#include "gtest/gtest.h"

namespace quantd::client {
namespace {

const std::vector<FlagSpec> kSpecs = {{"--calib", true}, {"--wait", false}, {"-o", true}};

TEST(ParseArgs, ValuesBooleansAndPositionals) {
  auto a = ParseArgs({"model", "--calib", "c.u16", "--wait", "-o", "out", "extra"}, kSpecs);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->positional, (std::vector<std::string>{"model", "extra"}));
  EXPECT_EQ(a->Get("--calib"), "c.u16");
  EXPECT_TRUE(a->Has("--wait"));
  EXPECT_EQ(a->Get("--wait"), "");
  EXPECT_EQ(a->Get("-o"), "out");
  EXPECT_EQ(a->Get("--missing", "dflt"), "dflt");
}

TEST(ParseArgs, EqualsFormAndDoubleDash) {
  auto a = ParseArgs({"--calib=x=y", "--", "--wait", "-"}, kSpecs);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->Get("--calib"), "x=y");
  EXPECT_FALSE(a->Has("--wait"));
  EXPECT_EQ(a->positional, (std::vector<std::string>{"--wait", "-"}));
  auto empty = ParseArgs({"--calib="}, kSpecs);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->Has("--calib"));
  EXPECT_EQ(empty->Get("--calib", "x"), "");
}

TEST(ParseArgs, Errors) {
  EXPECT_FALSE(ParseArgs({"--nope"}, kSpecs).ok());
  EXPECT_FALSE(ParseArgs({"--calib"}, kSpecs).ok());             // missing value
  EXPECT_FALSE(ParseArgs({"--wait=1"}, kSpecs).ok());            // boolean with value
  EXPECT_FALSE(ParseArgs({"--wait", "--wait"}, kSpecs).ok());    // twice
  EXPECT_FALSE(ParseArgs({"-o", "a", "-o", "b"}, kSpecs).ok());  // twice
  EXPECT_FALSE(ParseArgs({"-x"}, kSpecs).ok());
  EXPECT_NE(ParseArgs({"--nope"}, kSpecs).status().message().find("--nope"), std::string::npos);
}

TEST(ParseNumbers, IntRangeAndJunk) {
  EXPECT_EQ(*ParseInt("--bits", "4", 1, 64), 4);
  EXPECT_FALSE(ParseInt("--bits", "4x", 1, 64).ok());
  EXPECT_FALSE(ParseInt("--bits", "", 1, 64).ok());
  EXPECT_FALSE(ParseInt("--bits", " 4", 1, 64).ok());
  EXPECT_FALSE(ParseInt("--bits", "0", 1, 64).ok());
  EXPECT_FALSE(ParseInt("--bits", "99999999999999999999", 1, 64).ok());
  EXPECT_EQ(*ParseUint64("--seed", "18446744073709551615"), 18446744073709551615ull);
  EXPECT_FALSE(ParseUint64("--seed", "-1").ok());
  EXPECT_DOUBLE_EQ(*ParseDouble("--r", "1.25"), 1.25);
  EXPECT_FALSE(ParseDouble("--r", "nan").ok());
  EXPECT_FALSE(ParseDouble("--r", "1.2.3").ok());
}

TEST(ParseModelRef, NameAndVersion) {
  auto a = ParseModelRef("stories-qs2");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->name, "stories-qs2");
  EXPECT_EQ(a->version, 0);
  auto b = ParseModelRef("m@3");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->name, "m");
  EXPECT_EQ(b->version, 3);
  EXPECT_FALSE(ParseModelRef("m@0").ok());
  EXPECT_FALSE(ParseModelRef("m@").ok());
  EXPECT_FALSE(ParseModelRef("m@x").ok());
  EXPECT_FALSE(ParseModelRef("@3").ok());
  EXPECT_FALSE(ParseModelRef("").ok());
}

}  // namespace
}  // namespace quantd::client
