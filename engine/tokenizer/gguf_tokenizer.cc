#include "engine/tokenizer/gguf_tokenizer.h"

#include <algorithm>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "common/str_util.h"

namespace quantd::model {
namespace {

using json = nlohmann::ordered_json;

// llama_token_type values stored in tokenizer.ggml.token_type.
constexpr int64_t kUnknown = 2, kControl = 3, kUserDefined = 4;

constexpr const char* kLlama3Pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr const char* kSupportedPre = "gpt2, smollm, starcoder, refact, codeshell, llama-bpe";

json ByteLevel(bool use_regex) {
  return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
          {"use_regex", use_regex}};
}

// The pre-tokenizer llama.cpp applies for tokenizer.ggml.pre, in tokenizer.json form.
absl::StatusOr<json> PreTokenizer(const GgufFile& f) {
  auto pre = f.GetString("tokenizer.ggml.pre");
  if (!pre.ok() && pre.status().code() != absl::StatusCode::kNotFound) return pre.status();
  const std::string name = pre.ok() ? *pre : "";
  if (name == "gpt2") return ByteLevel(true);
  if (name == "smollm" || name == "starcoder" || name == "refact" || name == "codeshell") {
    // Single digits split off, then the GPT-2 regex (as HF SmolLM2 / StarCoder ship it).
    return json{{"type", "Sequence"},
                {"pretokenizers",
                 json::array({{{"type", "Digits"}, {"individual_digits", true}}, ByteLevel(true)})}};
  }
  if (name == "llama-bpe") {
    return json{{"type", "Sequence"},
                {"pretokenizers",
                 json::array({{{"type", "Split"},
                               {"pattern", {{"Regex", kLlama3Pattern}}},
                               {"behavior", "Isolated"},
                               {"invert", false}},
                              ByteLevel(false)})}};
  }
  return absl::InvalidArgumentError(internal::Cat(
      f.label(), ": tokenizer.ggml.pre = \"", name, "\" is not supported; supported: ",
      kSupportedPre));
}

const std::vector<std::string>* StringArray(const GgufFile& f, std::string_view key) {
  const GgufValue* v = f.Find(key);
  if (v == nullptr || !v->is_array || v->type != GgufValueType::kString) return nullptr;
  return &v->strings;
}

absl::Status BadKey(const GgufFile& f, std::string_view key, std::string_view what) {
  return absl::InvalidArgumentError(internal::Cat(f.label(), ": ", key, " ", what));
}

// Optional token id: -1 if absent; INVALID_ARGUMENT if outside [0, n).
absl::StatusOr<int64_t> TokenId(const GgufFile& f, std::string_view key, size_t n) {
  auto id = f.GetInt(key);
  if (!id.ok()) {
    if (id.status().code() == absl::StatusCode::kNotFound) return -1;
    return id.status();
  }
  if (*id < 0 || static_cast<uint64_t>(*id) >= n) {
    return BadKey(f, key, internal::Cat("= ", *id, " is outside the vocabulary of ", n));
  }
  return *id;
}

bool OptionalBool(const GgufFile& f, std::string_view key, bool dflt) {
  auto b = f.GetBool(key);
  return b.ok() ? *b : dflt;
}

// Merges of a SentencePiece BPE vocabulary, the way HF's LlamaConverter derives them: every
// split of a piece into two pieces that are both in the vocabulary, ordered by the merged
// piece's score (highest first), ties by the ids of the two halves.
std::vector<std::string> MergesFromScores(const std::vector<std::string>& tokens,
                                          const std::vector<double>& scores) {
  std::unordered_map<std::string_view, int64_t> id;
  for (size_t i = 0; i < tokens.size(); ++i) id.emplace(tokens[i], static_cast<int64_t>(i));
  struct Merge {
    double score;
    int64_t l, r;
  };
  std::vector<Merge> merges;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string_view t = tokens[i];
    for (size_t k = 1; k < t.size(); ++k) {
      auto l = id.find(t.substr(0, k)), r = id.find(t.substr(k));
      if (l != id.end() && r != id.end()) merges.push_back({scores[i], l->second, r->second});
    }
  }
  std::stable_sort(merges.begin(), merges.end(), [](const Merge& a, const Merge& b) {
    if (a.score != b.score) return a.score > b.score;
    return std::make_pair(a.l, a.r) < std::make_pair(b.l, b.r);
  });
  std::vector<std::string> out;
  out.reserve(merges.size());
  for (const Merge& m : merges) out.push_back(internal::Cat(tokens[m.l], " ", tokens[m.r]));
  return out;
}

