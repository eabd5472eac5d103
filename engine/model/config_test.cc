#include "engine/model/config.h"

#include <cmath>
#include <string>

#include <gtest/gtest.h>

#include "engine/model/test_util.h"
#include "engine/model/weights.h"
#include "nlohmann/json.hpp"

namespace quantd::model {
namespace {

const char kBase[] = R"({"architectures":["LlamaForCausalLM"],"hidden_size":64,
  "intermediate_size":172,"num_hidden_layers":5,"num_attention_heads":8,
  "num_key_value_heads":4,"vocab_size":512,"max_position_embeddings":512,
  "rms_norm_eps":1e-5,"tie_word_embeddings":true})";

// kBase with `key` replaced (or added) by `value` (raw JSON).
std::string With(const std::string& base, const std::string& key, const std::string& value) {
  std::string s = base;
  const std::string k = "\"" + key + "\":";
  size_t p = s.find(k);
  if (p == std::string::npos) return s.substr(0, s.size() - 1) + "," + k + value + "}";
  size_t e = s.find_first_of(",}", p + k.size());
  if (s[p + k.size()] == '[') e = s.find(']', p) + 1;
  return s.substr(0, p + k.size()) + value + s.substr(e);
}
std::string With(const std::string& key, const std::string& value) {
  return With(kBase, key, value);
}

void ExpectInvalid(const std::string& json, const std::string& needle) {
  auto c = ParseLlamaConfig(json);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << json;
  EXPECT_NE(c.status().message().find(needle), absl::string_view::npos) << c.status();
}

TEST(ConfigTest, LoadsStories260K) {
  auto c = LoadLlamaConfig(testing::ExamplePath("stories260K"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(testing::SizesOf(*c), (testing::ConfigSizes{64, 172, 5, 8, 4, 512}));
  EXPECT_EQ(c->head_dim, 8);
  EXPECT_EQ(c->max_position_embeddings, 512);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_EQ(c->rope, RopeParams{});  // default, rope_theta 10000
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
  ExpectInvalid(With("sliding_window", "256"), "sliding_window");  // < max_position_embeddings 512
  ExpectInvalid(With("hidden_act", "\"gelu\""), "hidden_act");
  ExpectInvalid(With(With("architectures", R"(["MistralForCausalLM"])"), "attention_bias", "true"),
                "attention_bias = true is not used by MistralForCausalLM");
  ExpectInvalid(With("rope_scaling", R"({"type":"linear"})"), "rope_scaling.factor is missing");
  ExpectInvalid(With("model_type", R"("qwen2")"), "model_type");
}

// Both layouts of the RoPE settings: transformers >= 5 "rope_parameters", older top-level
// "rope_theta" + "rope_scaling".
TEST(ConfigTest, RopeBothLayouts) {
  const RopeParams llama3 = testing::Llama3Rope(8192);
  const std::string scaling =
      R"("factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192)";
  const std::string v5 = With("rope_parameters", R"({"rope_type":"llama3","rope_theta":500000.0,)" + scaling + "}");
  const std::string v4 = With(With("rope_theta", "500000.0"), "rope_scaling",
                              R"({"rope_type":"llama3",)" + scaling + "}");
  for (const std::string& j : {v5, v4}) {
    auto c = ParseLlamaConfig(j);
    ASSERT_TRUE(c.ok()) << c.status() << "\n" << j;
    EXPECT_EQ(c->rope, llama3) << j;
  }
  // The pre-4.43 name "type"; transformers 5 keeps it next to rope_type when it re-saves.
  auto linear = ParseLlamaConfig(With("rope_parameters",
                                      R"({"type":"linear","rope_type":"linear","factor":2.0,"rope_theta":1e6})"));
  ASSERT_TRUE(linear.ok()) << linear.status();
  EXPECT_EQ(linear->rope.type, RopeType::kLinear);
  EXPECT_EQ(linear->rope.factor, 2.0);
  EXPECT_EQ(linear->rope.theta, 1e6);
  // rope_theta only (v4) or rope_parameters only (v5) with the default type.
  auto theta4 = ParseLlamaConfig(With("rope_theta", "500000"));
  ASSERT_TRUE(theta4.ok());
  EXPECT_EQ(theta4->rope.type, RopeType::kDefault);
  EXPECT_EQ(theta4->rope.theta, 500000);
  auto theta5 = ParseLlamaConfig(With("rope_parameters", R"({"rope_type":"default","rope_theta":500000})"));
  ASSERT_TRUE(theta5.ok());
  EXPECT_EQ(theta5->rope, theta4->rope);
  // Without rope_theta anywhere: transformers' default_theta 10000. rope_scaling null = none.
  auto none = ParseLlamaConfig(With("rope_parameters", R"({"rope_type":"default"})"));
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->rope, RopeParams{});
  auto null_scaling = ParseLlamaConfig(With("rope_scaling", "null"));
  ASSERT_TRUE(null_scaling.ok());
  EXPECT_EQ(null_scaling->rope, RopeParams{});
  // llama3's original_max_position_embeddings defaults to max_position_embeddings.
  auto no_orig = ParseLlamaConfig(With("rope_parameters",
      R"({"rope_type":"llama3","rope_theta":5e5,"factor":8,"low_freq_factor":1,"high_freq_factor":4})"));
  ASSERT_TRUE(no_orig.ok()) << no_orig.status();
  EXPECT_EQ(no_orig->rope.original_max_position_embeddings, 512);
}

