#include "engine/model/synthetic_checkpoint.h"

#include <cmath>
#include <cstdio>
#include <memory>
#include <set>
#include <vector>

#include "common/file_util.h"
#include "common/status_macros.h"
#include "common/str_util.h"
#include "engine/format/float16.h"
#include "engine/format/safetensors.h"
#include "engine/model/weights.h"
#include "nlohmann/json.hpp"

namespace quantd::model {
namespace {

using json = nlohmann::json;

json ConfigJson(const LlamaConfig& c) {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"hidden_act", "silu"},
          {"hidden_size", c.hidden_size},
          {"intermediate_size", c.intermediate_size},
          {"num_hidden_layers", c.num_layers},
          {"num_attention_heads", c.num_heads},
          {"num_key_value_heads", c.num_kv_heads},
          {"head_dim", c.head_dim},
          {"vocab_size", c.vocab_size},
          {"max_position_embeddings", c.max_position_embeddings},
          {"rms_norm_eps", c.rms_norm_eps},
          {"rope_theta", c.rope.theta},
          {"rope_scaling", nullptr},
          {"tie_word_embeddings", c.tie_word_embeddings},
          {"attention_bias", false},
          {"mlp_bias", false},
          {"bos_token_id", c.bos_token_id},
          {"eos_token_id", 2},
          {"torch_dtype", "bfloat16"}};
}

uint64_t SplitMix(uint64_t* s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Approximately N(0, 1): the sum of four uniforms, rescaled (Irwin-Hall; cheap and bounded).
float Gauss(uint64_t* s) {
  const uint64_t r = SplitMix(s);
  float sum = 0;
  for (int i = 0; i < 4; ++i) sum += static_cast<float>((r >> (16 * i)) & 0xffff) / 65536.0f;
  return (sum - 2.0f) * 1.7320508f;  // var(sum of 4 U(0,1)) = 1/3
}

// One tensor's bf16 bytes: rows seeded independently so that generation is parallel and
// deterministic. norm: 1 + 0.05·N(0,1); otherwise std·N(0,1).
std::string Generate(const TensorDecl& d, bool norm, float std, uint64_t seed) {
  const int64_t rows = d.shape.size() == 2 ? d.shape[0] : 1;
  const int64_t cols = d.shape.back();
  std::string out(static_cast<size_t>(rows * cols * 2), '\0');
  uint64_t name_seed = seed;
  for (char ch : d.name) name_seed = name_seed * 131 + static_cast<unsigned char>(ch);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    uint64_t s = name_seed ^ (static_cast<uint64_t>(r) * 0xD1B54A32D192ED03ull);
    char* p = out.data() + r * cols * 2;
    for (int64_t c = 0; c < cols; ++c) {
      const float v = norm ? 1.0f + 0.05f * Gauss(&s) : std * Gauss(&s);
      const uint16_t b = FloatToBFloat16(v);
      p[2 * c] = static_cast<char>(b & 0xff);
      p[2 * c + 1] = static_cast<char>(b >> 8);
    }
  }
  return out;
}

// A SentencePiece-style BPE tokenizer.json (Llama 2's layout: <unk>, <s>, </s>, 256 byte
// fallback tokens, "▁" and printable ASCII, then merged pieces up to vocab_size).
absl::StatusOr<std::string> TokenizerJson(int vocab_size, uint64_t seed) {
  std::vector<std::string> pieces = {"<unk>", "<s>", "</s>"};
  char buf[8];
  for (int b = 0; b < 256; ++b) {
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    pieces.push_back(buf);
  }
  pieces.push_back("\xE2\x96\x81");  // ▁
  for (char c = '!'; c <= '~'; ++c) pieces.push_back(std::string(1, c));
  if (vocab_size < static_cast<int>(pieces.size())) {
    return absl::InvalidArgumentError(internal::Cat("synthetic tokenizer: vocab_size ", vocab_size,
                                                   " below the ", pieces.size(),
                                                   " base tokens"));
  }
  const size_t base = 259;
  std::set<std::string> have(pieces.begin(), pieces.end());
  json merges = json::array();
  uint64_t s = seed ^ 0x7A3F;
  // Merges of two existing non-special, non-byte pieces; short ones are preferred, like real
  // merge lists, by drawing the second piece from the recent end or the base letters.
  int64_t misses = 0;
  while (static_cast<int>(pieces.size()) < vocab_size) {
    if (++misses > int64_t{100} * vocab_size) {
      return absl::InternalError("synthetic tokenizer: ran out of merges");
    }
    const size_t n = pieces.size() - base;
    const std::string& a = pieces[base + SplitMix(&s) % n];
    const std::string& b = pieces[base + 1 + SplitMix(&s) % std::min<size_t>(n - 1, 95)];
    std::string ab = a + b;
    if (ab.size() > 16 || have.count(ab)) continue;
    merges.push_back({a, b});
    have.insert(ab);
    pieces.push_back(std::move(ab));
  }
  json vocab = json::object();
  for (size_t i = 0; i < pieces.size(); ++i) vocab[pieces[i]] = i;
  json added = json::array();
  for (int i = 0; i < 3; ++i) {
    added.push_back({{"id", i},
                     {"content", pieces[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  const std::string space = "\xE2\x96\x81";
  json t = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", space}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", space}}}}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"pair",
         {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
          {{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "B"}, {"type_id", 0}}}}}},
        {"special_tokens",
         {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"}, {"pattern", {{"String", space}}}, {"content", " "}},
          {{"type", "ByteFallback"}},
          {{"type", "Fuse"}},
          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", "<unk>"},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", true},
        {"byte_fallback", true},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", merges}}}};
  return t.dump();
}

}  // namespace

