// Writes Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json) from the
// tokenizer.ggml.* metadata of a GGUF file (docs/formats/gguf.md, "Tokenizer"). Only writes:
// encoding text is tokenizer_hf's job.
// Thread-safety: pure functions.
#ifndef QUANTD_ENGINE_TOKENIZER_GGUF_TOKENIZER_H_
#define QUANTD_ENGINE_TOKENIZER_GGUF_TOKENIZER_H_

#include <string>

#include "absl/status/statusor.h"
#include "engine/format/gguf.h"
#include "engine/format/gguf_writer.h"

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

struct GgufTokenizerIds {
  int64_t bos = -1;  // -1: not set
  int64_t eos = -1;
  int64_t vocab_size = 0;  // the model's embedding rows: the token list is padded to it
};

// The inverse, for exports: sets tokenizer.ggml.* on `w` from the tokenizer of `model_dir`
// (tokenizer.FindTokenizerFile's choice):
//   tokenizer.json with a byte-level BPE model -> "gpt2": tokens in id order (added tokens
//     included; special ones CONTROL, others USER_DEFINED), merges, and tokenizer.ggml.pre named
//     by matching the pre-tokenizer against the ones GgufTokenizerToHf writes (gpt2, smollm,
//     llama-bpe); "default" when none matches;
//   llama2.c tokenizer.bin / tok512.bin -> "llama" (SentencePiece): pieces with ' ' as U+2581,
//     BOS/EOS pieces as <s> and </s>, scores, <0xNN> pieces as BYTE tokens, id 0 UNKNOWN.
// Ids missing below vocab_size become "[PAD<id>]" tokens of type UNUSED (as llama.cpp's
// convert_hf_to_gguf.py pads). FAILED_PRECONDITION naming the file for a tokenizer that GGUF
// cannot express (e.g. a non-BPE tokenizer.json) or one with more tokens than vocab_size;
// NOT_FOUND when the directory has no tokenizer.
absl::Status WriteGgufTokenizer(const std::string& model_dir, const GgufTokenizerIds& ids,
                                GgufWriter* w);

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_TOKENIZER_GGUF_TOKENIZER_H_