// Published configs (Llama 3.2 1B, Mistral 7B v0.3, Llama 2 7B, SmolLM2 135M) and, for the first
// two, the same configs loaded and re-saved by transformers 5.25 (AutoConfig.save_pretrained):
// every key they hold is accepted, and both layouts give the same model.
TEST(ConfigTest, PublishedConfigsInBothLayouts) {
  const char* llama32 = R"({"architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"}, "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256})";
  const char* llama32_v5 = R"({"architectures":["LlamaForCausalLM"],"attention_bias":false,"attention_dropout":0.0,"bos_token_id":128000,"dtype":"bfloat16","eos_token_id":128001,"head_dim":64,"hidden_act":"silu","hidden_size":2048,"initializer_range":0.02,"intermediate_size":8192,"max_position_embeddings":131072,"mlp_bias":false,"model_type":"llama","num_attention_heads":32,"num_hidden_layers":16,"num_key_value_heads":8,"pad_token_id":null,"pretraining_tp":1,"rms_norm_eps":1e-05,"rope_parameters":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,"original_max_position_embeddings":8192,"rope_theta":500000.0,"rope_type":"llama3"},"tie_word_embeddings":true,"transformers_version":"5.25.0","use_cache":true,"vocab_size":128256})";
  const char* mistral03 = R"({"architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.42.0.dev0", "use_cache": true, "vocab_size": 32768})";
  const char* mistral03_v5 = R"({"architectures":["MistralForCausalLM"],"attention_dropout":0.0,"bos_token_id":1,"dtype":"bfloat16","eos_token_id":2,"head_dim":128,"hidden_act":"silu","hidden_size":4096,"initializer_range":0.02,"intermediate_size":14336,"max_position_embeddings":32768,"model_type":"mistral","num_attention_heads":32,"num_hidden_layers":32,"num_key_value_heads":8,"pad_token_id":null,"rms_norm_eps":1e-05,"rope_parameters":{"rope_theta":1000000.0,"rope_type":"default"},"sliding_window":null,"tie_word_embeddings":false,"transformers_version":"5.25.0","use_cache":true,"vocab_size":32768})";
  const char* llama2 = R"({"_name_or_path": "meta-llama/Llama-2-7b-hf", "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 4096, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null, "tie_word_embeddings": false, "torch_dtype": "float16", "transformers_version": "4.31.0.dev0", "use_cache": true, "vocab_size": 32000})";
  const char* smollm2 = R"({"architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 576, "initializer_range": 0.041666666666666664, "intermediate_size": 1536, "is_llama_config": true, "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": false, "rope_scaling": null, "rope_theta": 100000, "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.42.3", "use_cache": true, "vocab_size": 49152})";
  auto same = [](const LlamaConfig& a, const LlamaConfig& b) {
    return a.hidden_size == b.hidden_size && a.intermediate_size == b.intermediate_size &&
           a.num_layers == b.num_layers && a.num_heads == b.num_heads &&
           a.num_kv_heads == b.num_kv_heads && a.head_dim == b.head_dim &&
           a.vocab_size == b.vocab_size && a.max_position_embeddings == b.max_position_embeddings &&
           a.rms_norm_eps == b.rms_norm_eps && a.rope == b.rope &&
           a.tie_word_embeddings == b.tie_word_embeddings && a.bos_token_id == b.bos_token_id;
  };
  auto l4 = ParseLlamaConfig(llama32), l5 = ParseLlamaConfig(llama32_v5);
  ASSERT_TRUE(l4.ok()) << l4.status();
  ASSERT_TRUE(l5.ok()) << l5.status();
  EXPECT_TRUE(same(*l4, *l5));
  EXPECT_EQ(l5->rope.type, RopeType::kLlama3);
  EXPECT_EQ(l5->rope.theta, 500000);
  EXPECT_EQ(l5->rope.factor, 32);
  EXPECT_EQ(l5->rope.original_max_position_embeddings, 8192);
  auto m4 = ParseLlamaConfig(mistral03), m5 = ParseLlamaConfig(mistral03_v5);
  ASSERT_TRUE(m4.ok()) << m4.status();
  ASSERT_TRUE(m5.ok()) << m5.status();
  EXPECT_TRUE(same(*m4, *m5));
  EXPECT_EQ(m5->rope.theta, 1e6);
  auto l2 = ParseLlamaConfig(llama2);
  ASSERT_TRUE(l2.ok()) << l2.status();
  EXPECT_EQ(l2->rope, RopeParams{});
  auto sm = ParseLlamaConfig(smollm2);
  ASSERT_TRUE(sm.ok()) << sm.status();
  EXPECT_EQ(sm->rope.theta, 100000);
}

