#include "server/registry.h"

#include <cstdlib>

#include "common/file_util.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace quantd::server {
namespace {

std::string Stage(Registry& reg, const std::string& job, const std::string& content) {
  std::string dir = reg.StagingDir(job);
  EXPECT_TRUE(MakeDirs(dir).ok());
  EXPECT_TRUE(WriteFileAtomic(JoinPath(dir, "model.bin"), content).ok());
  nlohmann::json m;
  m["files"] = {{{"path", "model.bin"}, {"size", content.size()}, {"sha256", Sha256Hex(content)}}};
  EXPECT_TRUE(WriteFileAtomic(JoinPath(dir, "manifest.json"), m.dump()).ok());
  return dir;
}

TEST(Registry, NamesAreValidated) {
  EXPECT_TRUE(IsValidModelName("stories260K-2bit_v1.0"));
  EXPECT_FALSE(IsValidModelName(""));
  EXPECT_FALSE(IsValidModelName("."));
  EXPECT_FALSE(IsValidModelName(".."));
  EXPECT_FALSE(IsValidModelName("a/b"));
  EXPECT_FALSE(IsValidModelName("../x"));
  EXPECT_FALSE(IsValidModelName(std::string("a\0b", 3)));
  EXPECT_FALSE(IsValidModelName(std::string(129, 'a')));
}

TEST(Registry, PublishesVersionsInOrderAndDetectsCorruption) {
  char tmpl[] = "/tmp/quantd_reg_XXXXXX";
  std::string root = ::mkdtemp(tmpl);
  Registry reg(root);
  ASSERT_TRUE(reg.Init().ok());
  auto v1 = reg.Publish("m", Stage(reg, "j1", "first"));
  ASSERT_TRUE(v1.ok()) << v1.status();
  EXPECT_EQ(*v1, 1);
  auto v2 = reg.Publish("m", Stage(reg, "j2", "second"));
  ASSERT_TRUE(v2.ok());
  EXPECT_EQ(*v2, 2);
  auto latest = reg.Get("m", 0);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(latest->version(), 2);
  EXPECT_EQ(reg.Get("m", 3).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(reg.Get("../m", 1).status().code(), absl::StatusCode::kInvalidArgument);
  auto path = reg.VerifiedFile("m", 1, "model.bin");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(reg.VerifiedFile("m", 1, "../../etc/passwd").status().code(),
            absl::StatusCode::kNotFound);
  // Change the bytes on disk (same size): DATA_LOSS.
  ASSERT_TRUE(WriteFileAtomic(*path, "FIRST").ok());
  EXPECT_EQ(reg.VerifiedFile("m", 1, "model.bin").status().code(), absl::StatusCode::kDataLoss);
  auto list = reg.List("");
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->size(), 2u);
  RemoveAll(root).IgnoreError();
}

}  // namespace
}  // namespace quantd::server
