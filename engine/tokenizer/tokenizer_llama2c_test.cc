#include "engine/tokenizer/tokenizer_llama2c.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/file_util.h"
#include "engine/model/test_util.h"
#include "engine/tokenizer/tokens.h"

namespace quantd::model {
namespace {

using testing::ExamplePath;

// Python's str.strip() for the ASCII whitespace the stories contain.
std::string_view Strip(std::string_view s) {
  const char* ws = " \t\n\r\v\f";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

TEST(Llama2cTokenizerTest, ReproducesPreTokenizedStories) {
  auto tok = Llama2cTokenizer::Load(ExamplePath("stories260K/tok512.bin"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 512);
  auto text = ReadFile(ExamplePath("tinystories/tinystories_valid_first1000.txt"));
  ASSERT_TRUE(text.ok()) << text.status();
  auto want = LoadTokenFile(ExamplePath("tinystories/tinystories_valid_first1000.tok512.u16"));
  ASSERT_TRUE(want.ok()) << want.status();

  // Each story is followed by "\n<|endoftext|>\n".
  const std::string sep = "<|endoftext|>";
  std::vector<int32_t> got;
  int stories = 0;
  size_t pos = 0;
  while (pos < text->size()) {
    size_t end = text->find(sep, pos);
    if (end == std::string::npos) end = text->size();
    const std::string_view story = Strip(std::string_view(*text).substr(pos, end - pos));
    pos = end + sep.size();
    if (story.empty()) continue;
    auto ids = (*tok)->Encode(story, /*bos=*/true);
    ASSERT_TRUE(ids.ok());
    got.insert(got.end(), ids->begin(), ids->end());
    ++stories;
  }
  EXPECT_EQ(stories, 1000);
  ASSERT_EQ(got.size(), want->size());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], (*want)[i]) << "token " << i;
}

TEST(Llama2cTokenizerTest, EdgeCases) {
  auto tok = Llama2cTokenizer::Load(ExamplePath("stories260K/tok512.bin"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(*(*tok)->Encode("", true), std::vector<int32_t>{1});
  EXPECT_TRUE((*tok)->Encode("", false)->empty());
  // "€" is a vocabulary piece; "日" is not and falls back to its UTF-8 bytes (+3).
  EXPECT_EQ(*(*tok)->Encode("\xe2\x82\xac", false), (std::vector<int32_t>{410, 503}));
  EXPECT_EQ(*(*tok)->Encode("\xe6\x97\xa5", false),
            (std::vector<int32_t>{410, 0xe6 + 3, 0x97 + 3, 0xa5 + 3}));
  // Invalid UTF-8 never fails.
  EXPECT_TRUE((*tok)->Encode(std::string("\x80\xff\xc3", 3), true).ok());
}

TEST(Llama2cTokenizerTest, RejectsMalformedFiles) {
  const std::string dir = ::testing::TempDir();
  auto bytes = ReadFile(ExamplePath("stories260K/tok512.bin"));
  ASSERT_TRUE(bytes.ok());
  const std::string trunc = dir + "/tok_trunc.bin";
  ASSERT_TRUE(WriteFileAtomic(trunc, bytes->substr(0, bytes->size() - 3)).ok());
  auto r = Llama2cTokenizer::Load(trunc);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_NE(r.status().message().find("tok_trunc.bin"), absl::string_view::npos);
  const std::string tiny = dir + "/tok_tiny.bin";
  ASSERT_TRUE(WriteFileAtomic(tiny, std::string("\x07\0\0\0", 4)).ok());
  EXPECT_EQ(Llama2cTokenizer::Load(tiny).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Llama2cTokenizer::Load(dir + "/absent.bin").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace quantd::model
