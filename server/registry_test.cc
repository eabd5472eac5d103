#include "server/registry.h"

#include <cstdlib>
#include <filesystem>

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

TEST(Registry, DeleteRemovesOneVersionAndNeverReusesItsNumber) {
  char tmpl[] = "/tmp/quantd_reg_XXXXXX";
  std::string root = ::mkdtemp(tmpl);
  Registry reg(root);
  ASSERT_TRUE(reg.Init().ok());
  ASSERT_TRUE(reg.Publish("m", Stage(reg, "j1", "first")).ok());
  ASSERT_TRUE(reg.Publish("m", Stage(reg, "j2", "second")).ok());
  EXPECT_EQ(reg.Delete("m", 0).status().code(), absl::StatusCode::kInvalidArgument);  // no "latest"
  EXPECT_EQ(reg.Delete("../m", 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(reg.Delete("m", 3).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(reg.Delete("nothing", 1).status().code(), absl::StatusCode::kNotFound);

  auto gone = reg.Delete("m", 2);
  ASSERT_TRUE(gone.ok()) << gone.status();
  EXPECT_EQ(gone->version(), 2);
  ASSERT_EQ(gone->files_size(), 1);
  EXPECT_EQ(gone->files(0).path(), "model.bin");
  EXPECT_EQ(reg.Get("m", 2).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(reg.Get("m", 0)->version(), 1);  // latest is now 1
  EXPECT_EQ(reg.VerifiedFile("m", 2, "model.bin").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(reg.List("m")->size(), 1u);
  EXPECT_EQ(reg.Delete("m", 2).status().code(), absl::StatusCode::kNotFound);  // once only
  // The tombstone keeps the old manifest and nothing else.
  const std::string dir = root + "/m/2";
  EXPECT_FALSE(std::filesystem::exists(dir + "/model.bin"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/manifest.json"));
  auto tomb = ReadFile(dir + "/deleted.json");
  ASSERT_TRUE(tomb.ok());
  EXPECT_EQ(*tomb, gone->manifest_json());
  // The next publication gets 3, not 2 again: "m@2" never names two different models.
  auto v3 = reg.Publish("m", Stage(reg, "j3", "third"));
  ASSERT_TRUE(v3.ok()) << v3.status();
  EXPECT_EQ(*v3, 3);
  // A deletion a crash interrupted (files left beside deleted.json) is finished by Init.
  ASSERT_TRUE(WriteFileAtomic(dir + "/model.bin", "leftover").ok());
  Registry again(root);
  ASSERT_TRUE(again.Init().ok());
  EXPECT_FALSE(std::filesystem::exists(dir + "/model.bin"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/deleted.json"));
  EXPECT_TRUE(again.VerifiedFile("m", 1, "model.bin").ok());
  RemoveAll(root).IgnoreError();
}

}  // namespace
}  // namespace quantd::server
