#include "engine/model/gguf_convert.h"

#include <unistd.h>

#include <cstdlib>
#include <map>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/file_util.h"
#include "nlohmann/json.hpp"
#include "engine/format/checkpoint.h"
#include "engine/format/float16.h"
#include "engine/model/forward.h"
#include "engine/format/gguf_test_util.h"
#include "engine/tokenizer/gguf_tokenizer.h"
#include "engine/model/test_util.h"
#include "engine/tokenizer/tokenizer_hf.h"
#include "engine/tokenizer/tokenizer_llama2c.h"
#include "engine/tokenizer/tokens.h"

namespace quantd::model {
namespace {

using testing::ExamplePath;
using testing::F32Bytes;
using testing::GgufBuilder;
using VT = GgufValueType;

// llama.cpp's convert_hf_to_gguf permute(), written from its numpy expression
// w.reshape(n_head, 2, rows / n_head / 2, cols).swapaxes(1, 2).reshape(rows, cols):
// output row (h, i, s) is input row (h, s, i).
std::vector<float> LlamaCppPermute(const std::vector<float>& w, int64_t rows, int64_t cols,
                                   int n_head) {
  const int64_t half = rows / n_head / 2;
  std::vector<float> out(w.size());
  int64_t dst = 0;
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t s = 0; s < 2; ++s, ++dst)
        std::memcpy(&out[dst * cols], &w[((h * 2 + s) * half + i) * cols], cols * sizeof(float));
  return out;
}

std::string TempDir(const std::string& name) {
  const char* t = std::getenv("TEST_TMPDIR");
  std::string d = std::string(t != nullptr ? t : "/tmp") + "/gguf_convert_test_" + name + "_" +
                  std::to_string(::getpid());
  EXPECT_TRUE(RemoveAll(d).ok());
  EXPECT_TRUE(MakeDirs(d).ok());
  return d;
}

// llama2.c tok512.bin -> GGUF "llama" tokenizer arrays (spaces become U+2581 and the special
// pieces "\n<s>\n" etc. get their SentencePiece names, as llama.cpp's converters do).
void AddLlama2cTokenizer(GgufBuilder* b) {
  auto bytes = ReadFile(ExamplePath("stories260K/tok512.bin"));
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  size_t pos = 4;
  for (int i = 0; i < 512; ++i) {
    float score;
    int32_t len;
    std::memcpy(&score, bytes->data() + pos, 4);
    std::memcpy(&len, bytes->data() + pos + 4, 4);
    std::string piece = bytes->substr(pos + 8, len);
    pos += 8 + len;
    std::string t;
    for (char c : piece) t += c == ' ' ? std::string("\xe2\x96\x81") : std::string(1, c);
    if (i < 3) t = std::vector<std::string>{"<unk>", "<s>", "</s>"}[i];
    tokens.push_back(t);
    scores.push_back(score);
    types.push_back(i == 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1);
  }
  b->String("tokenizer.ggml.model", "llama")
      .StringArray("tokenizer.ggml.tokens", tokens)
      .Array<float>("tokenizer.ggml.scores", VT::kF32, scores)
      .Array<int32_t>("tokenizer.ggml.token_type", VT::kI32, types)
      .Scalar<uint32_t>("tokenizer.ggml.bos_token_id", VT::kU32, 1)
      .Scalar<uint32_t>("tokenizer.ggml.eos_token_id", VT::kU32, 2)
      .Scalar<uint32_t>("tokenizer.ggml.unknown_token_id", VT::kU32, 0);
}

struct Skip {
  std::string name;  // GGUF name to leave out
  std::string extra;  // extra GGUF tensor to add
  std::string arch = "llama";
};

// stories260K as a llama.cpp-style GGUF with F32 tensors.
std::string Stories260KGguf(const Skip& skip = {}) {
  auto ckpt = Checkpoint::Open(ExamplePath("stories260K"));
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  GgufBuilder b;
  b.String("general.architecture", skip.arch)
      .Scalar<uint32_t>("llama.context_length", VT::kU32, 512)
      .Scalar<uint32_t>("llama.embedding_length", VT::kU32, 64)
      .Scalar<uint32_t>("llama.feed_forward_length", VT::kU32, 172)
      .Scalar<uint32_t>("llama.block_count", VT::kU32, 5)
      .Scalar<uint32_t>("llama.attention.head_count", VT::kU32, 8)
      .Scalar<uint32_t>("llama.attention.head_count_kv", VT::kU32, 4)
      .Scalar<float>("llama.attention.layer_norm_rms_epsilon", VT::kF32, 1e-5f)
      .Scalar<float>("llama.rope.freq_base", VT::kF32, 10000.0f)
      .Scalar<uint32_t>("llama.vocab_size", VT::kU32, 512);
  AddLlama2cTokenizer(&b);
  const std::map<std::string, std::string> names = {
      {"input_layernorm", "attn_norm"},   {"self_attn.q_proj", "attn_q"},
      {"self_attn.k_proj", "attn_k"},     {"self_attn.v_proj", "attn_v"},
      {"self_attn.o_proj", "attn_output"}, {"post_attention_layernorm", "ffn_norm"},
      {"mlp.gate_proj", "ffn_gate"},      {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"}};
  for (const std::string& hf : (*ckpt)->Names()) {
    std::string g;
    if (hf == "model.embed_tokens.weight") g = "token_embd.weight";
    if (hf == "model.norm.weight") g = "output_norm.weight";
    int layer;
    char part[64];
    if (std::sscanf(hf.c_str(), "model.layers.%d.%63[a-z_.]", &layer, part) == 2) {
      std::string p(part);
      p = p.substr(0, p.size() - std::string(".weight").size());
      g = "blk." + std::to_string(layer) + "." + names.at(p) + ".weight";
    }
    EXPECT_FALSE(g.empty()) << hf;
    if (g == skip.name) continue;
    auto m = (*ckpt)->ReadMatrix(hf);
    EXPECT_TRUE(m.ok()) << m.status();
    auto t = *(*ckpt)->Get(hf);
    std::vector<float> v(m->data(), m->data() + m->size());
    if (g.find("attn_q") != std::string::npos) v = LlamaCppPermute(v, m->rows(), m->cols(), 8);
    if (g.find("attn_k") != std::string::npos) v = LlamaCppPermute(v, m->rows(), m->cols(), 4);
    b.Tensor(g, std::vector<int64_t>(t.shape.rbegin(), t.shape.rend()), 0, F32Bytes(v));
  }
  if (!skip.extra.empty()) b.Tensor(skip.extra, {64}, 0, F32Bytes(std::vector<float>(64, 1)));
  return b.Build();
}

std::string WriteGguf(const std::string& dir, const std::string& img) {
  const std::string path = dir + "/model.gguf";
  EXPECT_TRUE(WriteFileAtomic(path, img).ok());
  return path;
}

TEST(GgufConvertTest, UnpermuteInvertsLlamaCppPermute) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (int heads : {1, 3, 8}) {
    const int64_t rows = heads * 8, cols = 5;
    std::vector<float> w(rows * cols);
    for (float& x : w) x = u(rng);
    std::vector<float> p = LlamaCppPermute(w, rows, cols, heads);
    ASSERT_NE(p, w);
    ASSERT_TRUE(UnpermuteQk(p.data(), rows, cols, heads).ok());
    EXPECT_EQ(p, w) << heads << " heads";
  }
  std::vector<float> w(6 * 2);
  EXPECT_EQ(UnpermuteQk(w.data(), 6, 2, 2).code(), absl::StatusCode::kInvalidArgument);
}

TEST(GgufConvertTest, MapsNames) {
  EXPECT_EQ(*HfTensorName("token_embd.weight"), "model.embed_tokens.weight");
  EXPECT_EQ(*HfTensorName("output.weight"), "lm_head.weight");
  EXPECT_EQ(*HfTensorName("output_norm.weight"), "model.norm.weight");
  EXPECT_EQ(*HfTensorName("blk.12.attn_output.weight"), "model.layers.12.self_attn.o_proj.weight");
  EXPECT_EQ(*HfTensorName("blk.0.ffn_norm.weight"), "model.layers.0.post_attention_layernorm.weight");
  EXPECT_EQ(*HfTensorName("blk.3.ffn_down.weight"), "model.layers.3.mlp.down_proj.weight");
  for (const char* bad : {"rope_freqs.weight", "blk.x.attn_q.weight", "blk.01.attn_q.weight",
                          "blk.1.attn_q.bias", "blk..attn_q.weight", "blk.1.weight"}) {
    EXPECT_EQ(HfTensorName(bad).status().code(), absl::StatusCode::kNotFound) << bad;
  }
}

TEST(GgufConvertTest, Stories260KRoundTripsAndReproducesReferenceLogits) {
  const std::string dir = TempDir("f32");
  const std::string gguf = WriteGguf(dir, Stories260KGguf());
  GgufConvertOptions opts;
  opts.dtype = DType::kF32;
  auto s = ConvertGgufToHf(gguf, dir + "/hf", opts);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->tensors, 47);  // 5 x 9 + embedding + final norm (tied head)
  EXPECT_EQ(s->parameters, 260032);

  // Tensors equal the original checkpoint bit for bit.
  auto orig = Checkpoint::Open(ExamplePath("stories260K"));
  auto conv = Checkpoint::Open(dir + "/hf");
  ASSERT_TRUE(orig.ok() && conv.ok());
  ASSERT_EQ((*orig)->Names(), (*conv)->Names());
  for (const std::string& n : (*orig)->Names()) {
    auto a = *(*orig)->Get(n);
    auto b = *(*conv)->Get(n);
    EXPECT_EQ(b.dtype, DType::kF32) << n;
    EXPECT_EQ(a.shape, b.shape) << n;
    EXPECT_TRUE(a.data == b.data) << n;
  }

  // The config reads back to the original one.
  auto cfg = LoadLlamaConfig(dir + "/hf");
  auto ref_cfg = LoadLlamaConfig(ExamplePath("stories260K"));
  ASSERT_TRUE(cfg.ok() && ref_cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->hidden_size, 64);
  EXPECT_EQ(cfg->num_kv_heads, 4);
  EXPECT_EQ(cfg->head_dim, 8);
  EXPECT_TRUE(cfg->tie_word_embeddings);
  EXPECT_EQ(cfg->rms_norm_eps, ref_cfg->rms_norm_eps);
  EXPECT_EQ(cfg->rope, ref_cfg->rope);
  auto cfg_text = ReadFile(dir + "/hf/config.json");
  auto cj = nlohmann::json::parse(*cfg_text);
  EXPECT_EQ(cj["eos_token_id"], 2);
  EXPECT_EQ(cj["torch_dtype"], "float32");

  // Our forward pass on the converted directory reproduces the reference logits.
  auto w = LoadLlamaWeights(**conv, *cfg);
  ASSERT_TRUE(w.ok()) << w.status();
  auto toks = LoadTokenFile(ExamplePath("tinystories/tinystories_valid_first1000.tok512.u16"));
  ASSERT_TRUE(toks.ok());
  toks->resize(64);
  auto logits = Forward(*cfg, *w, *toks);
  ASSERT_TRUE(logits.ok()) << logits.status();
  auto ref_bytes = ReadFile(ExamplePath("stories260K/ref_logits_first64.f32"));
  ASSERT_TRUE(ref_bytes.ok());
  MatrixF ref(64, 512);
  std::memcpy(ref.data(), ref_bytes->data(), ref_bytes->size());
  EXPECT_LT((*logits - ref).cwiseAbs().maxCoeff(), 1e-4f);

  // SentencePiece tokenizer.json: 512 vocab entries, byte fallback, merges from the scores.
  auto tj = nlohmann::json::parse(*ReadFile(dir + "/hf/tokenizer.json"));
  EXPECT_EQ(tj["model"]["type"], "BPE");
  EXPECT_EQ(tj["model"]["byte_fallback"], true);
  EXPECT_EQ(tj["model"]["unk_token"], "<unk>");
  EXPECT_EQ(tj["model"]["vocab"].size(), 512u);
  EXPECT_EQ(tj["model"]["vocab"]["<0x41>"], 3 + 0x41);
  EXPECT_GT(tj["model"]["merges"].size(), 100u);
  for (const auto& m : tj["model"]["merges"]) {
    const std::string merge = m;
    const size_t sp = merge.find(' ');
    ASSERT_NE(sp, std::string::npos) << merge;
    EXPECT_TRUE(tj["model"]["vocab"].contains(merge.substr(0, sp) + merge.substr(sp + 1))) << merge;
  }
  EXPECT_EQ(tj["added_tokens"].size(), 3u);
  EXPECT_EQ(tj["added_tokens"][1]["content"], "<s>");
  // It encodes like the original llama2.c tokenizer (through the in-tree tokenizer.json reader).
  auto hf_tok = HfTokenizer::Load(dir + "/hf/tokenizer.json");
  auto l2c_tok = Llama2cTokenizer::Load(ExamplePath("stories260K/tok512.bin"));
  ASSERT_TRUE(hf_tok.ok()) << hf_tok.status();
  ASSERT_TRUE(l2c_tok.ok()) << l2c_tok.status();
  for (const char* text : {"Once upon a time, there was a little girl named Lily.",
                           "She loved to play outside.  \"Wow!\" said Tom, 3 times; caf\xc3\xa9"}) {
    auto a = (*hf_tok)->Encode(text, /*bos=*/true);
    auto b = (*l2c_tok)->Encode(text, /*bos=*/true);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(*a, *b) << text;
  }
  auto tc = nlohmann::json::parse(*ReadFile(dir + "/hf/tokenizer_config.json"));
  EXPECT_EQ(tc["bos_token"], "<s>");
  EXPECT_EQ(tc["eos_token"], "</s>");
  ASSERT_TRUE(RemoveAll(dir).ok());
}

TEST(GgufConvertTest, DefaultDtypeIsF16) {
  const std::string dir = TempDir("f16");
  auto s = ConvertGgufToHf(WriteGguf(dir, Stories260KGguf()), dir + "/hf");
  ASSERT_TRUE(s.ok()) << s.status();
  auto orig = Checkpoint::Open(ExamplePath("stories260K"));
  auto conv = Checkpoint::Open(dir + "/hf");
  ASSERT_TRUE(orig.ok() && conv.ok());
  auto a = (*orig)->ReadMatrix("model.layers.2.self_attn.k_proj.weight");
  auto b = (*conv)->Get("model.layers.2.self_attn.k_proj.weight");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(b->dtype, DType::kF16);
  ASSERT_EQ(b->data.size(), static_cast<size_t>(a->size()) * 2);
  for (Eigen::Index i = 0; i < a->size(); ++i) {
    uint16_t h;
    std::memcpy(&h, b->data.data() + 2 * i, 2);
    ASSERT_EQ(h, FloatToHalf(a->data()[i])) << i;
  }
  ASSERT_TRUE(RemoveAll(dir).ok());
}

void ExpectConvertError(const std::string& img, const std::string& needle) {
  const std::string dir = TempDir("bad");
  auto s = ConvertGgufToHf(WriteGguf(dir, img), dir + "/hf");
  ASSERT_FALSE(s.ok()) << needle;
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << s.status();
  EXPECT_NE(s.status().message().find(needle), std::string::npos) << s.status();
  EXPECT_FALSE(FileSize(dir + "/hf/config.json").ok());
  ASSERT_TRUE(RemoveAll(dir).ok());
}

TEST(GgufConvertTest, RejectsWhatItCannotConvert) {
  ExpectConvertError(Stories260KGguf({"", "", "gpt2"}),
                     "general.architecture = \"gpt2\" is not supported; supported: llama");
  ExpectConvertError(Stories260KGguf({"blk.4.ffn_up.weight"}),
                     "missing tensor for model.layers.4.mlp.up_proj.weight");
  ExpectConvertError(Stories260KGguf({"", "rope_freqs.weight"}),
                     "tensor \"rope_freqs.weight\" has no llama equivalent");
  ExpectConvertError(Stories260KGguf({"", "blk.5.attn_norm.weight"}), "is not part of a 5-layer");
  ExpectConvertError(Stories260KGguf({"", "output.weight"}),
                     "tensor \"output.weight\" has shape [64], the metadata implies [512,64]");
}

TEST(GgufConvertTest, WritesByteLevelBpeTokenizer) {
  GgufBuilder b;
  b.String("tokenizer.ggml.model", "gpt2")
      .String("tokenizer.ggml.pre", "smollm")
      .StringArray("tokenizer.ggml.tokens", {"<|endoftext|>", "a", "b", "ab", "\xc4\xa0" "ab", "<x>"})
      .Array<int32_t>("tokenizer.ggml.token_type", VT::kI32, {3, 1, 1, 1, 1, 4})
      .StringArray("tokenizer.ggml.merges", {"a b", "\xc4\xa0 ab"})
      .Scalar<uint32_t>("tokenizer.ggml.bos_token_id", VT::kU32, 0)
      .Scalar<uint32_t>("tokenizer.ggml.eos_token_id", VT::kU32, 0)
      .Scalar<uint8_t>("tokenizer.ggml.add_bos_token", VT::kBool, 0);
  const std::string img = b.Build();
  auto f = GgufFile::Parse(img, "tok.gguf");
  ASSERT_TRUE(f.ok()) << f.status();
  auto t = GgufTokenizerToHf(**f);
  ASSERT_TRUE(t.ok()) << t.status();
  auto j = nlohmann::json::parse(t->tokenizer_json);
  EXPECT_EQ(j["model"]["type"], "BPE");
  EXPECT_EQ(j["model"]["byte_fallback"], false);
  EXPECT_EQ(j["model"]["vocab"]["\xc4\xa0" "ab"], 4);
  EXPECT_EQ(j["model"]["merges"], nlohmann::json::array({"a b", "\xc4\xa0 ab"}));
  EXPECT_EQ(j["pre_tokenizer"]["pretokenizers"][0]["type"], "Digits");
  EXPECT_EQ(j["pre_tokenizer"]["pretokenizers"][1]["type"], "ByteLevel");
  EXPECT_EQ(j["decoder"]["type"], "ByteLevel");
  ASSERT_EQ(j["added_tokens"].size(), 2u);
  EXPECT_EQ(j["added_tokens"][0]["content"], "<|endoftext|>");
  EXPECT_EQ(j["added_tokens"][0]["special"], true);
  EXPECT_EQ(j["added_tokens"][1]["id"], 5);
  EXPECT_EQ(j["added_tokens"][1]["special"], false);
  auto c = nlohmann::json::parse(t->tokenizer_config_json);
  EXPECT_EQ(c["eos_token"], "<|endoftext|>");
  EXPECT_EQ(c["add_bos_token"], false);

  GgufBuilder unknown;
  unknown.String("tokenizer.ggml.model", "gpt2")
      .String("tokenizer.ggml.pre", "qwen9")
      .StringArray("tokenizer.ggml.tokens", {"a"})
      .StringArray("tokenizer.ggml.merges", {});
  const std::string img2 = unknown.Build();
  auto f2 = GgufFile::Parse(img2, "tok.gguf");
  ASSERT_TRUE(f2.ok());
  auto bad = GgufTokenizerToHf(**f2);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("tokenizer.ggml.pre = \"qwen9\" is not supported"),
            std::string::npos)
      << bad.status();
}

}  // namespace
}  // namespace quantd::model
