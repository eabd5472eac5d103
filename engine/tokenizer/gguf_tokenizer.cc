#include "engine/tokenizer/gguf_tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/tokenizer_llama2c.h"
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

// The pre-tokenizer llama.cpp applies for tokenizer.ggml.pre `name`, in tokenizer.json form;
// null for names outside kSupportedPre.
json PreTokenizerForName(const std::string& name) {
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
  return nullptr;
}

absl::StatusOr<json> PreTokenizer(const GgufFile& f) {
  auto pre = f.GetString("tokenizer.ggml.pre");
  if (!pre.ok() && pre.status().code() != absl::StatusCode::kNotFound) return pre.status();
  const std::string name = pre.ok() ? *pre : "";
  json j = PreTokenizerForName(name);
  if (!j.is_null()) return j;
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

namespace {

constexpr int32_t kNormal = 1, kUnused = 5, kByte = 6;

absl::Status NotExpressible(const std::string& path, std::string_view why) {
  return absl::FailedPreconditionError(
      internal::Cat(path, ": tokenizer cannot be written to GGUF: ", why));
}

// Tokens padded to vocab_size with [PAD<id>] (type UNUSED).
absl::Status PadTokens(const std::string& path, int64_t vocab_size, std::vector<std::string>* tokens,
                       std::vector<int32_t>* types) {
  if (vocab_size > 0 && static_cast<int64_t>(tokens->size()) > vocab_size) {
    return NotExpressible(path, internal::Cat(tokens->size(), " tokens, the model has ",
                                              vocab_size, " embedding rows"));
  }
  for (int64_t i = static_cast<int64_t>(tokens->size()); i < vocab_size; ++i) {
    tokens->push_back(internal::Cat("[PAD", i, "]"));
    types->push_back(kUnused);
  }
  return absl::OkStatus();
}

absl::Status WriteHfJson(const std::string& path, const GgufTokenizerIds& ids, GgufWriter* w) {
  QUANTD_ASSIGN_OR_RETURN(std::string text, ReadFile(path, uint64_t{1} << 30));
  json root = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!root.is_object() || !root.contains("model") || !root["model"].is_object()) {
    return absl::InvalidArgumentError(internal::Cat(path, ": not a tokenizer.json object"));
  }
  const json& model = root["model"];
  const bool byte_level = root.contains("decoder") && root["decoder"].is_object() &&
                          root["decoder"].value("type", "") == "ByteLevel";
  if (model.value("type", "") != "BPE" || !byte_level || !model.contains("vocab") ||
      !model["vocab"].is_object()) {
    return NotExpressible(path, "only byte-level BPE tokenizer.json (GGUF \"gpt2\") is supported");
  }
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  auto put = [&](const std::string& tok, int64_t id, int32_t type) -> absl::Status {
    if (id < 0 || id > (int64_t{1} << 24)) {
      return absl::InvalidArgumentError(internal::Cat(path, ": token id ", id, " out of range"));
    }
    if (static_cast<int64_t>(tokens.size()) <= id) {
      tokens.resize(id + 1);
      types.resize(id + 1, 0);
    }
    tokens[id] = tok;
    types[id] = type;
    return absl::OkStatus();
  };
  for (const auto& [tok, id] : model["vocab"].items()) {
    if (!id.is_number_integer()) return absl::InvalidArgumentError(internal::Cat(path, ": vocab id of ", tok));
    QUANTD_RETURN_IF_ERROR(put(tok, id.get<int64_t>(), kNormal));
  }
  if (root.contains("added_tokens") && root["added_tokens"].is_array()) {
    for (const json& a : root["added_tokens"]) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
          !a.contains("content") || !a["content"].is_string()) {
        return absl::InvalidArgumentError(internal::Cat(path, ": malformed added_tokens entry"));
      }
      QUANTD_RETURN_IF_ERROR(put(a["content"].get<std::string>(), a["id"].get<int64_t>(),
                                 a.value("special", false) ? static_cast<int32_t>(kControl)
                                                           : static_cast<int32_t>(kUserDefined)));
    }
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (types[i] == 0) {  // a hole in the ids
      tokens[i] = internal::Cat("[PAD", i, "]");
      types[i] = kUnused;
    }
  }
  QUANTD_RETURN_IF_ERROR(PadTokens(path, ids.vocab_size, &tokens, &types));
  std::vector<std::string> merges;
  if (model.contains("merges") && model["merges"].is_array()) {
    for (const json& m : model["merges"]) {
      if (m.is_string()) {
        merges.push_back(m.get<std::string>());
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
      } else {
        return absl::InvalidArgumentError(internal::Cat(path, ": malformed merge entry"));
      }
    }
  }
  std::string pre = "default";
  const json& pt = root.contains("pre_tokenizer") ? root["pre_tokenizer"] : json(nullptr);
  for (const char* name : {"gpt2", "smollm", "llama-bpe"}) {
    if (PreTokenizerForName(name) == pt) {
      pre = name;
      break;
    }
  }
  w->SetString("tokenizer.ggml.model", "gpt2");
  w->SetString("tokenizer.ggml.pre", pre);
  w->SetStringArray("tokenizer.ggml.tokens", tokens);
  w->SetI32Array("tokenizer.ggml.token_type", types);
  w->SetStringArray("tokenizer.ggml.merges", merges);
  // add_bos_token from tokenizer_config.json beside it (absent: false, as for GPT-2 BPE).
  bool add_bos = false;
  const std::string cfg_path = JoinPath(std::filesystem::path(path).parent_path().string(),
                                        "tokenizer_config.json");
  if (auto cfg_text = ReadFile(cfg_path, uint64_t{64} << 20); cfg_text.ok()) {
    json cfg = json::parse(*cfg_text, nullptr, false);
    if (cfg.is_object() && cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) {
      add_bos = cfg["add_bos_token"].get<bool>();
    }
  }
  w->SetBool("tokenizer.ggml.add_bos_token", add_bos);
  return absl::OkStatus();
}

