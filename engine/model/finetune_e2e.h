// End-to-end fine-tuning of a quantized model after rounding (QuIP#'s second stage; QTIP uses
// the same procedure; docs/algorithms.md "Fine-tuning after rounding"), usually run after the
// block-wise stage (finetune.h). The tunable parameters are every decoder block's two RMSNorm
// scales, every linear's real output/input scales a, b (W = diag(a)·W_q·diag(b): the sign
// vectors SV/SU relaxed to reals, as in the block stage), the final norm and, as an option, the
// head matrix. The loss is the mean over calibration tokens of KL(p_fp ‖ p_q), the divergence of
// the tuned model's next-token distribution from the fp model's; its gradient runs backward
// through the log-softmax, the head, the final norm and every block (block_grad.h). Adam on
// mini-batches of sequences, the last sequences held out, the best held-out epoch kept.
// Thread-safety: FinetuneEndToEnd runs OpenMP loops over the sequences of a mini-batch; one call
// at a time per weights object. The grad:: functions are stateless.
#ifndef QUANTD_ENGINE_MODEL_FINETUNE_E2E_H_
#define QUANTD_ENGINE_MODEL_FINETUNE_E2E_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/model/block_grad.h"
#include "engine/model/config.h"
#include "engine/model/finetune.h"
#include "engine/model/weights.h"

namespace quantd::model {

struct E2eOptions {
  int seq_len = 512;            // Default: 512 tokens per calibration sequence
  int epochs = 3;               // Default: 3, the most epochs
  double learning_rate = 1e-3;  // Default: 1e-3 (Adam, β 0.9 / 0.999)
  int batch_sequences = 2;      // Default: 2 sequences per Adam step
  int holdout_sequences = 2;    // Default: 2 sequences held out for early stopping
  int patience = 1;             // Default: 1 epoch without held-out improvement stops
  bool tune_head = false;       // Default: off; untied heads only
};

// INVALID_ARGUMENT naming the field for values out of range (same ranges as FinetuneOptions).
absl::Status ValidateE2eOptions(const E2eOptions& o);

struct E2eReport {
  double heldout_before = 0;          // mean held-out KL (nats per token) before tuning
  std::vector<double> heldout_curve;  // after each epoch
  double heldout_best = 0;            // the kept parameters' held-out KL
  double train_first = 0, train_last = 0;  // mean training KL of the first and last epoch
  int epochs_run = 0;
  double seconds = 0;
};

// Called after each epoch (on the calling thread) with the report so far.
using E2eProgress = std::function<void(const E2eReport&)>;

// Tunes `q` (the quantized model's dequantized weights, possibly already block-tuned; same
// config as `fp`) in place on `calib`, cut into sequences of opts.seq_len, the last
// opts.holdout_sequences held out. Writes the kept norms, linears (diag(a)·W·diag(b)) and head
// into q. `scales` (nullable) holds each layer's scales so far (empty: all ones) and is
// multiplied by the tuned ones, so that the linears stay diag(out)·W_q·diag(in) of the original
// quantized matrices. INVALID_ARGUMENT for bad options, mismatched weights or too few tokens;
// FAILED_PRECONDITION for a block the backward pass does not cover (block_grad.h), final
// logit soft-capping, online rotations, or tune_head on a model with tied embeddings. The
// backward's ops run on `device` as in FinetuneBlocks (finetune.h); its errors are returned.
// CANCELLED (q untouched) when `cancelled` (nullable) turns true, checked between steps.
absl::StatusOr<E2eReport> FinetuneEndToEnd(const LlamaConfig& cfg, const LlamaWeights& fp,
                                           LlamaWeights* q, absl::Span<const int32_t> calib,
                                           const E2eOptions& opts,
                                           std::vector<LayerScales>* scales = nullptr,
                                           const E2eProgress& progress = nullptr,
                                           quant::Device* device = nullptr,
                                           const std::atomic<bool>* cancelled = nullptr);

namespace grad {

// The whole model as a differentiable function of its tunable parameters.
template <typename T>
struct ModelParams {
  std::vector<BlockParams<T>> blocks;
  Vec<T> final_norm;  // [hidden]
  Mat<T> head;        // [vocab x hidden]
};

template <typename T>
struct ModelGrads {
  std::vector<BlockGrads<T>> blocks;
  Vec<T> final_norm;
  Mat<T> head;  // left empty unless Zero(p, true)
  void Zero(const ModelParams<T>& p, bool with_head);
  void Add(const ModelGrads& o);
};

struct ModelDims {
  std::vector<BlockDims> blocks;
  double eps = 1e-6;  // the final norm's
};

// The dims of every block of `cfg`; FAILED_PRECONDITION as BlockDimsFor, and for final logit
// soft-capping.
absl::StatusOr<ModelDims> ModelDimsFor(const LlamaConfig& cfg);

// Σ over the rows t of x0 (one sequence's embedded tokens [T x hidden], positions 0..T−1) of
// KL(ref_t ‖ softmax(logits_t)), ref_logp [T x vocab] the reference log-probabilities (their
// exponentials should sum to 1 per row; the gradient is exact for the function as written,
// Σ_v p_v·(ref_logp_v − logq_v), either way). With g non-null, adds `scale` times the gradient
// into *g (the head's only when g->head is non-empty).
template <typename T>
double SequenceKl(const ModelDims& d, const ModelParams<T>& p, const Mat<T>& cos, const Mat<T>& sin,
                  const Mat<T>& x0, const Mat<T>& ref_logp, T scale, ModelGrads<T>* g);

// The same with the backward's ops on `ops` when T is float and ops is non-null
// (block_grad.h's BlockBackwardOn; the head's product stays on the host). Errors are the ops'.
template <typename T>
absl::StatusOr<double> SequenceKlOn(const ModelDims& d, const ModelParams<T>& p, const Mat<T>& cos,
                                    const Mat<T>& sin, const Mat<T>& x0, const Mat<T>& ref_logp,
                                    T scale, ModelGrads<T>* g, quant::BackwardOps* ops);

// The model's log-probabilities [T x vocab] for one sequence (no gradient).
template <typename T>
void SequenceLogProbs(const ModelDims& d, const ModelParams<T>& p, const Mat<T>& cos,
                      const Mat<T>& sin, const Mat<T>& x0, Mat<T>* logp);

}  // namespace grad
}  // namespace quantd::model

#endif  // QUANTD_ENGINE_MODEL_FINETUNE_E2E_H_
