// Loading and validating tokenizer.json for HfTokenizer. Everything the file says is checked
// here once, so encoding never meets an unexpected shape.
#include <algorithm>

#include "common/file_util.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "engine/tokenizer/bytes_unicode.h"
#include "common/str_util.h"
#include "engine/tokenizer/tokenizer_hf.h"
#include "engine/tokenizer/unicode_props.h"

namespace quantd::model {
namespace {

using json = nlohmann::json;

constexpr int64_t kMaxId = 1 << 22;  // above every real vocabulary (Gemma: 256K)

// Error helper: every message starts with the file name and the field path.
class Ctx {
 public:
  explicit Ctx(std::string name) : name_(std::move(name)) {}
  absl::Status Bad(std::string_view field, std::string_view what) const {
    return absl::InvalidArgumentError(internal::Cat(name_, ": ", field, ": ", what));
  }
  absl::Status Unsupported(std::string_view field, std::string_view value,
                           std::string_view supported) const {
    return Bad(field, internal::Cat("\"", value, "\" is not supported (supported: ", supported,
                                    ")"));
  }

 private:
  std::string name_;
};

// True if `s` is exactly one well-formed UTF-8 character.
bool IsOneChar(const std::string& s) {
  if (s.empty()) return false;
  size_t len;
  return DecodeUtf8(s, 0, &len) != kInvalidUtf8 && len == s.size();
}

std::string Short(const json& j) {
  std::string s = j.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

// Reads optional string field `key` of object `o` (absent or null keeps *out).
absl::Status OptString(const Ctx& c, const json& o, const std::string& path, const char* key,
                       std::string* out, bool* present = nullptr) {
  if (present != nullptr) *present = false;
  auto it = o.find(key);
  if (it == o.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_string()) return c.Bad(path + "." + key, "must be a string, got " + Short(*it));
  *out = it->get<std::string>();
  if (present != nullptr) *present = true;
  return absl::OkStatus();
}

absl::Status ReqString(const Ctx& c, const json& o, const std::string& path, const char* key,
                       std::string* out) {
  bool present;
  QUANTD_RETURN_IF_ERROR(OptString(c, o, path, key, out, &present));
  if (!present) return c.Bad(path + "." + key, "missing");
  return absl::OkStatus();
}

absl::Status OptBool(const Ctx& c, const json& o, const std::string& path, const char* key,
                     bool* out) {
  auto it = o.find(key);
  if (it == o.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_boolean()) return c.Bad(path + "." + key, "must be a boolean, got " + Short(*it));
  *out = it->get<bool>();
  return absl::OkStatus();
}

absl::Status OptInt(const Ctx& c, const json& o, const std::string& path, const char* key,
                    int64_t lo, int64_t hi, int64_t* out) {
  auto it = o.find(key);
  if (it == o.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number_integer() ||
      (it->is_number_unsigned() ? it->get<uint64_t>() > static_cast<uint64_t>(hi)
                                : it->get<int64_t>() < lo || it->get<int64_t>() > hi)) {
    return c.Bad(path + "." + key,
                 internal::Cat("must be an integer in [", lo, ", ", hi, "], got ", Short(*it)));
  }
  *out = it->get<int64_t>();
  return absl::OkStatus();
}

// The "type" of a component object.
absl::StatusOr<std::string> TypeOf(const Ctx& c, const json& o, const std::string& path) {
  if (!o.is_object()) return c.Bad(path, "must be an object or null, got " + Short(o));
  std::string t;
  QUANTD_RETURN_IF_ERROR(ReqString(c, o, path, "type", &t));
  return t;
}

// {"String": s} -> s; {"Regex": r} -> r with *is_regex.
absl::Status ReadPattern(const Ctx& c, const json& o, const std::string& path,
                         std::string* out, bool* is_regex) {
  auto it = o.find("pattern");
  if (it == o.end() || !it->is_object() || it->size() != 1) {
    return c.Bad(path + ".pattern", "must be {\"String\": ...} or {\"Regex\": ...}");
  }
  const std::string p = path + ".pattern";
  if (it->contains("String")) {
    *is_regex = false;
    return ReqString(c, *it, p, "String", out);
  }
  if (it->contains("Regex")) {
    *is_regex = true;
    return ReqString(c, *it, p, "Regex", out);
  }
  return c.Bad(p, "must be {\"String\": ...} or {\"Regex\": ...}, got " + Short(*it));
}

// Calls fn(element, element_path) for a component or each member of a Sequence.
template <typename Fn>
absl::Status ForEachComponent(const Ctx& c, const json& o, const std::string& path,
                              const char* seq_key, Fn fn, int depth = 0) {
  if (o.is_null()) return absl::OkStatus();
  QUANTD_ASSIGN_OR_RETURN(std::string type, TypeOf(c, o, path));
  if (type != "Sequence") return fn(o, path, type);
  if (depth > 8) return c.Bad(path, "Sequence nested too deeply");
  auto it = o.find(seq_key);
  if (it == o.end() || !it->is_array()) return c.Bad(path + "." + seq_key, "missing or not an array");
  for (size_t i = 0; i < it->size(); ++i) {
    QUANTD_RETURN_IF_ERROR(ForEachComponent(c, (*it)[i], internal::Cat(path, ".", seq_key, "[", i, "]"),
                                            seq_key, fn, depth + 1));
  }
  return absl::OkStatus();
}

absl::Status ReadMetaspace(const Ctx& c, const json& o, const std::string& path,
                           std::string* replacement, bool* prepend_first, bool* prepend_never) {
  *replacement = "\xE2\x96\x81";  // U+2581
  QUANTD_RETURN_IF_ERROR(OptString(c, o, path, "replacement", replacement));
  if (!IsOneChar(*replacement)) {
    return c.Bad(path + ".replacement", "must be one character");
  }
  bool add_prefix_space = true;
  QUANTD_RETURN_IF_ERROR(OptBool(c, o, path, "add_prefix_space", &add_prefix_space));
  std::string scheme = add_prefix_space ? "always" : "never";
  QUANTD_RETURN_IF_ERROR(OptString(c, o, path, "prepend_scheme", &scheme));
  if (scheme != "always" && scheme != "first" && scheme != "never") {
    return c.Unsupported(path + ".prepend_scheme", scheme, "always, first, never");
  }
  *prepend_first = scheme == "first";
  *prepend_never = scheme == "never";
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<HfTokenizer>> HfTokenizer::Load(const std::string& path) {
  QUANTD_ASSIGN_OR_RETURN(std::string text, ReadFile(path, uint64_t{1} << 28));
  return Parse(text, path);
}

absl::StatusOr<std::unique_ptr<HfTokenizer>> HfTokenizer::Parse(std::string_view text,
                                                                const std::string& name) {
  const Ctx c(name);
  const json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return c.Bad("(file)", "not valid JSON");
  if (!j.is_object()) return c.Bad("(file)", "top level is not a JSON object");
  std::unique_ptr<HfTokenizer> t(new HfTokenizer());

  // truncation and padding are ignored: whole documents are encoded, never padded.
  // --- model ---
  auto mit = j.find("model");
  if (mit == j.end() || !mit->is_object()) return c.Bad("model", "missing or not an object");
  const json& m = *mit;
  std::string type;
  QUANTD_RETURN_IF_ERROR(ReqString(c, m, "model", "type", &type));
  if (type != "BPE") return c.Unsupported("model.type", type, "BPE");
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    std::string v;
    QUANTD_RETURN_IF_ERROR(OptString(c, m, "model", k, &v));
    if (!v.empty()) return c.Unsupported(std::string("model.") + k, v, "null or empty");
  }
  if (auto it = m.find("dropout"); it != m.end() && !it->is_null()) {
    if (!it->is_number() || it->get<double>() != 0.0) {
      return c.Bad("model.dropout", "BPE dropout " + Short(*it) + " is not supported (null or 0)");
    }
  }
  QUANTD_RETURN_IF_ERROR(OptBool(c, m, "model", "byte_fallback", &t->byte_fallback_));
  QUANTD_RETURN_IF_ERROR(OptBool(c, m, "model", "fuse_unk", &t->fuse_unk_));
  QUANTD_RETURN_IF_ERROR(OptBool(c, m, "model", "ignore_merges", &t->ignore_merges_));

  auto vit = m.find("vocab");
  if (vit == m.end() || !vit->is_object()) return c.Bad("model.vocab", "missing or not an object");
  int64_t max_id = -1;
  for (auto it = vit->begin(); it != vit->end(); ++it) {
    const json& v = it.value();
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= kMaxId) {
      return c.Bad("model.vocab", internal::Cat("id of \"", it.key(), "\" must be an integer in [0, ",
                                               kMaxId, "), got ", Short(v)));
    }
    t->vocab_[it.key()] = static_cast<int32_t>(v.get<int64_t>());
    max_id = std::max(max_id, v.get<int64_t>());
  }
  if (t->vocab_.empty()) return c.Bad("model.vocab", "is empty");

  // --- added_tokens ---
  if (auto at = j.find("added_tokens"); at != j.end() && !at->is_null()) {
    if (!at->is_array()) return c.Bad("added_tokens", "must be an array");
    for (size_t i = 0; i < at->size(); ++i) {
      const json& e = (*at)[i];
      const std::string p = internal::Cat("added_tokens[", i, "]");
      if (!e.is_object()) return c.Bad(p, "must be an object");
      AddedToken a;
      int64_t id = -1;
      QUANTD_RETURN_IF_ERROR(OptInt(c, e, p, "id", 0, kMaxId - 1, &id));
      if (id < 0) return c.Bad(p + ".id", "missing");
      a.id = static_cast<int32_t>(id);
      QUANTD_RETURN_IF_ERROR(ReqString(c, e, p, "content", &a.content));
      if (a.content.empty()) return c.Bad(p + ".content", "is empty");
      QUANTD_RETURN_IF_ERROR(OptBool(c, e, p, "special", &a.special));
      QUANTD_RETURN_IF_ERROR(OptBool(c, e, p, "single_word", &a.single_word));
      QUANTD_RETURN_IF_ERROR(OptBool(c, e, p, "lstrip", &a.lstrip));
      QUANTD_RETURN_IF_ERROR(OptBool(c, e, p, "rstrip", &a.rstrip));
      a.normalized = !a.special;  // tokenizers' default
      QUANTD_RETURN_IF_ERROR(OptBool(c, e, p, "normalized", &a.normalized));
      max_id = std::max<int64_t>(max_id, a.id);
      t->added_.push_back(std::move(a));
    }
  }
  const int64_t entries = static_cast<int64_t>(t->vocab_.size() + t->added_.size());
  if (max_id >= entries + 65536) {
    return c.Bad("model.vocab", internal::Cat("largest id ", max_id, " is far beyond the ", entries,
                                             " tokens (ids must be dense)"));
  }
  t->id_to_token_.assign(max_id + 1, std::string());
  t->has_token_.assign(max_id + 1, false);
  for (const auto& [tok, id] : t->vocab_) {
    t->id_to_token_[id] = tok;
    t->has_token_[id] = true;
  }
  for (const AddedToken& a : t->added_) {
    t->id_to_token_[a.id] = a.content;
    t->has_token_[a.id] = true;
  }

  // unk and byte fallback ids.
  std::string unk;
  QUANTD_RETURN_IF_ERROR(OptString(c, m, "model", "unk_token", &unk));
  if (!unk.empty()) {
    auto it = t->vocab_.find(unk);
    if (it == t->vocab_.end()) {
      return c.Bad("model.unk_token", "\"" + unk + "\" is not in model.vocab");
    }
    t->unk_id_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = t->vocab_.find(ByteTokenName(static_cast<unsigned char>(b)));
    t->byte_ids_[b] = it == t->vocab_.end() ? -1 : it->second;
  }

  // --- merges: "a b" strings or [a, b] pairs; rank = position, later duplicates win ---
  auto mg = m.find("merges");
  if (mg == m.end() || !mg->is_array()) return c.Bad("model.merges", "missing or not an array");
  for (size_t i = 0; i < mg->size(); ++i) {
    const json& e = (*mg)[i];
    std::string a, b;
    if (e.is_string()) {
      const std::string s = e.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        return c.Bad(internal::Cat("model.merges[", i, "]"), "\"" + s + "\" is not \"left right\"");
      }
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      return c.Bad(internal::Cat("model.merges[", i, "]"), "must be \"a b\" or [a, b], got " + Short(e));
    }
    auto ia = t->vocab_.find(a), ib = t->vocab_.find(b), im = t->vocab_.find(a + b);
    if (ia == t->vocab_.end() || ib == t->vocab_.end() || im == t->vocab_.end()) {
      return c.Bad(internal::Cat("model.merges[", i, "]"),
                   "\"" + a + "\" + \"" + b + "\": a part or the merged token is not in model.vocab");
    }
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(ia->second)) << 32) |
                         static_cast<uint32_t>(ib->second);
    t->merges_[key] = {static_cast<int32_t>(i), im->second};
  }

  // --- normalizer ---
  if (auto it = j.find("normalizer"); it != j.end()) {
    QUANTD_RETURN_IF_ERROR(ForEachComponent(
        c, *it, "normalizer", "normalizers",
        [&](const json& o, const std::string& p, const std::string& type) -> absl::Status {
          NormStep n;
          if (type == "Prepend") {
            n.prepend = true;
            QUANTD_RETURN_IF_ERROR(ReqString(c, o, p, "prepend", &n.a));
          } else if (type == "Replace") {
            bool is_regex;
            QUANTD_RETURN_IF_ERROR(ReadPattern(c, o, p, &n.a, &is_regex));
            if (is_regex) return c.Unsupported(p + ".pattern.Regex", n.a, "String patterns");
            QUANTD_RETURN_IF_ERROR(ReqString(c, o, p, "content", &n.b));
          } else {
            return c.Unsupported(p + ".type", type, "Prepend, Replace, Sequence");
          }
          t->normalizer_.push_back(std::move(n));
          return absl::OkStatus();
        }));
  }

  // --- pre_tokenizer ---
  if (auto it = j.find("pre_tokenizer"); it != j.end()) {
    QUANTD_RETURN_IF_ERROR(ForEachComponent(
        c, *it, "pre_tokenizer", "pretokenizers",
        [&](const json& o, const std::string& p, const std::string& type) -> absl::Status {
          PreStep s;
          if (type == "ByteLevel") {
            s.type = PreStep::kByteLevel;
            QUANTD_RETURN_IF_ERROR(OptBool(c, o, p, "add_prefix_space", &s.add_prefix_space));
            QUANTD_RETURN_IF_ERROR(OptBool(c, o, p, "use_regex", &s.use_regex));
          } else if (type == "Split") {
            s.type = PreStep::kSplit;
            bool is_regex;
            std::string pat;
            QUANTD_RETURN_IF_ERROR(ReadPattern(c, o, p, &pat, &is_regex));
            if (!is_regex) {
              s.pattern = SplitPattern::kLiteral;
              s.literal = pat;
            } else if (!ParseSplitRegex(pat, &s.pattern)) {
              return c.Unsupported(p + ".pattern.Regex", pat,
                                   "the GPT-2, Llama 3 and Qwen2 patterns, \\p{N}, \\p{N}+, \\p{N}{1,3}");
            }
            std::string behavior;
            QUANTD_RETURN_IF_ERROR(ReqString(c, o, p, "behavior", &behavior));
            if (behavior == "Isolated") {
              s.behavior = SplitBehavior::kIsolated;
            } else if (behavior == "Removed") {
              s.behavior = SplitBehavior::kRemoved;
            } else if (behavior == "MergedWithPrevious") {
              s.behavior = SplitBehavior::kMergedWithPrevious;
            } else if (behavior == "MergedWithNext") {
              s.behavior = SplitBehavior::kMergedWithNext;
            } else if (behavior == "Contiguous") {
              s.behavior = SplitBehavior::kContiguous;
            } else {
              return c.Unsupported(p + ".behavior", behavior,
                                   "Isolated, Removed, MergedWithPrevious, MergedWithNext, Contiguous");
            }
            QUANTD_RETURN_IF_ERROR(OptBool(c, o, p, "invert", &s.invert));
          } else if (type == "Digits") {
            s.type = PreStep::kDigits;
            QUANTD_RETURN_IF_ERROR(OptBool(c, o, p, "individual_digits", &s.individual_digits));
          } else if (type == "Metaspace") {
            s.type = PreStep::kMetaspace;
            bool first, never;
            QUANTD_RETURN_IF_ERROR(ReadMetaspace(c, o, p, &s.replacement, &first, &never));
            s.prepend = first ? PreStep::kFirst : never ? PreStep::kNever : PreStep::kAlways;
            QUANTD_RETURN_IF_ERROR(OptBool(c, o, p, "split", &s.split));
          } else {
            return c.Unsupported(p + ".type", type, "ByteLevel, Split, Digits, Metaspace, Sequence");
          }
          t->pre_.push_back(std::move(s));
          return absl::OkStatus();
        }));
  }

  // --- post_processor: the special tokens around a single sequence ---
  const int vocab = t->vocab_size();
  auto check_id = [&](const std::string& p, const json& v, int32_t* out) -> absl::Status {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= vocab ||
        !t->has_token_[v.get<int64_t>()]) {
      return c.Bad(p, "must be an id in the vocabulary, got " + Short(v));
    }
    *out = static_cast<int32_t>(v.get<int64_t>());
    return absl::OkStatus();
  };
  if (auto it = j.find("post_processor"); it != j.end()) {
    QUANTD_RETURN_IF_ERROR(ForEachComponent(
        c, *it, "post_processor", "processors",
        [&](const json& o, const std::string& p, const std::string& type) -> absl::Status {
          if (type == "ByteLevel") return absl::OkStatus();  // offsets only
          if (type == "RobertaProcessing" || type == "BertProcessing") {
            int32_t cls, sep;
            for (const char* k : {"cls", "sep"}) {
              auto f = o.find(k);
              if (f == o.end() || !f->is_array() || f->size() != 2) {
                return c.Bad(p + "." + k, "must be [token, id]");
              }
              QUANTD_RETURN_IF_ERROR(check_id(p + "." + k + "[1]", (*f)[1], k[0] == 'c' ? &cls : &sep));
            }
            t->prefix_ids_.push_back(cls);
            t->suffix_ids_.insert(t->suffix_ids_.begin(), sep);
            return absl::OkStatus();
          }
          if (type != "TemplateProcessing") {
            return c.Unsupported(p + ".type", type,
                                 "TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence");
          }
          auto single = o.find("single");
          auto specials = o.find("special_tokens");
          if (single == o.end() || !single->is_array()) return c.Bad(p + ".single", "missing or not an array");
          if (specials == o.end() || !specials->is_object()) {
            return c.Bad(p + ".special_tokens", "missing or not an object");
          }
          std::vector<int32_t> before, after;
          bool seen_a = false;
          for (size_t i = 0; i < single->size(); ++i) {
            const json& e = (*single)[i];
            const std::string ep = internal::Cat(p, ".single[", i, "]");
            if (e.is_object() && e.contains("Sequence")) {
              const json& s = e["Sequence"];
              if (!s.is_object() || s.value("id", json()) != "A" || seen_a) {
                return c.Bad(ep, "a single-sequence template must contain sequence A once");
              }
              seen_a = true;
              continue;
            }
            if (!e.is_object() || !e.contains("SpecialToken") || !e["SpecialToken"].is_object()) {
              return c.Bad(ep, "must be {\"SpecialToken\": ...} or {\"Sequence\": ...}");
            }
            std::string sid;
            QUANTD_RETURN_IF_ERROR(ReqString(c, e["SpecialToken"], ep + ".SpecialToken", "id", &sid));
            auto st = specials->find(sid);
            if (st == specials->end() || !st->is_object() || !st->contains("ids") ||
                !(*st)["ids"].is_array()) {
              return c.Bad(p + ".special_tokens", "\"" + sid + "\" missing or has no ids array");
            }
            for (const json& v : (*st)["ids"]) {
              int32_t id;
              QUANTD_RETURN_IF_ERROR(check_id(p + ".special_tokens." + sid + ".ids", v, &id));
              (seen_a ? after : before).push_back(id);
            }
          }
          if (!seen_a) return c.Bad(p + ".single", "has no sequence A");
          t->prefix_ids_.insert(t->prefix_ids_.end(), before.begin(), before.end());
          t->suffix_ids_.insert(t->suffix_ids_.begin(), after.begin(), after.end());
          return absl::OkStatus();
        }));
  }

  // --- decoder ---
  if (auto it = j.find("decoder"); it != j.end() && !it->is_null()) {
    t->has_decoder_ = true;
    QUANTD_RETURN_IF_ERROR(ForEachComponent(
        c, *it, "decoder", "decoders",
        [&](const json& o, const std::string& p, const std::string& type) -> absl::Status {
          DecodeStep d{};
          if (type == "ByteLevel") {
            d.type = DecodeStep::kByteLevel;
          } else if (type == "Metaspace") {
            d.type = DecodeStep::kMetaspace;
            bool first, never;
            QUANTD_RETURN_IF_ERROR(ReadMetaspace(c, o, p, &d.a, &first, &never));
            d.metaspace_prepend = !never;
          } else if (type == "Replace") {
            d.type = DecodeStep::kReplace;
            bool is_regex;
            QUANTD_RETURN_IF_ERROR(ReadPattern(c, o, p, &d.a, &is_regex));
            if (is_regex) return c.Unsupported(p + ".pattern.Regex", d.a, "String patterns");
            QUANTD_RETURN_IF_ERROR(ReqString(c, o, p, "content", &d.b));
          } else if (type == "ByteFallback") {
            d.type = DecodeStep::kByteFallback;
          } else if (type == "Fuse") {
            d.type = DecodeStep::kFuse;
          } else if (type == "Strip") {
            d.type = DecodeStep::kStrip;
            QUANTD_RETURN_IF_ERROR(ReqString(c, o, p, "content", &d.a));
            if (!IsOneChar(d.a)) {
              return c.Bad(p + ".content", "must be one character");
            }
            int64_t start = 0, stop = 0;
            QUANTD_RETURN_IF_ERROR(OptInt(c, o, p, "start", 0, 1 << 20, &start));
            QUANTD_RETURN_IF_ERROR(OptInt(c, o, p, "stop", 0, 1 << 20, &stop));
            d.start = static_cast<int>(start);
            d.stop = static_cast<int>(stop);
          } else {
            return c.Unsupported(p + ".type", type,
                                 "ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence");
          }
          t->decoder_.push_back(std::move(d));
          return absl::OkStatus();
        }));
  }

  // Added tokens: normalized ones match the normalized text, so normalize their content too.
  for (size_t k = 0; k < t->added_.size(); ++k) {
    AddedToken& a = t->added_[k];
    if (a.normalized) a.normalized_content = t->Normalize(a.content);
    const std::string& key = a.normalized ? a.normalized_content : a.content;
    if (!key.empty()) t->added_by_byte_[a.normalized][static_cast<unsigned char>(key[0])].push_back(k);
  }
  return t;
}

}  // namespace quantd::model
