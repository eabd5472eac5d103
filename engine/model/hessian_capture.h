// An ActivationSink that accumulates, per (layer, linear group), the fp64 sum H = Σ w_t xᵀx over
// every token row x fed to that group, plus the number of rows. w_t is the token's weight
// (TokenWeighting: 1 everywhere by default, so H = Σ xᵀx); H / Tokens() (times 2 in the GPTQ
// convention) is the layer-wise proxy Hessian used by GPTQ/LDLQ.
// Thread-safety: OnLinearInput is thread-safe (one mutex per slot), so Forward may run on
// several threads with one capture. Sum()/Tokens() must not race with OnLinearInput.
#ifndef QUANTD_ENGINE_MODEL_HESSIAN_CAPTURE_H_
#define QUANTD_ENGINE_MODEL_HESSIAN_CAPTURE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/types/span.h"
#include "common/matrix.h"
#include "common/mutex.h"
#include "engine/model/config.h"
#include "engine/model/forward.h"

namespace quantd::model {

// Default weight of each calibration sequence's first token where weighting is on (the service's
// "sink" default, quantd-bench methods' --sink-weight): on SmolLM2-135M it takes gptq 4-bit from
// perplexity 60.77 to 44.20 (64: 46.85; docs/benchmarks.md, "Sink-weighted Hessians").
inline constexpr double kDefaultSinkWeight = 16;

// Default threshold of the "sink+massive" weighting (TokenWeighting::massive_ratio): a token is
// massive at a layer when its largest |activation| in the residual stream entering the layer is
// at least this many times the median over its sequence's tokens of their largest |activation|.
// On SmolLM2-135M's calibration windows the typical token sits within 1.5x of that median, the
// largest ordinary outliers (" the" in layers 3-9) reach 25x and the sink ~300x from layer 12 on
// (docs/algorithms.md "Massive-activation tokens"): 100 lies in that gap.
inline constexpr double kDefaultMassiveRatio = 100;

// Per-token weights of the Hessian sums (issue 24). A sequence's first positions are the model's
// attention sink: every later query attends to them, so an error in their keys/values reaches
// every output, yet they are a tiny share of the rows of XᵀX. Weighting them up makes the
// layer-wise proxy see that (docs/ALGORITHMS.md "Sink-weighted Hessians" gives the measurement).
// With massive_ratio > 0 the tokens with massive activations (Sun et al. 2024: the tokens that
// act as attention sinks besides the first) get the sink weight too, chosen per layer from the
// residual stream entering it (MassiveRows).
struct TokenWeighting {
  // Weight of the rows at positions [0, sink_positions) of every sequence. Default: 1 (none).
  double sink_weight = 1;
  // Number of leading positions weighted. Default: 1.
  int sink_positions = 1;
  // > 0: also weight sink_weight the rows MassiveRows flags at this ratio. Default: 0 (off).
  double massive_ratio = 0;

  // The weight of the row at `position` (0-based within its sequence), by position alone.
  double WeightAt(int64_t position) const {
    return position < sink_positions ? sink_weight : 1.0;
  }
  // True when every weight is 1 (the sums are then exactly the unweighted ones).
  bool IsUniform() const {
    return sink_weight == 1.0 || (sink_positions <= 0 && massive_ratio <= 0);
  }
  bool Massive() const { return massive_ratio > 0 && sink_weight != 1.0; }
};

// Per-row weights of a batch of sequences laid out one after another (ForwardBatch's rows):
// row r of sequence s gets w.WeightAt(r - start of s). Empty when w is uniform.
std::vector<double> RowWeights(absl::Span<const int64_t> seq_lengths, const TokenWeighting& w);

// The rows of `residual` (the residual stream of sequences laid out one after another, lengths
// `seq_lengths`, summing to its rows) whose max |x| is at least `ratio` times the median over
// the rows of their own sequence of max |x| (the upper median for an even count). A sequence of
// equal rows flags none (ratio > 1); a zero median flags the rows with any non-zero entry.
std::vector<int64_t> MassiveRows(const MatrixF& residual, absl::Span<const int64_t> seq_lengths,
                                 double ratio);

// `base` (RowWeights of the batch; empty = all 1) with w.sink_weight on MassiveRows(residual,
// seq_lengths, w.massive_ratio); `base` itself when w is not Massive().
std::vector<double> LayerRowWeights(const MatrixF& residual, absl::Span<const int64_t> seq_lengths,
                                    const TokenWeighting& w, const std::vector<double>& base);

class HessianCapture : public ActivationSink {
 public:
  // Allocates zeroed in x in sums (in = GroupInputDim) for every layer and group.
  explicit HessianCapture(const LlamaConfig& cfg);
  // Captures layer `only_layer` alone (GPTQ's layer-by-layer mode): only its sums are
  // allocated, inputs of other layers are ignored, and Forward stops after that layer.
  // `weighting` weights the rows by position; each OnLinearInput call is one sequence starting
  // at position 0 (as the reference Forward makes them).
  HessianCapture(const LlamaConfig& cfg, int only_layer, TokenWeighting weighting = {});

  // Adds xᵀ diag(w) x (fp64) to slot (layer, group). Ignores calls with an out-of-range layer or a
  // column count that does not match the group (cannot happen with Forward).
  void OnLinearInput(int layer, LinearGroup group, const MatrixF& x) override;