TEST(ConfigTest, RopeLayoutsTogetherMustAgree) {
  // Both layouts saying the same thing (a tool writing both for old and new readers).
  std::string both = With("rope_parameters", R"({"rope_type":"default","rope_theta":500000})");
  both = both.substr(0, both.size() - 1) + R"(,"rope_theta":500000,"rope_scaling":null})";
  auto ok = ParseLlamaConfig(both);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->rope.theta, 500000);
  // A stale top-level rope_theta: transformers 5 reads 500000, transformers 4 reads 10000.
  std::string stale = With("rope_parameters", R"({"rope_type":"default","rope_theta":500000})");
  stale = stale.substr(0, stale.size() - 1) + R"(,"rope_theta":10000})";
  ExpectInvalid(stale, "RoPE keys disagree");
  ExpectInvalid(stale, "rope_theta 500000");
  ExpectInvalid(stale, "rope_theta 10000");
  // rope_scaling and rope_parameters with different types: transformers 5 takes rope_scaling.
  std::string types = With("rope_parameters", R"({"rope_type":"linear","factor":2,"rope_theta":1e4})");
  types = types.substr(0, types.size() - 1) + R"(,"rope_scaling":{"type":"linear","factor":4}})";
  ExpectInvalid(types, "RoPE keys disagree");
  ExpectInvalid(types, "rope_parameters alone");
  // rope_theta inside rope_scaling: transformers 5 reads it, transformers 4 does not.
  ExpectInvalid(With("rope_scaling", R"({"type":"linear","factor":2,"rope_theta":5e5})"),
                "transformers 4");
}

TEST(ConfigTest, RefusesRopeItDoesNotImplement) {
  ExpectInvalid(With("rope_parameters", R"({"rope_type":"proportional","rope_theta":1e4})"),
                "rope_parameters.rope_type = \"proportional\" is not supported");
  ExpectInvalid(With("rope_scaling", R"({"type":"mrope","factor":2})"),
                "rope_scaling.rope_type = \"mrope\"");
  ExpectInvalid(With("rope_parameters", R"({"rope_type":"llama4x"})"), "llama4x");
  ExpectInvalid(With("rope_parameters", R"({"rope_type":7})"), "rope_type must be a string");
  ExpectInvalid(With("rope_parameters", R"("llama3")"), "rope_parameters must be an object");
  ExpectInvalid(With("rope_parameters", R"({"rope_type":"default","partial_rotary_factor":0.5})"),
                "partial_rotary_factor");
  ExpectInvalid(With("partial_rotary_factor", "0.25"), "partial_rotary_factor");
  ExpectInvalid(With("rope_parameters", R"({"rope_type":"default","factor":8})"),
                "rope_parameters.factor = 8 is not used by rope_type \"default\"");
  ExpectInvalid(With("rope_parameters", R"({"rope_type":"llama3","factor":8,"beta_fast":32,"low_freq_factor":1,"high_freq_factor":4})"),
                "beta_fast");
  ExpectInvalid(With("rope_parameters", R"({"rope_type":"llama3","factor":8,"low_freq_factor":4,"high_freq_factor":1})"),
                "high_freq_factor");
  ExpectInvalid(With("rope_parameters", R"({"rope_type":"llama3","factor":8,"high_freq_factor":4})"),
                "low_freq_factor is missing");
  ExpectInvalid(With("rope_parameters", R"({"rope_type":"linear","factor":-1})"), "factor");
  ExpectInvalid(With("rope_parameters", R"({"rope_type":"default","rope_theta":"big"})"),
                "rope_theta must be a number");
  ExpectInvalid(With("rope_theta", "0"), "rope_theta");
  ExpectInvalid(With("rope_parameters", R"({"type":"linear","rope_type":"default"})"), "disagree");
  // Accepted with the neutral value.
  EXPECT_TRUE(ParseLlamaConfig(With("partial_rotary_factor", "1.0")).ok());
}

