// fp32 reference forward pass of a Llama-family decoder (HF LlamaForCausalLM semantics):
// embeddings, RMSNorm, RoPE in the rotate_half convention, GQA causal attention, SwiGLU MLP,
// final norm, tied or separate lm_head.
// Thread-safety: Forward is reentrant; any number of threads may run it on shared const weights.
// It runs on the calling thread (Eigen may use OpenMP inside GEMMs outside parallel regions).
#ifndef QUANTD_ENGINE_MODEL_FORWARD_H_
#define QUANTD_ENGINE_MODEL_FORWARD_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/matrix.h"
#include "engine/model/config.h"
#include "engine/model/weights.h"
#include "engine/quant/device.h"

namespace quantd::model {

// Receives the input of each linear group during Forward. OnLinearInput is called
// synchronously on the thread running Forward, in layer order (qkv, o, gate_up, down per
// layer); when several threads run Forward with one sink, calls arrive concurrently and the
// sink must synchronise itself. `x` is T x in_features (fp32, row-major) and only valid
// during the call.
class ActivationSink {
 public:
  virtual ~ActivationSink() = default;
  virtual void OnLinearInput(int layer, LinearGroup group, const MatrixF& x) = 0;
  // The residual stream entering `layer` (before its attention norm), for every row: called
  // before the layer's OnLinearInput calls. Default: nothing.
  virtual void OnResidual(int layer, const MatrixF& x) {
    (void)layer;
    (void)x;
  }
  // When ≥ 0, Forward stops after this layer (a sink that only needs the first layers, e.g. a
  // layer-by-layer GPTQ capture) and returns a 0 × vocab matrix. Default: −1, the whole model.
  virtual int StopAfterLayer() const { return -1; }
  // Called by the layer-streamed ForwardBatch (streamed_forward.h) once every row of `layer`
  // has passed (after its down input); the reference Forward does not call it. An error stops
  // the forward and is returned by it. Default: nothing.
  // The layer-streamed ForwardBatch calls this (not OnLinearInput) with the group's input in
  // the memory of the ops it runs on. Default: OnLinearInput with the host matrix (no copy on
  // the host; downloaded from a device). Errors stop the forward.
  virtual absl::Status OnDeviceInput(quant::ForwardOps& ops, int layer, LinearGroup group,
                                     const quant::DeviceMatrix& x);
  // The layer-streamed ForwardBatch calls this (not OnResidual) with the residual in the ops'
  // memory. Default: OnResidual with the host matrix where the ops keep it on the host, nothing
  // on a device (a sink that needs it there overrides this and downloads it).
  virtual absl::Status OnDeviceResidual(quant::ForwardOps& ops, int layer,
                                        const quant::DeviceMatrix& x);
  virtual absl::Status OnLayerDone(int layer) {
    (void)layer;
    return absl::OkStatus();
  }
};

// Returns logits [T x vocab] for one sequence starting at position 0.
// INVALID_ARGUMENT if tokens is empty, longer than max_position_embeddings, or holds an id
// outside [0, vocab_size); or if the weights do not match the config.
absl::StatusOr<MatrixF> Forward(const LlamaConfig& cfg, const LlamaWeights& w,
                                absl::Span<const int32_t> tokens, ActivationSink* sink = nullptr);

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_MODEL_FORWARD_H_