json TemplateWithBos(const std::string& bos, int64_t bos_id) {
  return {{"type", "TemplateProcessing"},
          {"single", json::array({{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
                                  {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
          {"pair", json::array({{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                                {{"SpecialToken", {{"id", bos}, {"type_id", 1}}}},
                                {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}})},
          {"special_tokens",
           {{bos, {{"id", bos}, {"ids", json::array({bos_id})}, {"tokens", json::array({bos})}}}}}};
}

}  // namespace

absl::StatusOr<HfTokenizerFiles> GgufTokenizerToHf(const GgufFile& f) {
  QUANTD_ASSIGN_OR_RETURN(const std::string model, f.GetString("tokenizer.ggml.model"));
  const std::vector<std::string>* tokens = StringArray(f, "tokenizer.ggml.tokens");
  if (tokens == nullptr || tokens->empty()) {
    return BadKey(f, "tokenizer.ggml.tokens", "is missing or not a non-empty array of strings");
  }
  const size_t n = tokens->size();
  std::vector<int64_t> types(n, 1);
  if (const GgufValue* tt = f.Find("tokenizer.ggml.token_type")) {
    if (!tt->is_array || tt->ints.size() != n || tt->type == GgufValueType::kBool) {
      return BadKey(f, "tokenizer.ggml.token_type",
                    internal::Cat("must be an integer array of ", n, " entries"));
    }
    types = tt->ints;
  }
  QUANTD_ASSIGN_OR_RETURN(const int64_t bos, TokenId(f, "tokenizer.ggml.bos_token_id", n));
  QUANTD_ASSIGN_OR_RETURN(const int64_t eos, TokenId(f, "tokenizer.ggml.eos_token_id", n));
  QUANTD_ASSIGN_OR_RETURN(const int64_t unk, TokenId(f, "tokenizer.ggml.unknown_token_id", n));
  QUANTD_ASSIGN_OR_RETURN(const int64_t pad, TokenId(f, "tokenizer.ggml.padding_token_id", n));

  json added = json::array();
  for (size_t i = 0; i < n; ++i) {
    if (types[i] != kUnknown && types[i] != kControl && types[i] != kUserDefined) continue;
    added.push_back({{"id", i}, {"content", (*tokens)[i]}, {"single_word", false},
                     {"lstrip", false}, {"rstrip", false}, {"normalized", false},
                     {"special", types[i] != kUserDefined}});
  }
  // The vocabulary as a JSON object in id order; a duplicate token keeps its first id.
  json vocab = json::object();
  {
    // Appended to ordered_map's vector directly: its own insert searches linearly.
    auto& entries = vocab.get_ref<json::object_t&>();
    std::unordered_map<std::string_view, size_t> seen;
    for (size_t i = 0; i < n; ++i) {
      if (seen.emplace((*tokens)[i], i).second) {
        entries.json::object_t::Container::emplace_back((*tokens)[i], json(i));
      }
    }
  }

  json root;
  root["version"] = "1.0";
  root["truncation"] = nullptr;
  root["padding"] = nullptr;
  root["added_tokens"] = std::move(added);
  const bool add_bos = OptionalBool(f, "tokenizer.ggml.add_bos_token", model == "llama");
  if (model == "gpt2") {
    const std::vector<std::string>* merges = StringArray(f, "tokenizer.ggml.merges");
    if (merges == nullptr) {
      return BadKey(f, "tokenizer.ggml.merges", "is missing or not an array of strings");
    }
    QUANTD_ASSIGN_OR_RETURN(json pre, PreTokenizer(f));
    root["normalizer"] = nullptr;
    root["pre_tokenizer"] = std::move(pre);
    json post = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false},
                 {"use_regex", true}};
    if (add_bos && bos >= 0) {
      post = {{"type", "Sequence"},
              {"processors", json::array({post, TemplateWithBos((*tokens)[bos], bos)})}};
    }
    root["post_processor"] = std::move(post);
    root["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true},
                       {"use_regex", true}};
    root["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                     {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                     {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                     {"vocab", std::move(vocab)}, {"merges", *merges}};
  } else if (model == "llama") {
    const GgufValue* sc = f.Find("tokenizer.ggml.scores");
    if (sc == nullptr || !sc->is_array || sc->floats.size() != n) {
      return BadKey(f, "tokenizer.ggml.scores", internal::Cat("must be a float array of ", n,
                                                               " entries"));
    }
    json normalizer = json::array();
    if (OptionalBool(f, "tokenizer.ggml.add_space_prefix", true)) {
      normalizer.push_back({{"type", "Prepend"}, {"prepend", "\xe2\x96\x81"}});
    }
    normalizer.push_back({{"type", "Replace"},
                          {"pattern", {{"String", " "}}},
                          {"content", "\xe2\x96\x81"}});
    root["normalizer"] = {{"type", "Sequence"}, {"normalizers", std::move(normalizer)}};
    root["pre_tokenizer"] = nullptr;
    root["post_processor"] =
        add_bos && bos >= 0 ? TemplateWithBos((*tokens)[bos], bos) : json(nullptr);
    root["decoder"] = {
        {"type", "Sequence"},
        {"decoders",
         json::array({{{"type", "Replace"}, {"pattern", {{"String", "\xe2\x96\x81"}}}, {"content", " "}},
                      {{"type", "ByteFallback"}},
                      {{"type", "Fuse"}},
                      {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}};
    root["model"] = {{"type", "BPE"}, {"dropout", nullptr},
                     {"unk_token", unk >= 0 ? json((*tokens)[unk]) : json(nullptr)},
                     {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                     {"fuse_unk", true}, {"byte_fallback", true}, {"ignore_merges", false},
                     {"vocab", std::move(vocab)}, {"merges", MergesFromScores(*tokens, sc->floats)}};
  } else {
    return absl::InvalidArgumentError(internal::Cat(
        f.label(), ": tokenizer.ggml.model = \"", model, "\" is not supported; supported: gpt2, llama"));
  }

  json config = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                 {"add_bos_token", add_bos},
                 {"add_eos_token", false},
                 {"clean_up_tokenization_spaces", false},
                 {"model_max_length", f.GetInt("llama.context_length").value_or(2048)}};
  auto tok = [&](int64_t id) { return id >= 0 ? json((*tokens)[id]) : json(nullptr); };
  config["bos_token"] = tok(bos);
  config["eos_token"] = tok(eos);
  config["unk_token"] = tok(unk);
  config["pad_token"] = tok(pad);
  if (auto tmpl = f.GetString("tokenizer.chat_template"); tmpl.ok()) config["chat_template"] = *tmpl;

  HfTokenizerFiles out;
  try {
    out.tokenizer_json = root.dump(1, ' ', false, json::error_handler_t::strict) + "\n";
    out.tokenizer_config_json = config.dump(2, ' ', false, json::error_handler_t::strict) + "\n";
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        internal::Cat(f.label(), ": tokenizer metadata is not valid UTF-8: ", e.what()));
  }
  return out;
}

}  // namespace quantd::model