// Keys that would change the computation are refused by name; known-harmless ones pass.
TEST(ConfigTest, UnknownOrUnsupportedKeysAreRefusedByName) {
  ExpectInvalid(With("mlp_bias", "true"), "mlp_bias");
  ExpectInvalid(With("rope_interleaved", "true"), "rope_interleaved");
  ExpectInvalid(With("use_sliding_window", "true"), "use_sliding_window");
  ExpectInvalid(With("layer_types", R"(["full_attention","sliding_attention","full_attention","full_attention","full_attention"])"),
                "layer_types[1] = \"sliding_attention\" is not used by LlamaForCausalLM");
  ExpectInvalid(With("layer_types", R"(["full_attention","full_attention"])"),
                "layer_types must be a list of num_hidden_layers = 5");
  ExpectInvalid(With("quantization_config", R"({"quant_method":"gptq"})"), "already quantized");
  ExpectInvalid(With("per_layer_config", R"({"3":{"intermediate_size":64}})"), "per_layer_config");
  ExpectInvalid(With("auto_map", R"({"AutoModelForCausalLM":"modeling_x.XForCausalLM"})"), "auto_map");
  ExpectInvalid(With("final_logit_softcapping", "30.0"),
                "final_logit_softcapping = 30.0 is not used by LlamaForCausalLM");
  ExpectInvalid(With("use_qk_norm", "true"), "\"use_qk_norm\" = true is not known to quantd");
  ExpectInvalid(With("sliding_window", "128"), "sliding_window = 128");
  // Mistral without the key: MistralConfig's default window 4096, on every layer.
  auto mistral = ParseLlamaConfig(
      With(With("architectures", R"(["MistralForCausalLM"])"), "max_position_embeddings", "32768"));
  ASSERT_TRUE(mistral.ok()) << mistral.status();
  EXPECT_EQ(mistral->sliding_window, 4096);
  for (int l = 0; l < 5; ++l) EXPECT_EQ(mistral->LayerWindow(l), 4096);
  const std::string harmless[] = {
      R"("sliding_window":null)", R"("sliding_window":4096)", R"("attention_bias":false)",
      R"("mlp_bias":null)", R"("dtype":"bfloat16")", R"("torch_dtype":"float16")",
      R"("transformers_version":"5.25.0")", R"("pretraining_tp":1)", R"("use_cache":true)",
      R"("initializer_range":0.02)", R"("attention_dropout":0.0)", R"("pad_token_id":null)",
      R"("eos_token_id":[1,2])",
      R"("layer_types":["full_attention","full_attention","full_attention","full_attention","full_attention"])",
      R"("_name_or_path":"x")", R"("rope_interleaved":false)", R"("is_llama_config":true)",
      R"("auto_map":{"AutoTokenizer":"tok.T"})", R"("quantization_config":null)",
      R"("temperature":0.7)", R"("model_type":"llama")"};
  for (const std::string& kv : harmless) {
    std::string j = kBase;
    j = j.substr(0, j.size() - 1) + "," + kv + "}";
    auto c = ParseLlamaConfig(j);
    EXPECT_TRUE(c.ok()) << kv << ": " << c.status();
  }
}