  // With w.Massive(): flags this sequence's massive rows for the layer's next inputs (the
  // reference Forward calls it on the sequence's thread before the layer's inputs).
  void OnResidual(int layer, const MatrixF& x) override;

  int StopAfterLayer() const override { return only_layer_; }

  // Rows flagged massive so far, summed over layers and sequences (a row counts once per layer).
  int64_t MassiveFlags() const;

  // [in x in], symmetric; 0 x 0 for a layer that a single-layer capture does not hold.
  const MatrixD& Sum(int layer, LinearGroup g) const;
  int64_t Tokens(int layer, LinearGroup g) const;  // rows accumulated

 private:
  struct Slot {
    Mutex mu;
    MatrixD sum ABSL_GUARDED_BY(mu);
    int64_t tokens ABSL_GUARDED_BY(mu) = 0;
  };
  Slot& At(int layer, LinearGroup g) const;
  std::vector<std::unique_ptr<Slot>> slots_;  // layer * kNumGroups + group
  int only_layer_ = -1;                       // -1: every layer
  TokenWeighting weighting_;
  std::vector<double> row_weights_;           // by position; empty: uniform
  // With weighting_.Massive(): the current layer's row weights of the sequence each thread is
  // running (Forward runs one sequence per thread, OnResidual before the layer's inputs).
  struct MassiveState {
    Mutex mu;
    std::map<std::thread::id, std::vector<double>> thread_weights ABSL_GUARDED_BY(mu);
    int64_t flags ABSL_GUARDED_BY(mu) = 0;
  };
  std::unique_ptr<MassiveState> massive_ = std::make_unique<MassiveState>();  // movable
};

// Adds xᵀx (fp64; x is rows x n fp32) to `sum` (n x n, symmetric, both triangles filled).
void AddXtX(const MatrixF& x, MatrixD* sum);

// Adds xᵀ diag(w) x to `sum`: row r of x counts w[r] times (r ≥ w.size(): once). Computed as
// xᵀx plus (w[r] - 1) x_rᵀx_r for the rows whose weight is not 1, so uniform weights (or an
// empty w) give exactly AddXtX's bits and no n x n temporary is formed.
void AddWeightedXtX(const MatrixF& x, absl::Span<const double> w, MatrixD* sum);

// The Hessian sums of a layer-streamed forward (ForwardBatch, streamed_forward.h), one layer
// alive at a time: the four group sums of layer l grow while the forward is in layer l, and
// when it reports the layer done they go to `emit` (in kAllGroups order) and are freed.
// Captures layers [first, last); the forward stops after last - 1. `row_weights` (RowWeights
// of the batch's sequences; empty = all 1) weights the batch's rows: sum = Σ w_r x_rᵀx_r.
// The sums live in the memory of the ops ForwardBatch runs on (OnDeviceInput): fp64 n×n per
// group on a GPU, read back once per layer; on the CPU exactly AddWeightedXtX into host sums.
// Thread-safety: single-threaded, like ForwardBatch's calls.
class LayerHessianStream : public ActivationSink {
 public:
  using Emit = std::function<absl::Status(int layer, LinearGroup g, const MatrixD& sum,
                                          int64_t tokens)>;
  LayerHessianStream(const LlamaConfig& cfg, int first, int last, Emit emit,
                     std::vector<double> row_weights = {});
  // With w.Massive(): each captured layer's rows are weighted by LayerRowWeights of the residual
  // entering it (the batch's sequences have lengths `seq_lengths`), the constructor's
  // row_weights as the base. On a GPU the residual is downloaded once per layer for this.
  void WeightMassiveRows(std::vector<int64_t> seq_lengths, TokenWeighting w);
  int64_t MassiveFlags() const { return massive_flags_; }

  // Host rows (the CPU's ops). Errors are reported by the next OnLayerDone.
  void OnLinearInput(int layer, LinearGroup group, const MatrixF& x) override;
  absl::Status OnDeviceInput(quant::ForwardOps& ops, int layer, LinearGroup group,
                             const quant::DeviceMatrix& x) override;
  absl::Status OnLayerDone(int layer) override;
  absl::Status OnDeviceResidual(quant::ForwardOps& ops, int layer,
                                const quant::DeviceMatrix& x) override;
  int StopAfterLayer() const override { return stop_after_; }

 private:
  LlamaConfig cfg_;
  int first_, last_, stop_after_;
  Emit emit_;
  std::vector<double> row_weights_;
  std::vector<int64_t> seq_lengths_;       // WeightMassiveRows
  TokenWeighting massive_;                 // WeightMassiveRows; default: off
  std::vector<double> layer_weights_;      // the current layer's, with massive rows
  bool layer_weighted_ = false;            // layer_weights_ holds the current layer's
  int64_t massive_flags_ = 0;
  std::unique_ptr<quant::ForwardOps> host_ops_;  // for OnLinearInput
  quant::ForwardOps* ops_ = nullptr;             // the ops the sums_ belong to
  std::unique_ptr<quant::DeviceGram> sums_[kNumGroups];
  int64_t tokens_[kNumGroups] = {};
  absl::Status error_;
};

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_MODEL_HESSIAN_CAPTURE_H_
