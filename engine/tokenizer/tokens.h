// Pre-tokenized token streams (calibration and evaluation data).
// Thread-safety: stateless functions, thread-safe.
#ifndef QUANTD_ENGINE_TOKENIZER_TOKENS_H_
#define QUANTD_ENGINE_TOKENIZER_TOKENS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace quantd::model {

// Loads token ids by file extension: ".u16" / ".u32" raw little-endian arrays, or ".npy"
// (1-D, C order, dtype <u2, <u4, <i4 or <i8). Every id must fit in [0, 2^31).
// NOT_FOUND if absent; INVALID_ARGUMENT (naming the file) for any other extension (e.g. a
// .txt or .safetensors passed as calibration data), a byte count not a multiple of the element
// size, an empty stream, a malformed .npy header, or a negative / too large id.
absl::StatusOr<std::vector<int32_t>> LoadTokenFile(const std::string& path);

// INVALID_ARGUMENT naming the first position and id outside [0, vocab_size).
absl::Status ValidateTokens(absl::Span<const int32_t> tokens, int vocab_size);

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_TOKENIZER_TOKENS_H_