// Published configs of each family (as on the Hub, transformers 4 layout) parse into what their
// transformers classes run.
TEST(ConfigTest, PublishedFamilyConfigs) {
  // Qwen2.5-0.5B: q/k/v biases; sliding_window is set but use_sliding_window false = full.
  const char* qwen25 = R"({"architectures":["Qwen2ForCausalLM"],"attention_dropout":0.0,"bos_token_id":151643,"eos_token_id":151643,"hidden_act":"silu","hidden_size":896,"initializer_range":0.02,"intermediate_size":4864,"max_position_embeddings":32768,"max_window_layers":24,"model_type":"qwen2","num_attention_heads":14,"num_hidden_layers":24,"num_key_value_heads":2,"rms_norm_eps":1e-06,"rope_theta":1000000.0,"sliding_window":32768,"tie_word_embeddings":true,"torch_dtype":"bfloat16","transformers_version":"4.40.1","use_cache":true,"use_sliding_window":false,"vocab_size":151936})";
  auto q2 = ParseLlamaConfig(qwen25);
  ASSERT_TRUE(q2.ok()) << q2.status();
  EXPECT_EQ(q2->family, Family::kQwen2);
  EXPECT_TRUE(q2->qkv_bias);
  EXPECT_FALSE(q2->o_bias);
  EXPECT_EQ(q2->head_dim, 64);
  EXPECT_EQ(q2->sliding_window, 0);
  EXPECT_TRUE(q2->tie_word_embeddings);
  // With use_sliding_window: layers from max_window_layers on slide (Qwen2Config.layer_types);
  // max_window_layers 24 of 24 layers leaves none.
  auto q2s = ParseLlamaConfig(With(qwen25, "use_sliding_window", "true"));
  ASSERT_TRUE(q2s.ok()) << q2s.status();
  EXPECT_EQ(q2s->LayerWindow(23), 0);
  auto q2s4 = ParseLlamaConfig(With(With(qwen25, "use_sliding_window", "true"), "max_window_layers", "20"));
  ASSERT_TRUE(q2s4.ok()) << q2s4.status();
  EXPECT_EQ(q2s4->LayerWindow(19), 0);
  EXPECT_EQ(q2s4->LayerWindow(20), 32768);
  // Qwen3-0.6B: per-head q/k norms, head_dim 128 != hidden / heads.
  const char* qwen3 = R"({"architectures":["Qwen3ForCausalLM"],"attention_bias":false,"attention_dropout":0.0,"bos_token_id":151643,"eos_token_id":151645,"head_dim":128,"hidden_act":"silu","hidden_size":1024,"initializer_range":0.02,"intermediate_size":3072,"max_position_embeddings":40960,"max_window_layers":28,"model_type":"qwen3","num_attention_heads":16,"num_hidden_layers":28,"num_key_value_heads":8,"rms_norm_eps":1e-06,"rope_scaling":null,"rope_theta":1000000,"sliding_window":null,"tie_word_embeddings":true,"torch_dtype":"bfloat16","transformers_version":"4.51.0","use_cache":true,"use_sliding_window":false,"vocab_size":151936})";
  auto q3 = ParseLlamaConfig(qwen3);
  ASSERT_TRUE(q3.ok()) << q3.status();
  EXPECT_EQ(q3->family, Family::kQwen3);
  EXPECT_TRUE(q3->qk_norm);
  EXPECT_FALSE(q3->qkv_bias);
  EXPECT_EQ(q3->head_dim, 128);
  EXPECT_EQ(q3->sliding_window, 0);
  // Gemma-2-2b: both hidden_act and hidden_activation, a hybrid cache setting, soft-caps.
  const char* gemma2 = R"({"architectures":["Gemma2ForCausalLM"],"attention_bias":false,"attention_dropout":0.0,"attn_logit_softcapping":50.0,"bos_token_id":2,"cache_implementation":"hybrid","eos_token_id":[1,107],"final_logit_softcapping":30.0,"head_dim":256,"hidden_act":"gelu_pytorch_tanh","hidden_activation":"gelu_pytorch_tanh","hidden_size":2304,"initializer_range":0.02,"intermediate_size":9216,"max_position_embeddings":8192,"model_type":"gemma2","num_attention_heads":8,"num_hidden_layers":26,"num_key_value_heads":4,"pad_token_id":0,"query_pre_attn_scalar":256,"rms_norm_eps":1e-06,"rope_theta":10000.0,"sliding_window":4096,"torch_dtype":"float32","transformers_version":"4.42.4","vocab_size":256000})";
  auto g = ParseLlamaConfig(gemma2);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->family, Family::kGemma2);
  EXPECT_TRUE(g->tie_word_embeddings);  // Gemma2Config's default
  EXPECT_TRUE(g->norm_plus_one && g->sandwich_norms);
  EXPECT_EQ(g->attn_softcap, 50.0);
  EXPECT_EQ(g->final_softcap, 30.0);
  EXPECT_EQ(g->LayerWindow(0), 4096);
  EXPECT_EQ(g->LayerWindow(1), 0);
  EXPECT_EQ(g->LayerWindow(24), 4096);
  auto g_nocap = ParseLlamaConfig(With(gemma2, "final_logit_softcapping", "null"));
  ASSERT_TRUE(g_nocap.ok());
  EXPECT_EQ(g_nocap->final_softcap, 0.0);
  ExpectInvalid(With(gemma2, "hidden_activation", "\"gelu\""), "hidden_activation");
  // Gemma-3-1b (text): two RoPEs in the transformers 4 layout, pattern 6, no soft-caps.
  const char* gemma3 = R"({"architectures":["Gemma3ForCausalLM"],"attention_bias":false,"attention_dropout":0.0,"attn_logit_softcapping":null,"bos_token_id":2,"cache_implementation":"hybrid","eos_token_id":[1,106],"final_logit_softcapping":null,"head_dim":256,"hidden_activation":"gelu_pytorch_tanh","hidden_size":1152,"initializer_range":0.02,"intermediate_size":6912,"max_position_embeddings":32768,"model_type":"gemma3_text","num_attention_heads":4,"num_hidden_layers":26,"num_key_value_heads":1,"pad_token_id":0,"query_pre_attn_scalar":256,"rms_norm_eps":1e-06,"rope_local_base_freq":10000,"rope_scaling":null,"rope_theta":1000000,"sliding_window":512,"sliding_window_pattern":6,"torch_dtype":"bfloat16","transformers_version":"4.50.0.dev0","use_cache":true,"vocab_size":262144})";
  auto g3 = ParseLlamaConfig(gemma3);
  ASSERT_TRUE(g3.ok()) << g3.status();
  EXPECT_EQ(g3->family, Family::kGemma3);
  EXPECT_TRUE(g3->qk_norm && g3->has_local_rope);
  EXPECT_EQ(g3->final_softcap, 0.0);
  EXPECT_EQ(g3->LayerWindow(0), 512);
  EXPECT_EQ(g3->LayerWindow(5), 0);  // (5 + 1) % 6 == 0: full
  EXPECT_EQ(g3->LayerRope(5).theta, 1e6);
  EXPECT_EQ(g3->LayerRope(0).theta, 1e4);
  ExpectInvalid(With(gemma3, "rope_local_base_freq", "0"), "rope_local_base_freq");
  ExpectInvalid(With(gemma3, "rope_scaling", R"({"rope_type":"proportional"})"), "proportional");
  ExpectInvalid(With(qwen3, "rope_local_base_freq", "10000"),
                "rope_local_base_freq = 10000 is not used by Qwen3ForCausalLM");
  // Mistral-7B-v0.1: sliding_window 4096 < 32768, honoured on every layer.
  auto m = ParseLlamaConfig(R"({"architectures":["MistralForCausalLM"],"bos_token_id":1,"eos_token_id":2,"hidden_act":"silu","hidden_size":4096,"initializer_range":0.02,"intermediate_size":14336,"max_position_embeddings":32768,"model_type":"mistral","num_attention_heads":32,"num_hidden_layers":32,"num_key_value_heads":8,"rms_norm_eps":1e-05,"rope_theta":10000.0,"sliding_window":4096,"tie_word_embeddings":false,"torch_dtype":"bfloat16","transformers_version":"4.34.0.dev0","use_cache":true,"vocab_size":32000})");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->LayerWindow(31), 4096);
}

