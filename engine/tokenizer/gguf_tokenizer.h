// Writes Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json) from the
// tokenizer.ggml.* metadata of a GGUF file (docs/formats/gguf.md, "Tokenizer"). Only writes:
// encoding text is tokenizer_hf's job.
// Thread-safety: pure functions.
#ifndef QUANTD_ENGINE_TOKENIZER_GGUF_TOKENIZER_H_
#define QUANTD_ENGINE_TOKENIZER_GGUF_TOKENIZER_H_

#include <string>

#include "absl/status/statusor.h"
#include "engine/format/gguf.h"

namespace quantd::model {

struct HfTokenizerFiles {
  std::string tokenizer_json;
  std::string tokenizer_config_json;
};

// tokenizer.ggml.model "gpt2" becomes a byte-level BPE (vocab from tokenizer.ggml.tokens,
// merges from tokenizer.ggml.merges, pre-tokenizer chosen by tokenizer.ggml.pre); "llama"
// becomes a SentencePiece-style BPE with byte fallback whose merges are derived from
// tokenizer.ggml.scores. Token types 2/3 (unknown/control) become special added tokens, 4
// (user-defined) non-special ones. INVALID_ARGUMENT naming the key for a missing or malformed
// field, an unknown tokenizer model or pre-tokenizer, ids out of range, or non-UTF-8 tokens.
absl::StatusOr<HfTokenizerFiles> GgufTokenizerToHf(const GgufFile& f);

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_TOKENIZER_GGUF_TOKENIZER_H_
