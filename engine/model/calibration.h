// How calibration sequences are cut from a calibration token stream (issue 24: calibration like
// serving). A served request starts with the model's start token (BOS) where its tokenizer adds
// one, so each calibration sequence can get it too; and GPTQ's convention draws the sequences at
// random starts in the text rather than taking its first N windows.
// Thread-safety: pure functions.
#ifndef QUANTD_ENGINE_MODEL_CALIBRATION_H_
#define QUANTD_ENGINE_MODEL_CALIBRATION_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/tokenizer/tokenizer.h"

namespace quantd::model {

enum class CalibSampling {
  kFirst,   // consecutive windows from the start of the stream
  kRandom,  // windows at uniformly random starts (GPTQ's convention), seeded
};

// "first" | "random". INVALID_ARGUMENT naming anything else.
absl::StatusOr<CalibSampling> ParseCalibSampling(std::string_view s);
std::string_view CalibSamplingName(CalibSampling s);

struct CalibWindowOptions {
  int seq_len = 512;      // tokens per sequence, start token included. Default: 512.
  int64_t max_seqs = 0;   // kFirst: 0 = as many as fit; kRandom: the number drawn (> 0).
  CalibSampling sampling = CalibSampling::kFirst;  // Default: kFirst.
  uint64_t seed = 0;      // kRandom: the starts come from mt19937_64(seed). Default: 0.
  int32_t start_token = -1;  // ≥ 0: put this id at the head of every sequence. Default: none.
};

// The calibration sequences, concatenated (each exactly seq_len tokens). A sequence is
// [start_token] + seq_len - 1 stream tokens, or seq_len stream tokens without a start token.
// kFirst takes consecutive, non-overlapping windows from the start; kRandom draws each start
// independently in [0, N - w] (w = stream tokens per window; windows may overlap).
// INVALID_ARGUMENT for seq_len < 2, kRandom with max_seqs ≤ 0, or a stream shorter than one
// window (naming both lengths).
absl::StatusOr<std::vector<int32_t>> CalibrationWindows(absl::Span<const int32_t> stream,
                                                        const CalibWindowOptions& opts);

// The start token the tokenizer puts in front of an encoded text (Encode with bos = true: the
// tokenizer.json post_processor's template, llama2.c's BOS), or -1 when it adds none (e.g.
// SmolLM2, whose tokenizer.json has a ByteLevel post_processor and tokenizer_config.json
// add_bos_token false). Errors are Encode's.
absl::StatusOr<int32_t> StartTokenOf(const Tokenizer& tok);

// The start token a model is served with, the rule of start_token "auto": what its tokenizer.json
// post_processor puts in front of a text (StartTokenOf; transformers' add_special_tokens=True),
// unless tokenizer_config.json sets add_bos_token to false; -1 when the directory has no
// tokenizer.json (llama2.c tokenizer.bin / tok512.bin models, token-only directories: no
// serving config to follow). Errors: a malformed tokenizer.json or tokenizer_config.json,
// naming the file.
absl::StatusOr<int32_t> ServingStartToken(const std::string& model_dir);

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_MODEL_CALIBRATION_H_