// Unknown model types and architectures are refused naming every supported one; so are
// architectures and model types that disagree.
TEST(ConfigTest, UnsupportedFamiliesNameTheSupportedOnes) {
  for (const std::string& j :
       {With(With("architectures", "null"), "model_type", "\"falcon\""),
        With("architectures", R"(["PhiForCausalLM"])"),
        With(With("architectures", R"(["Qwen2ForCausalLM"])"), "model_type", "\"qwen3\"")}) {
    auto c = ParseLlamaConfig(j);
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << j;
    for (const char* name : {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                             "Qwen3ForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM",
                             "Phi3ForCausalLM"}) {
      EXPECT_NE(c.status().message().find(name), absl::string_view::npos) << c.status();
    }
  }
  ExpectInvalid(With("architectures", "null"), "neither");
  // Inconsistent head counts in every family.
  for (const char* arch : {"Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma2ForCausalLM"}) {
    ExpectInvalid(With(With("architectures", std::string("[\"") + arch + "\"]"),
                       "num_key_value_heads", "3"),
                  "not a multiple of num_key_value_heads 3");
  }
}

// dynamic, yarn and longrope with transformers' defaults; settings transformers 4 and 5 read
// differently are refused.
TEST(ConfigTest, DynamicYarnLongrope) {
  auto d = ParseLlamaConfig(With("rope_scaling", R"({"type":"dynamic","factor":2})"));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->rope.type, RopeType::kDynamic);
  EXPECT_EQ(d->rope.factor, 2.0);
  // Qwen2.5's yarn: factor 4, original 32768 (max_position_embeddings 131072 agrees).
  std::string qwen = With(With("max_position_embeddings", "131072"), "rope_scaling",
                          R"({"type":"yarn","factor":4.0,"original_max_position_embeddings":32768})");
  auto y = ParseLlamaConfig(qwen);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->rope.type, RopeType::kYarn);
  EXPECT_EQ(y->rope.original_max_position_embeddings, 32768);
  EXPECT_DOUBLE_EQ(y->rope.attention_factor, 0.1 * std::log(4.0) + 1.0);
  EXPECT_EQ(y->rope.beta_fast, 32.0);
  EXPECT_EQ(y->rope.beta_slow, 1.0);
  auto ym = ParseLlamaConfig(With("rope_parameters",
      R"({"rope_type":"yarn","factor":4,"mscale":1,"mscale_all_dim":0.5,"beta_fast":0})"));
  ASSERT_TRUE(ym.ok()) << ym.status();
  EXPECT_DOUBLE_EQ(ym->rope.attention_factor,
                   (0.1 * std::log(4.0) + 1.0) / (0.05 * std::log(4.0) + 1.0));
  EXPECT_EQ(ym->rope.beta_fast, 32.0);  // transformers: `get("beta_fast") or 32`
  ExpectInvalid(With(With("max_position_embeddings", "131072"), "rope_scaling",
                     R"({"type":"yarn","factor":2.0,"original_max_position_embeddings":32768})"),
                "transformers 4 and 5");
  ExpectInvalid(With("rope_parameters", R"({"rope_type":"yarn"})"), "factor is missing");
  ExpectInvalid(With("rope_parameters", R"({"rope_type":"yarn","factor":2,"truncate":1})"),
                "truncate must be a bool");
  ExpectInvalid(With("rope_parameters", R"({"rope_type":"dynamic","factor":2,"beta_fast":3})"),
                "beta_fast");
  // longrope outside Phi-3: rope_parameters' own original_max_position_embeddings.
  auto lr = ParseLlamaConfig(With("rope_parameters",
      R"({"rope_type":"longrope","short_factor":[1,1,1,1],"long_factor":[2,2,2,2],"original_max_position_embeddings":128})"));
  ASSERT_TRUE(lr.ok()) << lr.status();
  EXPECT_EQ(lr->rope.factor, 4.0);  // 512 / 128
  EXPECT_DOUBLE_EQ(lr->rope.attention_factor, std::sqrt(1 + std::log(4.0) / std::log(128.0)));
  ExpectInvalid(With("rope_parameters", R"({"rope_type":"longrope","short_factor":[1,1,1],"long_factor":[2,2,2]})"),
                "short_factor has 3 entries; the 8 rotated dims of a head need 4");
  ExpectInvalid(With("rope_parameters", R"({"rope_type":"longrope","long_factor":[2,2,2,2]})"),
                "short_factor is missing");
  ExpectInvalid(With("rope_parameters", R"({"rope_type":"longrope","short_factor":[1,0,1,1],"long_factor":[2,2,2,2]})"),
                "short_factor has the entry 0");
  ExpectInvalid(With("rope_parameters", R"({"rope_type":"longrope","factor":3,"short_factor":[1,1,1,1],"long_factor":[2,2,2,2],"original_max_position_embeddings":128})"),
                "transformers 4 and 5");
}