absl::Status WriteLlama2c(const std::string& path, const GgufTokenizerIds& ids, GgufWriter* w) {
  QUANTD_ASSIGN_OR_RETURN(auto tok, Llama2cTokenizer::Load(path));
  const int n = tok->vocab_size();
  std::vector<std::string> tokens(n);
  std::vector<float> scores(n);
  std::vector<int32_t> types(n, kNormal);
  for (int i = 0; i < n; ++i) {
    std::string p = tok->Piece(i);
    scores[i] = tok->Score(i);
    if (i == 0) {
      types[i] = static_cast<int32_t>(kUnknown);
    } else if (i == 1 || i == 2) {
      // llama2.c's export wrote BOS/EOS as "\n<s>\n" and "\n</s>\n".
      p = i == 1 ? "<s>" : "</s>";
      types[i] = static_cast<int32_t>(kControl);
    } else if (p.size() == 6 && p.rfind("<0x", 0) == 0 && p[5] == '>') {
      types[i] = kByte;
    } else {
      // llama2.c's export replaced SentencePiece's U+2581 by ' '; GGUF keeps U+2581.
      std::string q;
      for (char c : p) q += c == ' ' ? std::string("\xe2\x96\x81") : std::string(1, c);
      p = std::move(q);
    }
    tokens[i] = std::move(p);
  }
  QUANTD_RETURN_IF_ERROR(PadTokens(path, ids.vocab_size, &tokens, &types));
  scores.resize(tokens.size(), -1e9f);
  w->SetString("tokenizer.ggml.model", "llama");
  w->SetStringArray("tokenizer.ggml.tokens", tokens);
  w->SetF32Array("tokenizer.ggml.scores", scores);
  w->SetI32Array("tokenizer.ggml.token_type", types);
  w->SetU32("tokenizer.ggml.unknown_token_id", 0);
  w->SetBool("tokenizer.ggml.add_bos_token", true);
  w->SetBool("tokenizer.ggml.add_space_prefix", true);
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteGgufTokenizer(const std::string& model_dir, const GgufTokenizerIds& ids,
                                GgufWriter* w) {
  const std::string path = FindTokenizerFile(model_dir);
  if (path.empty()) {
    return absl::NotFoundError(internal::Cat(
        model_dir, " has no tokenizer.json, tokenizer.bin or tok512.bin to write into the GGUF"));
  }
  if (std::filesystem::path(path).filename() == "tokenizer.json") {
    QUANTD_RETURN_IF_ERROR(WriteHfJson(path, ids, w));
  } else {
    QUANTD_RETURN_IF_ERROR(WriteLlama2c(path, ids, w));
  }
  if (ids.bos >= 0) w->SetU32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(ids.bos));
  if (ids.eos >= 0) w->SetU32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(ids.eos));
  return absl::OkStatus();
}

}  // namespace quantd::model
