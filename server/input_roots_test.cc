// InputRoots on a real directory tree: inside/outside, symlinks in and out, "..", a root's
// name as a prefix of a sibling, missing files, no roots, --allow_any_input_path.
#include "server/input_roots.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "common/file_util.h"
#include "gtest/gtest.h"

namespace quantd::server {
namespace {
namespace fs = std::filesystem;

class InputRootsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/quantd_roots_XXXXXX";
    base_ = ::mkdtemp(tmpl);
    root_ = base_ + "/root";
    fs::create_directories(root_ + "/model");
    fs::create_directories(base_ + "/rootish");  // shares "root" as a name prefix
    fs::create_directories(base_ + "/outside");
    std::ofstream(root_ + "/calib.txt") << "inside\n";
    std::ofstream(root_ + "/model/config.json") << "{}";
    std::ofstream(base_ + "/outside/secret.txt") << "secret\n";
    std::ofstream(base_ + "/rootish/secret.txt") << "secret\n";
    fs::create_symlink(base_ + "/outside/secret.txt", root_ + "/leak.txt");
    fs::create_symlink("calib.txt", root_ + "/alias.txt");
    auto r = InputRoots::Create({root_}, false);
    ASSERT_TRUE(r.ok()) << r.status();
    roots_ = *r;
  }
  void TearDown() override { RemoveAll(base_).IgnoreError(); }

  std::string base_, root_;
  InputRoots roots_;
};

TEST_F(InputRootsTest, InsideIsResolved) {
  EXPECT_EQ(*roots_.Resolve(root_ + "/calib.txt", "calibration file"), root_ + "/calib.txt");
  // A symlink inside the root to a file inside it resolves to the target.
  EXPECT_EQ(*roots_.Resolve(root_ + "/alias.txt", "calibration file"), root_ + "/calib.txt");
  EXPECT_EQ(*roots_.ResolveModelDir(root_ + "/model/"), root_ + "/model");
}

TEST_F(InputRootsTest, OutsideIsPermissionDenied) {
  auto out = roots_.Resolve(base_ + "/outside/secret.txt", "calibration file");
  EXPECT_EQ(out.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(out.status().message().find("calibration file " + base_ + "/outside/secret.txt is "
                                        "outside every --input_root (" + root_ + ")"),
            std::string::npos)
      << out.status();
  EXPECT_EQ(roots_.Resolve("/etc/passwd", "calibration file").status().code(),
            absl::StatusCode::kPermissionDenied);
  // ".." out of the root, and a sibling whose name starts with the root's name.
  EXPECT_EQ(roots_.Resolve(root_ + "/../outside/secret.txt", "x").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(roots_.Resolve(base_ + "/rootish/secret.txt", "x").status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(InputRootsTest, SymlinkInsideARootPointingOutsideIsRefused) {
  auto leak = roots_.Resolve(root_ + "/leak.txt", "calibration file");
  EXPECT_EQ(leak.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(leak.status().message().find("resolves to " + base_ + "/outside/secret.txt"),
            std::string::npos)
      << leak.status();
  // A model directory that links one of its files outside, or is itself a link outside.
  fs::create_symlink(base_ + "/outside/secret.txt", root_ + "/model/tokenizer.json");
  auto model = roots_.ResolveModelDir(root_ + "/model");
  EXPECT_EQ(model.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(model.status().message().find("tokenizer.json resolves to"), std::string::npos)
      << model.status();
  fs::create_symlink(base_ + "/outside", root_ + "/outside-model");
  EXPECT_EQ(roots_.ResolveModelDir(root_ + "/outside-model").status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(InputRootsTest, MissingFilesAreNotFoundOnlyUnderARoot) {
  EXPECT_EQ(roots_.Resolve(root_ + "/nope.u16", "x").status().code(), absl::StatusCode::kNotFound);
  // Outside the roots a missing file is refused like an existing one: no existence oracle.
  EXPECT_EQ(roots_.Resolve(base_ + "/outside/nope.u16", "x").status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(InputRootsTest, NoRootRefusesWithHowToConfigureAllowAnyAllows) {
  auto none = InputRoots().Resolve(root_ + "/calib.txt", "calibration file");
  EXPECT_EQ(none.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(none.status().message().find("--input_root=DIR"), std::string::npos) << none.status();
  EXPECT_NE(none.status().message().find("--allow_any_input_path"), std::string::npos);
  auto any = InputRoots::Create({}, true);
  ASSERT_TRUE(any.ok());
  EXPECT_EQ(*any->Resolve(base_ + "/outside/secret.txt", "x"), base_ + "/outside/secret.txt");
}

TEST_F(InputRootsTest, CreateRefusesMissingRoots) {
  auto r = InputRoots::Create({root_, base_ + "/missing"}, false);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find(base_ + "/missing"), std::string::npos);
  EXPECT_FALSE(InputRoots::Create({root_ + "/calib.txt"}, false).ok());  // a file
}

}  // namespace
}  // namespace quantd::server
