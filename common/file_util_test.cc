#include "common/file_util.h"

#include <cstdlib>
#include <string>

#include "gtest/gtest.h"

namespace quantd {
namespace {

std::string TempDir() {
  char tmpl[] = "/tmp/quantd_fileutil_XXXXXX";
  return std::string(::mkdtemp(tmpl));
}

TEST(FileUtil, AtomicWriteThenRead) {
  std::string dir = TempDir();
  std::string path = JoinPath(dir, "a.bin");
  std::string data("hello\0world", 11);
  ASSERT_TRUE(WriteFileAtomic(path, data).ok());
  auto got = ReadFile(path);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, data);
  ASSERT_TRUE(WriteFileAtomic(path, "second").ok());
  EXPECT_EQ(*ReadFile(path), "second");
  ASSERT_TRUE(RemoveAll(dir).ok());
}

TEST(FileUtil, MissingFileIsNotFound) {
  auto got = ReadFile("/nonexistent/quantd/file");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
}

TEST(FileUtil, SizeLimitIsInvalidArgument) {
  std::string dir = TempDir();
  std::string path = JoinPath(dir, "big");
  ASSERT_TRUE(WriteFileAtomic(path, std::string(100, 'x')).ok());
  EXPECT_EQ(ReadFile(path, 10).status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(RemoveAll(dir).ok());
}

TEST(FileUtil, Sha256KnownVectors) {
  // FIPS 180-2 test vectors.
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  std::string dir = TempDir();
  std::string path = JoinPath(dir, "abc");
  ASSERT_TRUE(WriteFileAtomic(path, "abc").ok());
  EXPECT_EQ(*Sha256File(path), Sha256Hex("abc"));
  ASSERT_TRUE(RemoveAll(dir).ok());
}

}  // namespace
}  // namespace quantd
