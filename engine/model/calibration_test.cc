#include "engine/model/calibration.h"

#include <filesystem>
#include <fstream>
#include <set>
#include <vector>

#include <gtest/gtest.h>

#include "engine/model/test_util.h"
#include "engine/tokenizer/tokenizer_hf.h"
#include "engine/tokenizer/tokenizer_llama2c.h"

namespace quantd::model {
namespace {

std::vector<int32_t> Iota(int n) {
  std::vector<int32_t> v(n);
  for (int i = 0; i < n; ++i) v[i] = i;
  return v;
}

TEST(CalibrationTest, FirstWindowsAreConsecutive) {
  const std::vector<int32_t> s = Iota(10);
  CalibWindowOptions o;
  o.seq_len = 3;
  auto w = CalibrationWindows(s, o);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(*w, std::vector<int32_t>({0, 1, 2, 3, 4, 5, 6, 7, 8}));
  o.max_seqs = 2;
  o.start_token = 99;  // [99] + 2 stream tokens per window
  w = CalibrationWindows(s, o);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(*w, std::vector<int32_t>({99, 0, 1, 99, 2, 3}));
}

TEST(CalibrationTest, RandomWindowsAreSeededContiguousSlices) {
  const std::vector<int32_t> s = Iota(1000);
  CalibWindowOptions o;
  o.seq_len = 16;
  o.max_seqs = 50;
  o.sampling = CalibSampling::kRandom;
  o.seed = 7;
  o.start_token = 5000;
  auto a = CalibrationWindows(s, o), b = CalibrationWindows(s, o);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);  // same seed, same windows
  ASSERT_EQ(a->size(), 50u * 16);
  std::set<int32_t> firsts;
  for (size_t k = 0; k < 50; ++k) {
    const int32_t* win = a->data() + k * 16;
    EXPECT_EQ(win[0], 5000);
    for (int i = 2; i < 16; ++i) EXPECT_EQ(win[i], win[i - 1] + 1) << "window " << k;
    EXPECT_GE(win[1], 0);
    EXPECT_LE(win[15], 999);
    firsts.insert(win[1]);
  }
  EXPECT_GT(firsts.size(), 40u);  // spread over the text, not the first windows
  o.seed = 8;
  auto c = CalibrationWindows(s, o);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(*a, *c);
}

TEST(CalibrationTest, RefusesBadRequestsNamingThem) {
  const std::vector<int32_t> s = Iota(10);
  CalibWindowOptions o;
  o.seq_len = 11;
  auto w = CalibrationWindows(s, o);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(w.status().message().find("10 tokens"), std::string::npos) << w.status();
  o.seq_len = 4;
  o.sampling = CalibSampling::kRandom;  // needs a count
  EXPECT_EQ(CalibrationWindows(s, o).status().code(), absl::StatusCode::kInvalidArgument);
  auto bad = ParseCalibSampling("shuffled");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("shuffled"), std::string::npos);
  EXPECT_EQ(*ParseCalibSampling("random"), CalibSampling::kRandom);
}

TEST(CalibrationTest, StartTokenFollowsTheTokenizersOwnTemplate) {
  const std::string dir = testing::ExamplePath("../engine/tokenizer/testdata/tokenizers/");
  // Llama/Mistral templates put <s> (id 1) / <|begin_of_text|> in front; GPT-2 style
  // ByteLevel and SmolLM2 (no post_processor) add nothing.
  struct Case {
    const char* file;
    bool has_start;
  } cases[] = {{"llama_sp_bpe", true},
               {"mistral_metaspace", true},
               {"llama3_split", true},
               {"gpt2_bytelevel", false},
               {"smollm2_digits", false}};
  for (const Case& c : cases) {
    auto tok = HfTokenizer::Load(dir + c.file + ".tokenizer.json");
    ASSERT_TRUE(tok.ok()) << c.file << ": " << tok.status();
    auto st = StartTokenOf(**tok);
    ASSERT_TRUE(st.ok()) << st.status();
    if (c.has_start) {
      auto with = (*tok)->Encode("x", true);
      ASSERT_TRUE(with.ok());
      EXPECT_EQ(*st, with->front()) << c.file;
      EXPECT_GE(*st, 0) << c.file;
    } else {
      EXPECT_EQ(*st, -1) << c.file;
    }
  }
  // llama2.c: BOS is id 1.
  auto l2c = Llama2cTokenizer::Load(testing::ExamplePath("stories260K/tok512.bin"));
  ASSERT_TRUE(l2c.ok()) << l2c.status();
  auto st = StartTokenOf(**l2c);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(*st, 1);
}

// ServingStartToken follows tokenizer.json, and tokenizer_config.json's add_bos_token false
// overrides it; a directory without tokenizer.json (llama2.c models) has none.
TEST(CalibrationTest, ServingStartTokenReadsTheModelDirectory) {
  const std::string dir = ::testing::TempDir() + "/serving_start";
  std::filesystem::create_directories(dir);
  const std::string src = testing::ExamplePath("../engine/tokenizer/testdata/tokenizers/");
  std::filesystem::copy_file(src + "llama_sp_bpe.tokenizer.json", dir + "/tokenizer.json",
                             std::filesystem::copy_options::overwrite_existing);
  auto st = ServingStartToken(dir);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_GE(*st, 0);
  {
    std::ofstream(dir + "/tokenizer_config.json") << R"({"add_bos_token": false})";
  }
  st = ServingStartToken(dir);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(*st, -1);
  {
    std::ofstream(dir + "/tokenizer_config.json") << R"({"add_bos_token": true})";
  }
  EXPECT_GE(*ServingStartToken(dir), 0);
  auto stories = ServingStartToken(testing::ExamplePath("stories260K"));
  ASSERT_TRUE(stories.ok());
  EXPECT_EQ(*stories, -1);
}

}  // namespace
}  // namespace quantd::model
