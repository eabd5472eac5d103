// The tokenizer interface text data goes through (calibration / evaluation text), and the rule
// that picks a model directory's tokenizer: tokenizer.json (Hugging Face, tokenizer_hf.h) if
// present, else llama2.c tokenizer.bin, else tok512.bin (tokenizer_llama2c.h).
// Thread-safety: implementations are immutable after loading and thread-safe.
#ifndef QUANTD_ENGINE_TOKENIZER_TOKENIZER_H_
#define QUANTD_ENGINE_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace quantd::model {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids for `text` (raw bytes, normally UTF-8). `bos`: add the model's sequence-start
  // tokens: BOS for llama2.c; for tokenizer.json whatever its post_processor puts around a
  // single sequence (TemplateProcessing, RobertaProcessing, BertProcessing; nothing for
  // ByteLevel or no post_processor). No EOS is appended unless that template says so.
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool bos) const = 0;

  // Text for `ids`. INVALID_ARGUMENT naming the first id outside the vocabulary.
  virtual absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const = 0;

  // One more than the largest id Encode can return.
  virtual int vocab_size() const = 0;
};

// Encodes text calibration/evaluation data: one document per "<|endoftext|>"-separated chunk
// (blank-line-separated when the text has no such marker; the marker itself is dropped), each
// stripped of surrounding ASCII whitespace, empty ones skipped, each encoded with bos = true;
// the ids of all documents concatenated. Errors are those of tok.Encode().
absl::StatusOr<std::vector<int32_t>> EncodeDocuments(const Tokenizer& tok, std::string_view text);

// Path of the tokenizer file LoadTokenizerForModel would use, or "" if the directory has none.
std::string FindTokenizerFile(const std::string& model_dir);

// Loads the model directory's tokenizer (see the file comment). NOT_FOUND if the directory has
// no tokenizer file; INVALID_ARGUMENT (naming the file and field) if it is malformed or uses
// unsupported features.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerForModel(const std::string& model_dir);

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_TOKENIZER_TOKENIZER_H_