LlamaConfig LlamaShape(int hidden, int inter, int layers, int heads, int kv, int vocab,
                       int max_pos) {
  LlamaConfig c;
  c.hidden_size = hidden;
  c.intermediate_size = inter;
  c.num_layers = layers;
  c.num_heads = heads;
  c.num_kv_heads = kv;
  c.head_dim = hidden / heads;
  c.vocab_size = vocab;
  c.max_position_embeddings = max_pos;
  c.rms_norm_eps = 1e-5;
  c.rope.theta = 10000.0;
  c.tie_word_embeddings = false;
  c.bos_token_id = 1;
  return c;
}

absl::StatusOr<SyntheticShape> SyntheticShapeByName(std::string_view name) {
  if (name == "llama2-7b") {
    return SyntheticShape{LlamaShape(4096, 11008, 32, 32, 32, 32000, 4096), "llama2-7b"};
  }
  if (name == "tinyllama-1.1b") {
    return SyntheticShape{LlamaShape(2048, 5632, 22, 32, 4, 32000, 2048), "tinyllama-1.1b"};
  }
  if (name == "tiny") return SyntheticShape{LlamaShape(64, 160, 2, 4, 2, 512, 256), "tiny"};
  return absl::InvalidArgumentError(internal::Cat(
      "unknown synthetic shape \"", name, "\": known are llama2-7b, tinyllama-1.1b, tiny"));
}

absl::StatusOr<SyntheticResult> WriteSyntheticCheckpoint(const LlamaConfig& cfg,
                                                         const std::string& dir,
                                                         const SyntheticOptions& opts) {
  const std::string config_text = ConfigJson(cfg).dump(2) + "\n";
  QUANTD_RETURN_IF_ERROR(ParseLlamaConfig(config_text).status());
  if (opts.max_shard_bytes <= 0 || !(opts.init_std > 0)) {
    return absl::InvalidArgumentError(
        internal::Cat("synthetic checkpoint: max_shard_bytes ", opts.max_shard_bytes,
                      " and init_std ", opts.init_std, " must be positive"));
  }
  QUANTD_RETURN_IF_ERROR(MakeDirs(dir));
  // HF's tensor order: embedding, layers, final norm, lm_head.
  struct Planned {
    TensorDecl decl;
    bool norm;
  };
  std::vector<Planned> all;
  const int64_t h = cfg.hidden_size;
  all.push_back({{"model.embed_tokens.weight", DType::kBF16, {cfg.vocab_size, h}}, false});
  for (int l = 0; l < cfg.num_layers; ++l) {
    const std::string p = internal::Cat("model.layers.", l, ".");
    all.push_back({{p + "input_layernorm.weight", DType::kBF16, {h}}, true});
    for (Linear lin : kAllLinears) {
      const auto [out, in] = LinearShape(cfg, lin);
      all.push_back({{LinearTensorName(l, lin), DType::kBF16, {out, in}}, false});
    }
    all.push_back({{p + "post_attention_layernorm.weight", DType::kBF16, {h}}, true});
  }
  all.push_back({{"model.norm.weight", DType::kBF16, {h}}, true});
  if (!cfg.tie_word_embeddings) {
    all.push_back({{"lm_head.weight", DType::kBF16, {cfg.vocab_size, h}}, false});
  }
  // Greedy shards in order.
  std::vector<std::vector<const Planned*>> shards(1);
  int64_t in_shard = 0, total = 0;
  for (const Planned& p : all) {
    int64_t bytes = 2;
    for (int64_t d : p.decl.shape) bytes *= d;
    if (in_shard > 0 && in_shard + bytes > opts.max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(&p);
    in_shard += bytes;
    total += bytes;
  }
  const int n = static_cast<int>(shards.size());
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", json::object()}};
  for (int i = 0; i < n; ++i) {
    char file[64];
    std::snprintf(file, sizeof(file), "model-%05d-of-%05d.safetensors", i + 1, n);
    std::vector<TensorDecl> decls;
    for (const Planned* p : shards[i]) {
      decls.push_back(p->decl);
      index["weight_map"][p->decl.name] = file;
    }
    QUANTD_ASSIGN_OR_RETURN(auto w, SafetensorsWriter::Create(JoinPath(dir, file), decls));
    for (const Planned* p : shards[i]) {
      QUANTD_RETURN_IF_ERROR(
          w->Append(p->decl.name, Generate(p->decl, p->norm, opts.init_std, opts.seed)));
    }
    QUANTD_RETURN_IF_ERROR(w->Finish());
  }
  QUANTD_ASSIGN_OR_RETURN(std::string tok, TokenizerJson(cfg.vocab_size, opts.seed));
  QUANTD_RETURN_IF_ERROR(WriteFileAtomic(JoinPath(dir, "tokenizer.json"), tok));
  const json tok_cfg = {{"tokenizer_class", "LlamaTokenizerFast"},
                        {"bos_token", "<s>"},
                        {"eos_token", "</s>"},
                        {"unk_token", "<unk>"},
                        {"add_bos_token", true}};
  QUANTD_RETURN_IF_ERROR(
      WriteFileAtomic(JoinPath(dir, "tokenizer_config.json"), tok_cfg.dump(2) + "\n"));
  QUANTD_RETURN_IF_ERROR(
      WriteFileAtomic(JoinPath(dir, "model.safetensors.index.json"), index.dump(2) + "\n"));
  // config.json last: a directory with it is complete.
  QUANTD_RETURN_IF_ERROR(WriteFileAtomic(JoinPath(dir, "config.json"), config_text));
  SyntheticResult r;
  r.shards = n;
  r.total_bytes = total;
  return r;
}

}  // namespace quantd::model
