// Tokenizer in llama2.c's tokenizer.bin format: int32 max_token_length, then for every token
// float32 score, int32 byte length, the bytes. Encoding reproduces llama2.c run.c exactly:
// optional BOS (id 1), a " " dummy prefix for non-empty text, one token per UTF-8 code point
// (byte fallback to id byte+3 when the code point is not in the vocabulary), then repeated
// merging of the adjacent pair with the highest score (leftmost on ties).
// Decode() concatenates pieces, turns <0xNN> pieces into bytes and drops the dummy-prefix space
// of the first piece after BOS (or at the start), like run.c's decode.
// Thread-safety: immutable after Load(); thread-safe.
#ifndef QUANTD_ENGINE_TOKENIZER_TOKENIZER_LLAMA2C_H_
#define QUANTD_ENGINE_TOKENIZER_TOKENIZER_LLAMA2C_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/tokenizer/tokenizer.h"

namespace quantd::model {

class Llama2cTokenizer : public Tokenizer {
 public:
  // NOT_FOUND if absent; INVALID_ARGUMENT (naming the file and token index) if truncated or
  // malformed, or if fewer than 259 tokens (ids 3..258 must be the byte fallbacks).
  static absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> Load(const std::string& path);
  // Parses tokenizer.bin bytes already in memory (fuzzing, tests); errors as Load() with
  // `label` as the file name.
  static absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> Parse(std::string_view data,
                                                                  const std::string& label);

  // Token ids for `text` (raw bytes, normally UTF-8). No EOS is appended. Invalid UTF-8 is
  // encoded through the byte fallback, never an error; the StatusOr is for future limits.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool bos) const override;

  // INVALID_ARGUMENT naming the first id outside [0, vocab_size()).
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const override;

  int vocab_size() const override { return static_cast<int>(pieces_.size()); }
  const std::string& Piece(int id) const { return pieces_[id]; }
  float Score(int id) const { return scores_[id]; }

 private:
  Llama2cTokenizer() = default;
  int Lookup(std::string_view s) const;  // -1 if absent

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string_view, int> index_;  // views into pieces_; first id wins
};

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_TOKENIZER_TOKENIZER_LLAMA2C_H_
