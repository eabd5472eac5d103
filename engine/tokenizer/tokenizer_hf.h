// Hugging Face tokenizer.json tokenizers with model.type "BPE", encoding exactly like the
// `tokenizers` library for the two families LLMs use (docs/formats/tokenizers.md):
//  - byte-level BPE (GPT-2, SmolLM2, Llama 3, Qwen2): ByteLevel pre-tokenizer, optionally after
//    Split (known regexes) / Digits, bytes mapped to printable code points, merges by rank;
//  - SentencePiece-style BPE (Llama 2, Mistral): Prepend/Replace normalizer or Metaspace
//    pre-tokenizer, byte_fallback to <0xNN> tokens, unk.
// added_tokens are matched before normalization (normalized: false) or after it (true).
// Thread-safety: immutable after Load()/Parse(); thread-safe.
#ifndef QUANTD_ENGINE_TOKENIZER_TOKENIZER_HF_H_
#define QUANTD_ENGINE_TOKENIZER_TOKENIZER_HF_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/tokenizer/pretokenize.h"
#include "engine/tokenizer/tokenizer.h"

namespace quantd::model {

class HfTokenizer : public Tokenizer {
 public:
  // Reads and parses a tokenizer.json. NOT_FOUND if absent; otherwise as Parse().
  static absl::StatusOr<std::unique_ptr<HfTokenizer>> Load(const std::string& path);

  // Parses tokenizer.json text; `name` prefixes error messages. INVALID_ARGUMENT naming the
  // field for malformed JSON, missing or mistyped fields, merges or added tokens that refer to
  // tokens outside the vocabulary, and for every unsupported component (model types other than
  // BPE, normalizers other than Prepend/Replace(String)/Sequence, pre-tokenizers other than
  // ByteLevel/Split/Digits/Metaspace/Sequence, Split regexes other than the known ones,
  // continuing_subword_prefix, end_of_word_suffix, dropout, other post-processors).
  static absl::StatusOr<std::unique_ptr<HfTokenizer>> Parse(std::string_view json,
                                                            const std::string& name);

  // Like tokenizers' encode(text, add_special_tokens=bos).ids. Text that is not valid UTF-8
  // is accepted: each invalid byte is one character (byte-level models map it like any byte;
  // SentencePiece-style models send it to the byte fallback / unk).
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool bos) const override;

  // Like tokenizers' decode(ids, skip_special_tokens=False), through the tokenizer.json
  // decoder (ByteLevel, Metaspace, or a Sequence of Replace/ByteFallback/Fuse/Strip); without
  // a decoder the tokens are joined with spaces.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const override;

  int vocab_size() const override { return static_cast<int>(id_to_token_.size()); }

  struct AddedToken {
    std::string content;
    std::string normalized_content;  // content through the normalizer (normalized tokens)
    int32_t id = 0;
    bool special = false, single_word = false, lstrip = false, rstrip = false,
         normalized = false;
  };
  struct NormStep {  // Prepend(a) or Replace(a -> b)
    bool prepend = false;
    std::string a, b;
  };
  struct PreStep {
    enum Type { kByteLevel, kSplit, kDigits, kMetaspace } type = kByteLevel;
    bool add_prefix_space = false, use_regex = true;           // ByteLevel
    SplitPattern pattern = SplitPattern::kLiteral;             // Split
    std::string literal;                                       // Split String pattern
    SplitBehavior behavior = SplitBehavior::kIsolated;         // Split
    bool invert = false;                                       // Split
    bool individual_digits = false;                            // Digits
    std::string replacement;                                   // Metaspace
    enum Prepend { kAlways, kFirst, kNever } prepend = kAlways;  // Metaspace
    bool split = true;                                         // Metaspace
  };
  struct DecodeStep {
    enum Type { kByteLevel, kMetaspace, kReplace, kByteFallback, kFuse, kStrip } type;
    std::string a, b;  // Replace a -> b; Metaspace replacement in a; Strip content in a
    int start = 0, stop = 0;
    bool metaspace_prepend = true;
  };

 private:
  HfTokenizer() = default;
  struct Piece {
    std::string text;
    bool at_start;  // begins at offset 0 of the original text (Metaspace prepend_scheme first)
  };
  // Appends the BPE ids of one pre-token.
  void Bpe(std::string_view word, std::vector<int32_t>* out) const;
  // Normalizes, pre-tokenizes and BPE-encodes a stretch of text with no added tokens in it.
  void EncodePlain(std::string_view text, bool at_start, std::vector<int32_t>* out) const;
  // Splits `text` at the added tokens with normalized == `normalized`: pieces with id -1 are
  // plain text (byte ranges), others are added tokens.
  struct Segment {
    size_t begin, end;
    int32_t id;
  };
  std::vector<Segment> SplitAdded(std::string_view text, bool normalized) const;
  std::string Normalize(std::string_view text) const;
  std::vector<Piece> PreTokenize(std::string text, bool at_start) const;

  // Model.
  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_token_;  // id_to_token_[id] is defined
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (left,right) -> (rank,id)
  int32_t unk_id_ = -1;
  bool byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false;
  std::array<int32_t, 256> byte_ids_{};  // <0xNN> token ids, -1 if absent

  std::vector<AddedToken> added_;
  // Indices into added_ by first byte of the text they match, for [raw, normalized] text.
  std::array<std::vector<int>, 256> added_by_byte_[2];
  std::vector<NormStep> normalizer_;
  std::vector<PreStep> pre_;
  std::vector<DecodeStep> decoder_;
  bool has_decoder_ = false;
  std::vector<int32_t> prefix_ids_, suffix_ids_;  // post_processor around a single sequence
};

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_TOKENIZER_TOKENIZER_HF_H_
