#include "engine/model/rope.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/file_util.h"
#include "engine/format/checkpoint.h"
#include "engine/model/config.h"
#include "engine/model/forward.h"
#include "engine/model/test_util.h"
#include "engine/model/weights.h"
#include "engine/tokenizer/tokens.h"
#include "nlohmann/json.hpp"

namespace quantd::model {
namespace {

using json = nlohmann::json;

// The fixture written by tests/fixtures/make_rope_fixture.py with transformers 5.25: a tiny
// random LlamaForCausalLM, rope_parameters {llama3, rope_theta 500000}, and transformers' logits.
std::string FixtureDir() {
  return testing::SourcePath("engine/model/testdata/rope_llama3");
}

RopeParams Llama3() { return testing::Llama3Rope(64); }

// transformers 5.25's ROPE_INIT_FUNCTIONS[...] for head_dim 16 (printed with %.9g).
TEST(RopeTest, InverseFrequenciesMatchTransformers) {
  const std::vector<float> llama3 = {1.0f,           0.079403013f,    0.00470075384f,
                                     0.000911583134f, 0.000176776681f, 3.42810235e-05f,
                                     6.64786967e-06f, 1.28917316e-06f};
  RopeParams linear;
  linear.type = RopeType::kLinear;
  linear.theta = 500000;
  linear.factor = 4;
  const std::vector<float> lin = {0.25f,           0.0484806895f,   0.00940150768f,
                                  0.00182316627f,  0.000353553361f, 6.85620471e-05f,
                                  1.32957393e-05f, 2.57834631e-06f};
  for (const auto& [p, want] : {std::pair{Llama3(), llama3}, std::pair{linear, lin}}) {
    const std::vector<float> got = RopeInverseFrequencies(p, 16);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_NEAR(got[i], want[i], 2e-7 * want[i]) << RopeTypeName(p.type) << " i=" << i;
    }
  }
  RopeParams d;  // default, theta 10000: theta^(-2i/d)
  const std::vector<float> got = RopeInverseFrequencies(d, 8);
  for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(got[i], std::pow(10000.0, -2.0 * i / 8));
}

// dynamic, yarn and longrope against transformers 5.25's ROPE_INIT_FUNCTIONS (head_dim 16,
// rope_theta 10000, max_position_embeddings 4096; printed with %.9g), parsed from config.json.
TEST(RopeTest, DynamicYarnLongropeMatchTransformers) {
  auto parse = [](const std::string& arch, const std::string& extra, const std::string& rope) {
    auto c = ParseLlamaConfig(R"({"architectures":[")" + arch + R"("],"hidden_size":64,
        "intermediate_size":64,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":16,
        "max_position_embeddings":4096)" + extra + R"(,"rope_parameters":)" + rope + "}");
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? c->rope : RopeParams{};
  };
  struct Case {
    RopeParams p;
    int seq_len;
    std::vector<float> inv_freq;
    double attention_factor;
  };
  const Case cases[] = {
      {parse("LlamaForCausalLM", "", R"({"rope_type":"yarn","rope_theta":10000.0,"factor":4.0,"original_max_position_embeddings":1024})"),
       0,
       {1.0f, 0.316227764f, 0.0812500045f, 0.0197642371f, 0.00437500002f, 0.000790569466f,
        0.000250000012f, 7.90569466e-05f},
       1.1386294361119891},
      {parse("LlamaForCausalLM", "", R"({"rope_type":"yarn","rope_theta":10000.0,"factor":4.0,"original_max_position_embeddings":1024,"beta_fast":8,"beta_slow":2,"truncate":false,"mscale":1.0,"mscale_all_dim":0.5})"),
       0,
       {1.0f, 0.316227764f, 0.100000001f, 0.0240998566f, 0.00249999994f, 0.000790569466f,
        0.000250000012f, 7.90569466e-05f},
       1.0648216253695715},
      {parse("LlamaForCausalLM", "", R"({"rope_type":"dynamic","rope_theta":10000.0,"factor":4.0})"),
       4096,
       {1.0f, 0.316227764f, 0.100000001f, 0.0316227786f, 0.00999999978f, 0.00316227786f,
        0.00100000005f, 0.000316227786f},
       1.0},
      {parse("Phi3ForCausalLM", R"(,"original_max_position_embeddings":512,"partial_rotary_factor":0.5)",
             R"({"rope_type":"longrope","rope_theta":10000.0,"short_factor":[1.0,1.5,2.0,3.0],"long_factor":[2.0,5.0,11.0,31.0]})"),
       512,
       {1.0f, 0.0666666701f, 0.00499999989f, 0.00033333333f},
       1.1547005383792515},
      {parse("Phi3ForCausalLM", R"(,"original_max_position_embeddings":512,"partial_rotary_factor":0.5)",
             R"({"rope_type":"longrope","rope_theta":10000.0,"short_factor":[1.0,1.5,2.0,3.0],"long_factor":[2.0,5.0,11.0,31.0]})"),
       513,
       {0.5f, 0.0199999996f, 0.000909090915f, 3.22580636e-05f},
       1.1547005383792515},
  };
  for (const Case& c : cases) {
    const std::vector<float> got = RopeInverseFrequencies(c.p, 16, c.seq_len);
    ASSERT_EQ(got.size(), c.inv_freq.size()) << RopeTypeName(c.p.type);
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_NEAR(got[i], c.inv_freq[i], 3e-7 * c.inv_freq[i])
          << RopeTypeName(c.p.type) << " seq_len " << c.seq_len << " i=" << i;
    }
    EXPECT_NEAR(c.p.attention_factor, c.attention_factor, 1e-12) << RopeTypeName(c.p.type);
  }
  EXPECT_FALSE(RopeUsesLongFactors(cases[3].p, 512));
  EXPECT_TRUE(RopeUsesLongFactors(cases[4].p, 513));
}

