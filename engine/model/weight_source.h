// Where a layer-streamed forward (streamed_forward.h) gets its weights: one decoder layer at a
// time, in fp32, so that a process holds one layer's weights rather than the whole model.
//  - MemoryWeightSource: views of in-memory LlamaWeights (tests, QuaRot-rotated models).
//  - CheckpointWeightSource: reads each layer from a memory-mapped checkpoint in its stored
//    dtype (F32/F16/BF16, single file or sharded with model.safetensors.index.json), converts
//    it, and releases the mapped pages; a native artifact's "<name>.qweight" tensors are
//    dequantized instead (docs/formats/artifact.md).
// Thread-safety: a source is used by one forward at a time (Layer() reuses its buffers).
#ifndef QUANTD_ENGINE_MODEL_WEIGHT_SOURCE_H_
#define QUANTD_ENGINE_MODEL_WEIGHT_SOURCE_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/matrix.h"
#include "engine/format/checkpoint.h"
#include "engine/model/config.h"
#include "engine/model/weights.h"
#include "engine/quant/device.h"

namespace quantd::model {

// quantd_format 2 (docs/formats/artifact.md): a fine-tuned packed linear "<p>.qweight" may come
// with real scales "<p>.qweight" + kOutScaleSuffix (F32 [out]) and "<p>.qweight" +
// kInScaleSuffix (F32 [in]); its weight is then diag(out)·Dequantize(qweight)·diag(in).
inline constexpr char kOutScaleSuffix[] = "_out_scale";
inline constexpr char kInScaleSuffix[] = "_in_scale";
// Multiplies the dequantized `w` of packed tensor `qname` by its scales when `ckpt` has them.
// DATA_LOSS when only one of the two exists or one is not F32 of the right length.
absl::Status ApplyPackedScales(const Checkpoint& ckpt, const std::string& qname, MatrixF* w);

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // fp32 weights of decoder layer `layer` with shapes checked against the config. The pointer
  // stays valid until the next Layer() call. NOT_FOUND for a missing tensor, INVALID_ARGUMENT
  // for a shape mismatch (naming layer and tensor), DATA_LOSS for a corrupt packed matrix.
  virtual absl::StatusOr<const LayerWeights*> Layer(int layer) = 0;
  // Embedding rows of `tokens` (ids already validated) into `out` [tokens.size() x hidden].
  virtual absl::Status Embed(absl::Span<const int32_t> tokens, MatrixF* out) = 0;
  // model.norm's scale [hidden].
  virtual absl::StatusOr<VectorF> FinalNorm() = 0;
  // Rows [begin, begin + count) of the output projection into `out` [count x hidden]: lm_head,
  // or the embedding when the config ties them.
  virtual absl::Status Head(int begin, int count, MatrixF* out) = 0;
  // The dtype the linears of the last Layer() (LayerDtype) and the rows of the last Head()
  // (HeadDtype) are stored in: kBF16 or kF16 when all of them are (their fp32 values are then
  // exact in it, and a device may run the GEMM in it), else kF32. Default: kF32.
  virtual quant::WeightDtype LayerDtype() const { return quant::WeightDtype::kF32; }
  virtual quant::WeightDtype HeadDtype() const { return quant::WeightDtype::kF32; }
  // QuaRot's online rotations (weights.h). Default: none.
  virtual OnlineRotation online_down() const { return {}; }
  virtual OnlineRotation online_o() const { return {}; }
};

// Views of `w`, which must outlive the source and match `cfg`.
class MemoryWeightSource : public WeightSource {
 public:
  MemoryWeightSource(const LlamaConfig& cfg, const LlamaWeights& w) : cfg_(cfg), w_(w) {}
  absl::StatusOr<const LayerWeights*> Layer(int layer) override;
  absl::Status Embed(absl::Span<const int32_t> tokens, MatrixF* out) override;
  absl::StatusOr<VectorF> FinalNorm() override;
  absl::Status Head(int begin, int count, MatrixF* out) override;
  OnlineRotation online_down() const override { return w_.online_down; }
  OnlineRotation online_o() const override { return w_.online_o; }

 private:
  const LlamaConfig cfg_;
  const LlamaWeights& w_;
};

class CheckpointWeightSource : public WeightSource {
 public:
  // Reads from `ckpt`, which must outlive the source.
  CheckpointWeightSource(const LlamaConfig& cfg, const Checkpoint& ckpt);
  // Owns the checkpoint.
  CheckpointWeightSource(const LlamaConfig& cfg, std::unique_ptr<Checkpoint> ckpt);

  absl::StatusOr<const LayerWeights*> Layer(int layer) override;
  absl::Status Embed(absl::Span<const int32_t> tokens, MatrixF* out) override;
  absl::StatusOr<VectorF> FinalNorm() override;
  absl::Status Head(int begin, int count, MatrixF* out) override;
  quant::WeightDtype LayerDtype() const override { return layer_dtype_; }
  quant::WeightDtype HeadDtype() const override { return head_dtype_; }
  OnlineRotation online_down() const override { return online_down_; }
  OnlineRotation online_o() const override { return online_o_; }

  void set_online(OnlineRotation down, OnlineRotation o) {
    online_down_ = down;
    online_o_ = o;
  }
  const Checkpoint& checkpoint() const { return *ckpt_; }

 private:
  const LlamaConfig cfg_;
  std::unique_ptr<Checkpoint> owned_;
  const Checkpoint* ckpt_;
  LayerWeights layer_;
  quant::WeightDtype layer_dtype_ = quant::WeightDtype::kF32;
  quant::WeightDtype head_dtype_ = quant::WeightDtype::kF32;
  OnlineRotation online_down_, online_o_;
};

// Every weight of `src` in memory (LoadLlamaWeights' result for a CheckpointWeightSource).
absl::StatusOr<LlamaWeights> MaterializeWeights(const LlamaConfig& cfg, WeightSource& src);

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_MODEL_WEIGHT_SOURCE_H_
