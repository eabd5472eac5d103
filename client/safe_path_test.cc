#include "client/safe_path.h"

#include <string>

#include "gtest/gtest.h"

namespace quantd::client {
namespace {

TEST(ValidateArtifactPath, AcceptsPlainRelativePaths) {
  for (const char* p : {"model.safetensors", "config.json", "tokenizer/tok512.bin", "a..b",
                        "..hidden", "x.partial"}) {
    EXPECT_TRUE(ValidateArtifactPath(p).ok()) << p;
  }
}

TEST(ValidateArtifactPath, RejectsTraversalAndAbsolutePaths) {
  for (const char* p : {"/etc/passwd", "../x", "a/../../x", "a/..", "..", ".", "./a", "a/./b",
                        "a//b", "a/", "", "a\\..\\b", "model.safetensors.part"}) {
    absl::Status st = ValidateArtifactPath(p);
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << "\"" << p << "\": " << st;
  }
  EXPECT_FALSE(ValidateArtifactPath(std::string("a\0b", 3)).ok());
  EXPECT_FALSE(ValidateArtifactPath(std::string(5000, 'a')).ok());
  EXPECT_NE(ValidateArtifactPath("../x").message().find("../x"), std::string::npos);
}

}  // namespace
}  // namespace quantd::client