// Phi-3-mini-128k-instruct (transformers 4 layout, auto_map naming its own class) and
// Phi-4-mini (partial_rotary_factor 0.75).
TEST(ConfigTest, Phi3Configs) {
  std::string factors = "[";
  for (int i = 0; i < 48; ++i) factors += (i ? "," : "") + std::to_string(1.0 + 0.1 * i);
  factors += "]";
  const std::string phi3 = R"({"_name_or_path":"Phi-3-mini-128k-instruct","architectures":["Phi3ForCausalLM"],"attention_bias":false,"attention_dropout":0.0,"auto_map":{"AutoConfig":"configuration_phi3.Phi3Config","AutoModelForCausalLM":"modeling_phi3.Phi3ForCausalLM"},"bos_token_id":1,"embd_pdrop":0.0,"eos_token_id":32000,"hidden_act":"silu","hidden_size":3072,"initializer_range":0.02,"intermediate_size":8192,"max_position_embeddings":131072,"model_type":"phi3","num_attention_heads":32,"num_hidden_layers":32,"num_key_value_heads":32,"original_max_position_embeddings":4096,"pad_token_id":32000,"resid_pdrop":0.0,"rms_norm_eps":1e-05,"rope_scaling":{"long_factor":)" +
                           factors + R"(,"short_factor":)" + factors + R"(,"type":"longrope"},"rope_theta":10000.0,"sliding_window":262144,"tie_word_embeddings":false,"torch_dtype":"bfloat16","transformers_version":"4.40.2","use_cache":true,"vocab_size":32064})";
  auto c = ParseLlamaConfig(phi3);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->family, Family::kPhi3);
  EXPECT_TRUE(c->fused_qkv && c->fused_gate_up);
  EXPECT_EQ(c->rope.type, RopeType::kLongrope);
  EXPECT_EQ(c->rope.original_max_position_embeddings, 4096);
  EXPECT_EQ(c->rope.factor, 32.0);
  EXPECT_DOUBLE_EQ(c->rope.attention_factor, std::sqrt(1 + std::log(32.0) / std::log(4096.0)));
  EXPECT_EQ(c->LayerWindow(0), 262144);  // longer than any sequence: never bites
  EXPECT_EQ(StoredLinears(*c).size(), 4u);
  // "su" is longrope's old name; the top-level original_max_position_embeddings wins.
  std::string su = phi3;
  su.replace(su.find(R"("type":"longrope")"), 17, R"("type":"su")");
  auto s = ParseLlamaConfig(su);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->rope, c->rope);
  auto edit = [&](const char* key, const char* value) {
    nlohmann::json j = nlohmann::json::parse(phi3);
    j[key] = nlohmann::json::parse(value);
    return j.dump();
  };
  ExpectInvalid(edit("rope_scaling", R"({"type":"llama3","factor":8})"),
                "not supported by Phi3ForCausalLM (default, longrope)");
  ExpectInvalid(edit("attention_bias", "true"), "attention_bias");
  ExpectInvalid(edit("auto_map", R"({"AutoModelForCausalLM":"modeling_x.XForCausalLM"})"),
                "auto_map");
  ExpectInvalid(With("original_max_position_embeddings", "64"),
                "original_max_position_embeddings = 64 is not used by LlamaForCausalLM");
  ExpectInvalid(With("partial_rotary_factor", "0.5"), "partial_rotary_factor = 0.5 is not supported");
  // Phi-4-mini: 3/4 of each head rotates.
  nlohmann::json j4 = nlohmann::json::parse(phi3);
  j4["partial_rotary_factor"] = 0.75;
  j4["rope_scaling"] = nullptr;
  auto p4 = ParseLlamaConfig(j4.dump());
  ASSERT_TRUE(p4.ok()) << p4.status();
  EXPECT_EQ(RotaryDim(p4->rope, p4->head_dim), 72);
  ExpectInvalid(edit("partial_rotary_factor", "0.75"), "short_factor has 48 entries");
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
