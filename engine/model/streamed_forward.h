// The layer-streamed, batched forward pass used by Hessian and evaluation tasks on real-size
// models. All sequences of a task go through the decoder together, one layer at a time: the
// layer's weights come from a WeightSource once (one layer alive at a time), the activations
// of every sequence are one [tokens x hidden] fp32 matrix, and each linear is one GEMM over all
// rows (split across OpenMP threads by output columns). RoPE and causal attention stay per
// sequence. The vocabulary projection runs in column chunks so a full [tokens x vocab] logits
// matrix never exists. Per row it computes what the reference Forward (forward.h) computes;
// results differ only by fp32 GEMM blocking (docs/ARCHITECTURE.md states the bound).
// Thread-safety: reentrant for distinct sources and sinks.
#ifndef QUANTD_ENGINE_MODEL_STREAMED_FORWARD_H_
#define QUANTD_ENGINE_MODEL_STREAMED_FORWARD_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/matrix.h"
#include "engine/model/config.h"
#include "engine/model/forward.h"
#include "engine/model/weight_source.h"
#include "engine/quant/device.h"

namespace quantd::model {

// Runs every sequence (each starting at position 0) through the decoder layers and returns the
// final-normed hidden states [total tokens x hidden], the sequences' rows in order. A sink gets
// each group's input for all rows at once (OnLinearInput), then OnLayerDone per layer; when it
// stops early (StopAfterLayer) the result is 0 x hidden.
// INVALID_ARGUMENT for no sequences, an empty or too long sequence, a token outside the
// vocabulary, or weights that do not match cfg; the source's and sink's errors as they are.
// `ops`: where the ops run (model/forward_device.h ForwardOpsSession); nullptr: the CPU's.
// The activations stay in the ops' memory between ops; ops a device declines (UNIMPLEMENTED)
// and the variants without a device kernel run on host copies (OnHost). With the CPU's ops the
// results are bit-identical to the code before the Device seam.
absl::StatusOr<MatrixF> ForwardBatch(const LlamaConfig& cfg, WeightSource& src,
                                     absl::Span<const absl::Span<const int32_t>> sequences,
                                     ActivationSink* sink = nullptr,
                                     quant::ForwardOps* ops = nullptr);

// Footprint model of ForwardBatch, for memory estimates (server admission) and batch sizing.
// fp32 bytes kept per token of a batch: residual, normed input, q, k, v, attention output,
// gate and up.
int64_t BatchBytesPerToken(const LlamaConfig& cfg);
// fp32 bytes of one decoder layer's weights (what a WeightSource holds at a time).
int64_t LayerWeightBytes(const LlamaConfig& cfg);
// Device memory a GPU's forward ops (engine/device/cuda/cuda_forward.h) need for a batch of
// `rows` tokens: one layer's weights (bound per half layer; bounded by the fp32 size) plus the
// fp32 staging of the largest matrix, the activations (BatchBytesPerToken) plus their 16-bit
// copy for bf16/fp16 GEMMs; with `hessian`, the four fp64 group sums of one layer and the fp64
// input chunk of the Gram (≤ 2^25 elements); with `vocab_chunk` > 0 (evaluation), a logits
// chunk and its output-projection rows. Admission (server/job_builder.cc TaskMemoryBytes) takes
// the larger of this and the host estimate, as a GPU worker advertises its GPU's free memory.
int64_t DeviceForwardBytes(const LlamaConfig& cfg, int64_t rows, bool hessian, int vocab_chunk);

// Tokens per pass when PerplexityOptions::batch_tokens is 0: as many as keep the batch's
// activations within 1 GiB, at least `context` (one window), at most 16384.
int64_t AutoBatchTokens(const LlamaConfig& cfg, int context);

// Vocabulary columns per logits chunk for `rows` rows: the whole vocabulary when a
// [rows x vocab] fp32 block fits 64 MiB, else 64 MiB / rows (at least 256).
int DefaultVocabChunk(const LlamaConfig& cfg, int64_t rows);

// Calls fn(col_begin, logits [rows x cols]) for consecutive column chunks of the logits of
// `hidden` (ForwardBatch's result), each at most `vocab_chunk` columns (0: DefaultVocabChunk),
// reading only that chunk's rows of the output projection. Stops at fn's first error.
absl::Status ForEachLogitsChunk(
    const LlamaConfig& cfg, WeightSource& src, const MatrixF& hidden, int vocab_chunk,
    const std::function<absl::Status(int col_begin, const MatrixF& logits)>& fn);

// Per row r of `hidden`: -log softmax(logits_r)[targets[r]] in nats, or 0 where targets[r] < 0.
// Computed chunk by chunk with a running max and fp64 sum (with one chunk exactly the
// reference's max-shifted sum). The logits chunks live in `ops`' memory (nullptr: the CPU's);
// only three numbers per row come back. INVALID_ARGUMENT when targets.size() != hidden.rows(),
// a target is ≥ vocab_size or hidden is not hidden_size wide.
absl::StatusOr<std::vector<double>> RowNll(const LlamaConfig& cfg, WeightSource& src,
                                           const MatrixF& hidden,
                                           absl::Span<const int32_t> targets,
                                           int vocab_chunk = 0,
                                           quant::ForwardOps* ops = nullptr);

// Full logits [total tokens x vocab] of a batch (tests and small models only).
absl::StatusOr<MatrixF> ForwardBatchLogits(const LlamaConfig& cfg, WeightSource& src,
                                           absl::Span<const absl::Span<const int32_t>> sequences);

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_MODEL_STREAMED_FORWARD_H_
