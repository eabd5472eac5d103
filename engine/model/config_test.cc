#include "engine/model/config.h"

#include <string>

#include <gtest/gtest.h>

#include "engine/model/test_util.h"

namespace quantd::model {
namespace {

const char kBase[] = R"({"architectures":["LlamaForCausalLM"],"hidden_size":64,
  "intermediate_size":172,"num_hidden_layers":5,"num_attention_heads":8,
  "num_key_value_heads":4,"vocab_size":512,"max_position_embeddings":512,
  "rms_norm_eps":1e-5,"tie_word_embeddings":true})";

// kBase with `key` replaced (or added) by `value` (raw JSON).
std::string With(const std::string& key, const std::string& value) {
  std::string s = kBase;
  const std::string k = "\"" + key + "\":";
  size_t p = s.find(k);
  if (p == std::string::npos) return s.substr(0, s.size() - 1) + "," + k + value + "}";
  size_t e = s.find_first_of(",}", p + k.size());
  if (s[p + k.size()] == '[') e = s.find(']', p) + 1;
  return s.substr(0, p + k.size()) + value + s.substr(e);
}

void ExpectInvalid(const std::string& json, const std::string& needle) {
  auto c = ParseLlamaConfig(json);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << json;
  EXPECT_NE(c.status().message().find(needle), absl::string_view::npos) << c.status();
}

TEST(ConfigTest, LoadsStories260K) {
  auto c = LoadLlamaConfig(testing::ExamplePath("stories260K"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_size, 64);
  EXPECT_EQ(c->intermediate_size, 172);
  EXPECT_EQ(c->num_layers, 5);
  EXPECT_EQ(c->num_heads, 8);
  EXPECT_EQ(c->num_kv_heads, 4);
  EXPECT_EQ(c->head_dim, 8);
  EXPECT_EQ(c->vocab_size, 512);
  EXPECT_EQ(c->max_position_embeddings, 512);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->bos_token_id, 1);
}

TEST(ConfigTest, DefaultsAndMistral) {
  auto c = ParseLlamaConfig(kBase);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 8);  // hidden / heads
  auto m = ParseLlamaConfig(With("architectures", R"(["MistralForCausalLM"])"));
  EXPECT_TRUE(m.ok()) << m.status();
  auto nokv = ParseLlamaConfig(With("num_key_value_heads", "null"));
  ASSERT_TRUE(nokv.ok());
  EXPECT_EQ(nokv->num_kv_heads, 8);
}

TEST(ConfigTest, RejectsOtherArchitecturesNamingSupportedOnes) {
  auto c = ParseLlamaConfig(With("architectures", R"(["GPT2LMHeadModel"])"));
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("GPT2LMHeadModel"), absl::string_view::npos);
  EXPECT_NE(c.status().message().find("LlamaForCausalLM"), absl::string_view::npos) << c.status();
  ExpectInvalid(With("sliding_window", "4096"), "sliding_window");
  ExpectInvalid(With("hidden_act", "\"gelu\""), "hidden_act");
  ExpectInvalid(With("attention_bias", "true"), "attention_bias");
  ExpectInvalid(With("rope_scaling", R"({"type":"linear"})"), "rope_scaling");
}

TEST(ConfigTest, RejectsBadDimensions) {
  ExpectInvalid("{not json", "not valid JSON");
  ExpectInvalid("[]", "not a JSON object");
  ExpectInvalid(With("hidden_size", "-64"), "hidden_size");
  ExpectInvalid(With("hidden_size", "0"), "hidden_size");
  ExpectInvalid(With("hidden_size", "99999999999"), "hidden_size");
  ExpectInvalid(With("hidden_size", "\"64\""), "must be an integer");
  ExpectInvalid(With("num_hidden_layers", "1e9"), "num_hidden_layers");
  ExpectInvalid(With("num_key_value_heads", "3"), "not a multiple");
  ExpectInvalid(With("num_key_value_heads", "16"), "not a multiple");
  ExpectInvalid(With("hidden_size", "60"), "not divisible");
  ExpectInvalid(With("head_dim", "7"), "even");
  ExpectInvalid(With("vocab_size", "100000000"), "vocab_size");
  ExpectInvalid(With("rms_norm_eps", "-1"), "rms_norm_eps");
  ExpectInvalid(With("tie_word_embeddings", "\"yes\""), "tie_word_embeddings");
  ExpectInvalid(With("bos_token_id", "600"), "bos_token_id");
  std::string no_vocab = kBase;
  no_vocab.replace(no_vocab.find("\"vocab_size\":512,"), 17, "");
  ExpectInvalid(no_vocab, "missing \"vocab_size\"");
}

TEST(ConfigTest, LoadNamesTheFile) {
  auto c = LoadLlamaConfig("/nonexistent-dir");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace quantd::model