// Reads config.json of the fixture, optionally rewritten into the pre-transformers-5 layout.
LlamaConfig FixtureConfig(bool old_layout) {
  json j = json::parse(*ReadFile(FixtureDir() + "/config.json"));
  if (old_layout) {
    json rp = j["rope_parameters"];
    j.erase("rope_parameters");
    j["rope_theta"] = rp["rope_theta"];
    rp.erase("rope_theta");
    j["rope_scaling"] = rp;
  }
  auto c = ParseLlamaConfig(j.dump());
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : LlamaConfig{};
}

double MaxAbsDiff(const MatrixF& a, const std::vector<float>& b) {
  double d = 0;
  for (Eigen::Index i = 0; i < a.size(); ++i) d = std::max<double>(d, std::abs(a.data()[i] - b[i]));
  return d;
}

// quantd's forward pass on a model saved by transformers 5 equals transformers' logits within
// 1e-4 relative (max |diff| / max |logit|), in both config layouts; with the RoPE settings
// ignored (rope_theta 10000, the bug of issue 19) it does not.
TEST(RopeTest, Transformers5FixtureLogits) {
  const std::string dir = FixtureDir();
  auto tokens = LoadTokenFile(dir + "/tokens.u16");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  auto ref_bytes = ReadFile(dir + "/ref_logits.f32");
  ASSERT_TRUE(ref_bytes.ok()) << ref_bytes.status();
  std::vector<float> ref(ref_bytes->size() / 4);
  std::memcpy(ref.data(), ref_bytes->data(), ref.size() * 4);  // little-endian hosts only
  double scale = 0;
  for (float v : ref) scale = std::max<double>(scale, std::abs(v));

  const LlamaConfig cfg = FixtureConfig(false);
  EXPECT_EQ(cfg.rope, Llama3());
  EXPECT_EQ(FixtureConfig(true).rope, cfg.rope);
  ASSERT_EQ(ref.size(), tokens->size() * static_cast<size_t>(cfg.vocab_size));
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto w = LoadLlamaWeights(**ckpt, cfg);
  ASSERT_TRUE(w.ok()) << w.status();

  auto logits = Forward(cfg, *w, *tokens);
  ASSERT_TRUE(logits.ok()) << logits.status();
  const double rel = MaxAbsDiff(*logits, ref) / scale;
  std::printf("max|quantd - transformers| / max|logit| = %.3g (max |logit| %.3g)\n", rel, scale);
  EXPECT_LE(rel, 1e-4);

  LlamaConfig ignored = cfg;
  ignored.rope = RopeParams{};
  auto wrong = Forward(ignored, *w, *tokens);
  ASSERT_TRUE(wrong.ok());
  const double rel_wrong = MaxAbsDiff(*wrong, ref) / scale;
  std::printf("with rope_theta 10000 (RoPE settings ignored): %.3g\n", rel_wrong);
  EXPECT_GT(rel_wrong, 1e-2);
}

}  // namespace
}  // namespace quantd::model
