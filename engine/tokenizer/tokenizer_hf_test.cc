#include "engine/tokenizer/tokenizer_hf.h"

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/file_util.h"
#include "nlohmann/json.hpp"
#include "engine/tokenizer/pretokenize.h"
#include "engine/model/test_util.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/tokenizer_llama2c.h"
#include "engine/tokenizer/tokens.h"

namespace quantd::model {
namespace {

using json = nlohmann::json;

std::string TestData(const std::string& rel) {
  const char* src = std::getenv("QUANTD_SOURCE_DIR");
  std::string root = src != nullptr ? src : QUANTD_TEST_SOURCE_DIR;
  return root + "/engine/tokenizer/testdata/tokenizers/" + rel;
}

json ReadJson(const std::string& path) {
  auto text = ReadFile(path);
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? json::parse(*text) : json();
}

// Reference ids come from the Python `tokenizers` library
// (tests/fixtures/make_tokenizer_fixtures.py): every id must match.
class HfFixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HfFixtureTest, MatchesTokenizersLibrary) {
  const std::string name = GetParam();
  auto tok = HfTokenizer::Load(TestData(name + ".tokenizer.json"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  const json corpus = ReadJson(TestData("corpus.json"));
  const json ref = ReadJson(TestData(name + ".ids.json"));
  ASSERT_EQ(corpus["texts"].size(), ref["cases"].size());
  EXPECT_EQ((*tok)->vocab_size(), ref["vocab_size"].get<int>());
  size_t total = 0;
  for (size_t i = 0; i < corpus["texts"].size(); ++i) {
    const std::string text = corpus["texts"][i].get<std::string>();
    const json& want = ref["cases"][i];
    auto ids = (*tok)->Encode(text, /*bos=*/false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    ASSERT_EQ(*ids, want["ids"].get<std::vector<int32_t>>()) << name << " case " << i << ": " << text;
    total += ids->size();
    if (want.contains("ids_special")) {
      auto with = (*tok)->Encode(text, /*bos=*/true);
      ASSERT_TRUE(with.ok());
      EXPECT_EQ(*with, want["ids_special"].get<std::vector<int32_t>>()) << name << " case " << i;
      auto text_back = (*tok)->Decode(*ids);
      ASSERT_TRUE(text_back.ok()) << text_back.status();
      EXPECT_EQ(*text_back, want["decoded"].get<std::string>()) << name << " case " << i;
    }
  }
  EXPECT_GT(total, 5000u);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, HfFixtureTest,
                         ::testing::Values("gpt2_bytelevel", "smollm2_digits", "llama3_split",
                                           "llama_sp_bpe", "mistral_metaspace"));

TEST(HfTokenizerTest, BosFollowsPostProcessor) {
  // Byte-level GPT-2 style without a template: no BOS even when asked.
  auto gpt2 = HfTokenizer::Load(TestData("gpt2_bytelevel.tokenizer.json"));
  ASSERT_TRUE(gpt2.ok()) << gpt2.status();
  EXPECT_EQ(*(*gpt2)->Encode("Hi", true), *(*gpt2)->Encode("Hi", false));
  // Llama style: TemplateProcessing "<s> $A" puts id 1 first, also for empty text.
  auto llama = HfTokenizer::Load(TestData("llama_sp_bpe.tokenizer.json"));
  ASSERT_TRUE(llama.ok()) << llama.status();
  EXPECT_EQ(*(*llama)->Encode("", true), std::vector<int32_t>{1});
  EXPECT_TRUE((*llama)->Encode("", false)->empty());
}

TEST(HfTokenizerTest, ByteLevelRoundTripsArbitraryBytes) {
  auto tok = HfTokenizer::Load(TestData("llama3_split.tokenizer.json"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::string text = "caf\xC3\xA9 \xF0\x9F\x98\x80 tabs\t\tdigits 12345\r\n end";
  auto ids = (*tok)->Encode(text, false);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*(*tok)->Decode(*ids), text);
  // Invalid UTF-8 is encoded byte by byte, never an error; decoding gives U+FFFD for it.
  auto bad = (*tok)->Encode("a\xFF\xC3", false);
  ASSERT_TRUE(bad.ok());
  EXPECT_EQ(*(*tok)->Decode(*bad), "a\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ((*tok)->Decode({5, 999999}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(HfTokenizerTest, SentencePieceByteFallback) {
  auto tok = HfTokenizer::Load(TestData("llama_sp_bpe.tokenizer.json"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  // U+4E2D is not in the 1000-token vocabulary: three <0xNN> tokens (ids 3 + byte).
  auto ids = (*tok)->Encode("\xE4\xB8\xAD", false);
  ASSERT_TRUE(ids.ok());
  ASSERT_GE(ids->size(), 3u);
  EXPECT_EQ(std::vector<int32_t>(ids->end() - 3, ids->end()),
            (std::vector<int32_t>{3 + 0xE4, 3 + 0xB8, 3 + 0xAD}));
  EXPECT_EQ(*(*tok)->Decode(*ids), "\xE4\xB8\xAD");
}

// A minimal tokenizer.json for error tests; `patch` is merged over it.
std::string MiniJson(const json& patch) {
  json j = {{"model",
             {{"type", "BPE"},
              {"vocab", {{"a", 0}, {"b", 1}, {"ab", 2}}},
              {"merges", json::array({"a b"})}}}};
  j.merge_patch(patch);
  return j.dump();
}

void ExpectInvalid(const std::string& text, const std::string& needle) {
  auto t = HfTokenizer::Parse(text, "tokenizer.json");
  ASSERT_FALSE(t.ok()) << "accepted: " << text;
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << t.status();
  EXPECT_NE(std::string(t.status().message()).find(needle), std::string::npos)
      << t.status() << " should mention " << needle;
}

TEST(HfTokenizerTest, RejectsMalformedAndUnsupported) {
  ASSERT_TRUE(HfTokenizer::Parse(MiniJson(json::object()), "t").ok());
  EXPECT_EQ(*(*HfTokenizer::Parse(MiniJson(json::object()), "t"))->Encode("abab", false),
            (std::vector<int32_t>{2, 2}));
  ExpectInvalid("{not json", "not valid JSON");
  ExpectInvalid("[1,2]", "top level");
  ExpectInvalid("{}", "model");
  ExpectInvalid(MiniJson({{"model", {{"type", "WordPiece"}}}}), "model.type");
  ExpectInvalid(MiniJson({{"model", {{"type", "Unigram"}}}}), "Unigram");
  ExpectInvalid(MiniJson({{"model", {{"vocab", {{"a", -1}}}}}}), "model.vocab");
  ExpectInvalid(MiniJson({{"model", {{"merges", json::array({"a c"})}}}}), "model.merges[0]");
  ExpectInvalid(MiniJson({{"model", {{"merges", json::array({"ab"})}}}}), "model.merges[0]");
  ExpectInvalid(MiniJson({{"model", {{"merges", json::array({json::array({"a", 3})})}}}}),
                "model.merges[0]");
  ExpectInvalid(MiniJson({{"model", {{"unk_token", "<unk>"}}}}), "model.unk_token");
  ExpectInvalid(MiniJson({{"model", {{"dropout", 0.1}}}}), "model.dropout");
  ExpectInvalid(MiniJson({{"model", {{"continuing_subword_prefix", "##"}}}}),
                "continuing_subword_prefix");
  ExpectInvalid(MiniJson({{"normalizer", {{"type", "NFC"}}}}), "normalizer.type");
  ExpectInvalid(MiniJson({{"normalizer",
                           {{"type", "Sequence"},
                            {"normalizers", json::array({{{"type", "Lowercase"}}})}}}}),
                "normalizer.normalizers[0].type");
  ExpectInvalid(MiniJson({{"pre_tokenizer",
                           {{"type", "Split"}, {"pattern", {{"Regex", "\\w+"}}},
                            {"behavior", "Isolated"}}}}),
                "pre_tokenizer.pattern.Regex");
  ExpectInvalid(MiniJson({{"pre_tokenizer", {{"type", "BertPreTokenizer"}}}}), "BertPreTokenizer");
  ExpectInvalid(MiniJson({{"pre_tokenizer", {{"type", "ByteLevel"}, {"use_regex", "yes"}}}}),
                "use_regex");
  ExpectInvalid(MiniJson({{"added_tokens", json::array({{{"id", 7}, {"content", ""}}})}}),
                "added_tokens[0].content");
  ExpectInvalid(MiniJson({{"added_tokens", json::array({{{"id", 1 << 30}, {"content", "x"}}})}}),
                "added_tokens[0].id");
  ExpectInvalid(MiniJson({{"post_processor",
                           {{"type", "TemplateProcessing"},
                            {"single", json::array({{{"SpecialToken", {{"id", "<s>"}}}}})},
                            {"special_tokens", json::object()}}}}),
                "post_processor");
  ExpectInvalid(MiniJson({{"post_processor", {{"type", "RobertaProcessing"}, {"cls", {"a", 99}}}}}),
                "post_processor.cls");
  ExpectInvalid(MiniJson({{"decoder", {{"type", "WordPiece"}}}}), "decoder.type");
}

TEST(HfTokenizerTest, SplitBehaviours) {
  // Matches of "-" in "a-b--c": behaviours as tokenizers' NormalizedString::split.
  const std::string s = "a-b--c";
  const auto m = FindMatches(SplitPattern::kLiteral, "-", s);
  auto pieces = [&](SplitBehavior b, bool invert) {
    std::vector<std::string> out;
    for (auto [x, y] : SplitAt(s, m, b, invert)) out.push_back(s.substr(x, y - x));
    return out;
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(pieces(SplitBehavior::kIsolated, false), (V{"a", "-", "b", "-", "-", "c"}));
  EXPECT_EQ(pieces(SplitBehavior::kRemoved, false), (V{"a", "b", "c"}));
  EXPECT_EQ(pieces(SplitBehavior::kMergedWithPrevious, false), (V{"a-", "b-", "-", "c"}));
  EXPECT_EQ(pieces(SplitBehavior::kMergedWithNext, false), (V{"a", "-b", "-", "-c"}));
  EXPECT_EQ(pieces(SplitBehavior::kContiguous, false), (V{"a", "-", "b", "--", "c"}));
  EXPECT_EQ(pieces(SplitBehavior::kRemoved, true), (V{"-", "-", "-"}));
  // GPT-2 regex: the space binds to the following word; a whitespace run leaves its last
  // space to the next word.
  const std::string g = "Hello   world's 42!";
  V gp;
  for (auto [x, y] : FindMatches(SplitPattern::kGpt2, "", g)) gp.push_back(g.substr(x, y - x));
  EXPECT_EQ(gp, (V{"Hello", "  ", " world", "'s", " 42", "!"}));
}

// Text data as SubmitJob and `quantctl eval` encode it: the 1000 TinyStories through tok512.bin
// must give the published pre-tokenized stream (examples/tinystories, README of shared/data).
TEST(TokenizerTest, EncodeDocumentsReproducesPreTokenizedStories) {
  auto tok = LoadTokenizerForModel(testing::ExamplePath("stories260K"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto text = ReadFile(testing::ExamplePath("tinystories/tinystories_valid_first1000.txt"));
  ASSERT_TRUE(text.ok()) << text.status();
  auto want = LoadTokenFile(testing::ExamplePath("tinystories/tinystories_valid_first1000.tok512.u16"));
  ASSERT_TRUE(want.ok()) << want.status();
  auto got = EncodeDocuments(**tok, *text);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, *want);
  // Without an <|endoftext|> marker, blank lines separate documents; each gets BOS.
  auto two = EncodeDocuments(**tok, "  One.\n\n\n Two. \n");
  ASSERT_TRUE(two.ok());
  std::vector<int32_t> want_two = *(*tok)->Encode("One.", true);
  const std::vector<int32_t> second = *(*tok)->Encode("Two.", true);
  want_two.insert(want_two.end(), second.begin(), second.end());
  EXPECT_EQ(*two, want_two);
  EXPECT_TRUE(EncodeDocuments(**tok, " \n\n ")->empty());
}

TEST(TokenizerTest, LoadForModelPrefersTokenizerJson) {
  auto llama2c = LoadTokenizerForModel(testing::ExamplePath("stories260K"));
  ASSERT_TRUE(llama2c.ok()) << llama2c.status();
  EXPECT_EQ((*llama2c)->vocab_size(), 512);
  const std::string text = "Once upon a time, there was a tiny \xE6\x97\xA5 cat.";
  auto ids = (*llama2c)->Encode(text, true);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ((*ids)[0], 1);
  EXPECT_EQ(*(*llama2c)->Decode(absl::MakeConstSpan(*ids).subspan(1)), text);

  const std::string dir = std::filesystem::temp_directory_path() /
                          ("quantd_tok_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  EXPECT_EQ(LoadTokenizerForModel(dir).status().code(), absl::StatusCode::kNotFound);
  std::filesystem::copy_file(testing::ExamplePath("stories260K/tok512.bin"), dir + "/tok512.bin");
  std::filesystem::copy_file(TestData("gpt2_bytelevel.tokenizer.json"), dir + "/tokenizer.json");
  EXPECT_EQ(FindTokenizerFile(dir), dir + "/tokenizer.json");
  auto hf = LoadTokenizerForModel(dir);
  ASSERT_TRUE(hf.ok()) << hf.status();
  EXPECT_EQ((*hf)->vocab_size(), 1000);
  EXPECT_NE(dynamic_cast<const HfTokenizer*>(hf->get()), nullptr);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace quantd::model
