// An ActivationSink that accumulates, per (layer, linear group), the fp64 sum H = Σ xᵀx over
// every token row x fed to that group, plus the number of rows. H / Tokens() (times 2 in the
// GPTQ convention) is the layer-wise proxy Hessian used by GPTQ/LDLQ.
// Thread-safety: OnLinearInput is thread-safe (one mutex per slot), so Forward may run on
// several threads with one capture. Sum()/Tokens() must not race with OnLinearInput.
#ifndef QUANTD_ENGINE_MODEL_HESSIAN_CAPTURE_H_
#define QUANTD_ENGINE_MODEL_HESSIAN_CAPTURE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "common/matrix.h"
#include "common/mutex.h"
#include "engine/model/config.h"
#include "engine/model/forward.h"

namespace quantd::model {

class HessianCapture : public ActivationSink {
 public:
  // Allocates zeroed in x in sums (in = GroupInputDim) for every layer and group.
  explicit HessianCapture(const LlamaConfig& cfg);
  // Captures layer `only_layer` alone (GPTQ's layer-by-layer mode): only its sums are
  // allocated, inputs of other layers are ignored, and Forward stops after that layer.
  HessianCapture(const LlamaConfig& cfg, int only_layer);

  // Adds xᵀx (fp64) to slot (layer, group). Ignores calls with an out-of-range layer or a
  // column count that does not match the group (cannot happen with Forward).
  void OnLinearInput(int layer, LinearGroup group, const MatrixF& x) override;

  int StopAfterLayer() const override { return only_layer_; }

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
};

// Adds xᵀx (fp64; x is rows x n fp32) to `sum` (n x n, symmetric, both triangles filled).
void AddXtX(const MatrixF& x, MatrixD* sum);

// The Hessian sums of a layer-streamed forward (ForwardBatch, streamed_forward.h), one layer
// alive at a time: the four group sums of layer l grow while the forward is in layer l, and
// when it reports the layer done they go to `emit` (in kAllGroups order) and are freed.
// Captures layers [first, last); the forward stops after last - 1.
// Thread-safety: single-threaded, like ForwardBatch's calls.
class LayerHessianStream : public ActivationSink {
 public:
  using Emit = std::function<absl::Status(int layer, LinearGroup g, const MatrixD& sum,
                                          int64_t tokens)>;
  LayerHessianStream(const LlamaConfig& cfg, int first, int last, Emit emit);

  void OnLinearInput(int layer, LinearGroup group, const MatrixF& x) override;
  absl::Status OnLayerDone(int layer) override;
  int StopAfterLayer() const override { return stop_after_; }

 private:
  LlamaConfig cfg_;
  int first_, last_, stop_after_;
  Emit emit_;
  MatrixD sums_[kNumGroups];
  int64_t tokens_[kNumGroups] = {};
};

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_MODEL_HESSIAN_CAPTURE_H_
