#include "engine/tokenizer/tokens.h"

#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/file_util.h"
#include "engine/model/test_util.h"

namespace quantd::model {
namespace {

using testing::ExamplePath;

std::string Tmp(const std::string& name) { return ::testing::TempDir() + "/" + name; }

template <typename T>
std::string Raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

std::string Npy(const std::string& descr, const std::string& shape, const std::string& data) {
  std::string h = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  while ((10 + h.size() + 1) % 64 != 0) h += ' ';
  h += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(h.size() & 0xff);
  out += static_cast<char>(h.size() >> 8);
  return out + h + data;
}

TEST(TokensTest, LoadsExampleStreams) {
  auto all = LoadTokenFile(ExamplePath("tinystories/tinystories_valid_first1000.tok512.u16"));
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->size(), 390336u);
  EXPECT_EQ((*all)[0], 1);
  EXPECT_TRUE(ValidateTokens(*all, 512).ok());
  auto calib = LoadTokenFile(ExamplePath("tinystories/calib_stories_0_499.u16"));
  auto eval = LoadTokenFile(ExamplePath("tinystories/eval_stories_500_999.u16"));
  ASSERT_TRUE(calib.ok() && eval.ok());
  EXPECT_EQ(calib->size() + eval->size(), all->size());
}

TEST(TokensTest, LoadsU32AndNpy) {
  const std::vector<uint32_t> v = {1, 2, 70000};
  ASSERT_TRUE(WriteFileAtomic(Tmp("a.u32"), Raw(v)).ok());
  EXPECT_EQ(*LoadTokenFile(Tmp("a.u32")), (std::vector<int32_t>{1, 2, 70000}));
  ASSERT_TRUE(WriteFileAtomic(Tmp("a.npy"), Npy("<i8", "(3,)", Raw(std::vector<int64_t>{5, 6, 7}))).ok());
  EXPECT_EQ(*LoadTokenFile(Tmp("a.npy")), (std::vector<int32_t>{5, 6, 7}));
  ASSERT_TRUE(WriteFileAtomic(Tmp("b.npy"), Npy("<u2", "(2,)", Raw(std::vector<uint16_t>{9, 8}))).ok());
  EXPECT_EQ(*LoadTokenFile(Tmp("b.npy")), (std::vector<int32_t>{9, 8}));
}

TEST(TokensTest, RejectsNonTokenFiles) {
  auto txt = LoadTokenFile(ExamplePath("tinystories/tinystories_valid_first1000.txt"));
  EXPECT_EQ(txt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(txt.status().message().find(".txt"), absl::string_view::npos) << txt.status();
  EXPECT_EQ(LoadTokenFile(ExamplePath("stories260K/model.safetensors")).status().code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(WriteFileAtomic(Tmp("odd.u16"), "abc").ok());
  auto odd = LoadTokenFile(Tmp("odd.u16"));
  EXPECT_EQ(odd.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(odd.status().message().find("3 bytes"), absl::string_view::npos) << odd.status();
  ASSERT_TRUE(WriteFileAtomic(Tmp("empty.u16"), "").ok());
  EXPECT_EQ(LoadTokenFile(Tmp("empty.u16")).status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(WriteFileAtomic(Tmp("neg.npy"), Npy("<i4", "(1,)", Raw(std::vector<int32_t>{-4}))).ok());
  EXPECT_EQ(LoadTokenFile(Tmp("neg.npy")).status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(WriteFileAtomic(Tmp("f.npy"), Npy("<f4", "(1,)", Raw(std::vector<float>{1}))).ok());
  EXPECT_EQ(LoadTokenFile(Tmp("f.npy")).status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(WriteFileAtomic(Tmp("2d.npy"), Npy("<i4", "(1, 1)", Raw(std::vector<int32_t>{1}))).ok());
  EXPECT_EQ(LoadTokenFile(Tmp("2d.npy")).status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(WriteFileAtomic(Tmp("short.npy"), Npy("<i4", "(5,)", Raw(std::vector<int32_t>{1}))).ok());
  EXPECT_EQ(LoadTokenFile(Tmp("short.npy")).status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(WriteFileAtomic(Tmp("junk.npy"), "hello").ok());
  EXPECT_EQ(LoadTokenFile(Tmp("junk.npy")).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadTokenFile(Tmp("absent.u16")).status().code(), absl::StatusCode::kNotFound);
}

TEST(TokensTest, ValidateNamesPositionAndId) {
  auto s = ValidateTokens(std::vector<int32_t>{1, 2, 600}, 512);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("token 2 has id 600"), absl::string_view::npos) << s;
}

}  // namespace
}  // namespace quantd::model
