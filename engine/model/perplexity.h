// Perplexity of a model over one concatenated token stream.
// Thread-safety: reentrant; runs windows in parallel with OpenMP on shared const weights.
#ifndef QUANTD_ENGINE_MODEL_PERPLEXITY_H_
#define QUANTD_ENGINE_MODEL_PERPLEXITY_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/model/config.h"
#include "engine/model/weight_source.h"
#include "engine/model/weights.h"

namespace quantd::model {

struct PerplexityOptions {
  // Tokens per forward window. Must be in [1, max_position_embeddings]. Default: 512.
  int context = 512;
  // Start-to-start distance of windows, in [1, context]. 0 means context. Default: 0.
  int stride = 0;
  // Evaluate only the first max_tokens tokens of the stream; 0 = all. Default: 0.
  int64_t max_tokens = 0;
  // Layer-streamed overload only: windows per layer-streamed pass are added while their tokens
  // stay ≤ this (at least one window per pass); 0 = AutoBatchTokens (streamed_forward.h).
  // Default: 0.
  int64_t batch_tokens = 0;
  // ≥ 0: every window's input starts with this token (the model's start token, as a served
  // request does; model/calibration.h StartTokenOf) and holds context - 1 stream tokens. The
  // targets are the same stream tokens as without it. Default: -1 (none).
  int32_t start_token = -1;
  // Layer-streamed overload only: where the forward's ops run (model/forward_device.h); not
  // owned. Default: nullptr, the CPU's.
  quant::ForwardOps* ops = nullptr;
};

struct PerplexityResult {
  double mean_nll = 0;  // nats per target
  double ppl = 0;       // exp(mean_nll)
  int64_t targets = 0;  // number of predicted tokens (= N - 1 for a stream of N tokens)
  int windows = 0;
};

// Stream protocol (see shared/data/README.md). Let s be the stream of N tokens and
// E = N - 1 the number of predictable positions. Window w starts at b = w * stride and feeds
// x = s[b : e], e = min(b + context, E); its targets are y = s[b+1 : e+1]. Only the targets at
// positions [max(b, e_prev), e) count, where e_prev is the previous window's end, i.e. each
// target is scored exactly once, by the first window that reaches it. With stride == context
// the windows do not overlap and every target counts (last partial window included); with
// stride < context each window after the first scores its last `stride` targets only, with
// context - stride tokens of history (GPTQ/QuIP#/HF sliding-window style). With a start token the
// same holds with context - 1 in place of context (and stride ≤ context - 1), the window's input
// being [start] + s[b : e]; the row of the start token itself scores nothing.
// The sum of NLLs is reduced in window order in fp64, so results do not depend on threads.
// INVALID_ARGUMENT for N < 2, bad options, or tokens outside the vocabulary.
absl::StatusOr<PerplexityResult> Perplexity(const LlamaConfig& cfg, const LlamaWeights& w,
                                            absl::Span<const int32_t> tokens,
                                            const PerplexityOptions& opts);

// The same protocol and result on a layer-streamed, batched forward (streamed_forward.h): the
// windows go through the model in passes of about opts.batch_tokens tokens, each pass reading
// every layer from `src` once. Sums are reduced in window order in fp64, so the result does not
// depend on threads or batch size beyond fp32 GEMM blocking.
absl::StatusOr<PerplexityResult> Perplexity(const LlamaConfig& cfg, WeightSource& src,
                                            absl::Span<const int32_t> tokens,
                                            const PerplexityOptions& opts);

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_MODEL_PERPLEXITY_H_
