// Block-wise fine-tuning of a quantized model after rounding (QuIP# §"fine-tuning", QTIP uses
// the same procedure; docs/algorithms.md "Fine-tuning after rounding"). Decoder blocks are
// tuned in layer order. Block l's inputs are the calibration activations that come out of the
// already quantized and tuned blocks 0..l-1; its targets are the fp block's outputs on the fp
// activations. The tunable parameters are the block's two RMSNorm scales and, for each of its
// seven quantized linears, a real output scale a and input scale b with W = diag(a)·W_q·diag(b)
// (the QuIP#/QTIP sign vectors SV/SU relaxed to reals: W_q already carries the signs, a and b
// start at 1). The loss is the block output's squared error relative to the targets' energy;
// Adam on mini-batches of sequences; part of the calibration sequences is held out and each
// block keeps the parameters of its best held-out epoch (early stopping).
// This is the post-quantization variant: every linear is already quantized; tuning the still
// unquantized linears between the quantization of each linear is not implemented.
// Thread-safety: FinetuneBlocks runs OpenMP loops over sequences; one call at a time per
// weights object.
#ifndef QUANTD_ENGINE_MODEL_FINETUNE_H_
#define QUANTD_ENGINE_MODEL_FINETUNE_H_

#include <array>
#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/matrix.h"
#include "engine/model/config.h"
#include "engine/model/weight_source.h"
#include "engine/model/weights.h"
#include "engine/quant/device.h"

namespace quantd::model {

struct FinetuneOptions {
  int seq_len = 512;              // Default: 512 tokens per calibration sequence
  int epochs = 5;                 // Default: 5, the most epochs per block
  double learning_rate = 1e-3;    // Default: 1e-3 (Adam, β 0.9 / 0.999)
  int batch_sequences = 2;        // Default: 2 sequences per Adam step
  int holdout_sequences = 2;      // Default: 2 sequences held out for early stopping
  int patience = 1;               // Default: 1 epoch without held-out improvement stops the block
};

// INVALID_ARGUMENT naming the field for values out of range (seq_len < 2, epochs outside
// 0..1000, learning rate not in (0, 1], batch < 1, holdout < 1, patience < 1).
absl::Status ValidateFinetuneOptions(const FinetuneOptions& o);

// The tuned real scales of one decoder layer's linears (indexed by Linear): W = diag(out)·W_q·
// diag(in).
struct LayerScales {
  std::array<VectorF, 7> out, in;
};

// OK when `fp` and `q` match `cfg` (layer count, every linear's shape, the layers' norms and
// biases) and carry no online rotations; INVALID_ARGUMENT / FAILED_PRECONDITION naming the
// mismatch otherwise (the check FinetuneBlocks runs first; finetune_e2e.h uses it too).
absl::Status CheckFinetuneWeights(const LlamaConfig& cfg, const LlamaWeights& fp,
                                  const LlamaWeights& q);

struct BlockTuneReport {
  int layer = 0;
  double heldout_before = 0;          // relative held-out loss with the untuned block
  std::vector<double> heldout_curve;  // after each epoch
  double heldout_best = 0;            // the kept parameters' held-out loss
  int epochs_run = 0;
  double seconds = 0;
};

// Called after each block (on the calling thread).
using FinetuneProgress = std::function<void(const BlockTuneReport&)>;

// Tunes `q` (the quantized model's dequantized weights, same config as `fp`) in place on the
// calibration tokens `calib`, cut into sequences of opts.seq_len (the last
// opts.holdout_sequences are held out). Writes the tuned norms and linears (diag(a)·W·diag(b))
// into q and, when `scales` is non-null, the scales per layer. Returns one report per layer.
// The backward's ops run on `device` (model/backward_device.h; null or the CPU device: the CPU's,
// the sequences of a mini-batch in parallel; a device's: one sequence at a time).
// INVALID_ARGUMENT for bad options, mismatched weights or too few tokens (fewer than
// holdout_sequences + 1 sequences); FAILED_PRECONDITION for a block the backward pass does not
// cover (block_grad.h).
absl::StatusOr<std::vector<BlockTuneReport>> FinetuneBlocks(
    const LlamaConfig& cfg, const LlamaWeights& fp, LlamaWeights* q,
    absl::Span<const int32_t> calib, const FinetuneOptions& opts,
    std::vector<LayerScales>* scales = nullptr, const FinetuneProgress& progress = nullptr,
    quant::Device* device = nullptr);

// The tuned parameters of one block: its two norm scales and its linears' real scales.
struct TunedBlock {
  VectorF attn_norm, ffn_norm;
  LayerScales scales;
};

// Writes `t` into `lw`: its norms, and each linear as diag(out)·W·diag(in) of lw's linear (what
// FinetuneBlocks does with a tuned block). INVALID_ARGUMENT for vectors of the wrong sizes.
absl::Status ApplyTunedBlock(const TunedBlock& t, LayerWeights* lw);

// FinetuneBlocks one block at a time, for a caller that holds one layer's weights at a time
// (the service's fine-tuning tasks, server/job_finetune.h). Start embeds the calibration
// sequences through both models; then, in layer order, TuneBlock tunes the next block and
// advances the activations through it, or ReplayBlock advances them through a block tuned
// earlier (its TunedBlock). FinetuneBlocks is Start plus TuneBlock for every layer, so a caller
// that replays blocks 0..l-1 from their TunedBlocks and tunes block l gets bit for bit the
// report and parameters FinetuneBlocks computes for block l.
// Thread-safety: one call at a time per object (each call runs OpenMP loops).
class BlockFinetuner {
 public:
  // `fp` and `q` give the embeddings (Embed, then the config's embedding scale). INVALID_ARGUMENT
  // for bad options or tokens, or too few tokens (as FinetuneBlocks). TuneBlock runs the
  // backward's ops on `device` (as FinetuneBlocks; it must outlive the tuner).
  static absl::StatusOr<BlockFinetuner> Start(const LlamaConfig& cfg, WeightSource& fp,
                                              WeightSource& q, absl::Span<const int32_t> calib,
                                              const FinetuneOptions& opts,
                                              quant::Device* device = nullptr);
  int next_layer() const { return layer_; }
  // Tunes block next_layer(): `fp` is its fp layer, `q` its quantized layer (dequantized
  // linears, untuned norms). Fills *tuned; the report's layer is next_layer() before the call.
  // INVALID_ARGUMENT for mismatched shapes, FAILED_PRECONDITION for a block the backward pass
  // does not cover, the device's errors (RESOURCE_EXHAUSTED, ...); nothing advances on error.
  absl::StatusOr<BlockTuneReport> TuneBlock(const LayerWeights& fp, const LayerWeights& q,
                                            TunedBlock* tuned);
  // Advances through block next_layer() tuned earlier to `tuned` (same errors, and
  // INVALID_ARGUMENT for parameters of the wrong sizes).
  absl::Status ReplayBlock(const LayerWeights& fp, const LayerWeights& q, const TunedBlock& tuned);

 private:
  BlockFinetuner() = default;
  absl::Status CheckLayer(const LayerWeights& fp, const LayerWeights& q) const;

  LlamaConfig cfg_;
  FinetuneOptions opts_;
  quant::Device* device_ = nullptr;
  int layer_ = 0, ntrain_ = 0;
  MatrixF cos_, sin_;
  std::vector<MatrixF> x_fp_, x_q_;  // activations entering block layer_
};

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_MODEL_FINETUNE_H_
