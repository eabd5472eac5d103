// One Llama decoder block (RMSNorm, q/k/v, RoPE, causal GQA attention, o, RMSNorm, SwiGLU,
// down, two residual adds) as a differentiable function of its input and of its tunable
// parameters: the two norm scales and the real input/output scales of each linear
// (backward_ops.h: W = diag(a)·C·diag(b)). Used by the block-wise fine-tuning (finetune.h).
// Only the plain Llama block is supported (BlockDimsFor says which configs qualify).
// Thread-safety: stateless functions; the caller gives each thread its own cache and grads.
#ifndef QUANTD_ENGINE_MODEL_BLOCK_GRAD_H_
#define QUANTD_ENGINE_MODEL_BLOCK_GRAD_H_

#include <array>

#include "absl/status/statusor.h"
#include "engine/model/backward_ops.h"
#include "engine/model/config.h"
#include "engine/model/weights.h"
#include "engine/quant/device.h"

namespace quantd::model::grad {

inline constexpr int kBlockLinears = 7;  // indexed by static_cast<int>(Linear)

struct BlockDims {
  int hidden = 0, heads = 0, kv_heads = 0, head_dim = 0, intermediate = 0;
  double eps = 1e-6;
  double attn_scale = 1.0;  // scores are q·k·attn_scale
};

// The dims of decoder block `layer` of `cfg`. FAILED_PRECONDITION naming the feature when the
// block is not a plain Llama block (biases, q/k norms, sliding window, soft-cap, Gemma norms or
// GeGLU, sandwich norms): the backward pass covers only the plain block.
absl::StatusOr<BlockDims> BlockDimsFor(const LlamaConfig& cfg, int layer);

template <typename T>
struct ScaledLinear {
  Mat<T> c;   // [out x in], fixed
  Vec<T> a;   // [out], tunable output scale
  Vec<T> b;   // [in], tunable input scale
};

template <typename T>
struct BlockParams {
  Vec<T> attn_norm, ffn_norm;  // [hidden]
  std::array<ScaledLinear<T>, kBlockLinears> lin;
};

// Gradients of the tunable parameters (same shapes as in BlockParams).
template <typename T>
struct BlockGrads {
  Vec<T> attn_norm, ffn_norm;
  std::array<Vec<T>, kBlockLinears> a, b;
  void Zero(const BlockParams<T>& p);
  void Add(const BlockGrads& o);
};

// Everything the backward pass of one sequence needs (filled by BlockForward).
template <typename T>
struct BlockCache {
  Mat<T> x, h1, x2, h2, attn, act, g, u;
  Vec<T> r1, r2;
  std::array<Mat<T>, kBlockLinears> z;  // pre-output-scale products
  Mat<T> q, k, v;                        // after RoPE, q scaled
  std::vector<Mat<T>> p;                 // attention probabilities per head
};

// BlockParams from fp32 weights: C = the weight, a = b = 1.
template <typename T>
BlockParams<T> ParamsFromWeights(const LayerWeights& lw);
// Writes diag(a)·C·diag(b) and the norms back into fp32 weights.
template <typename T>
void WriteParams(const BlockParams<T>& p, LayerWeights* lw);

// y = block(x) for one sequence x [T x hidden] at positions 0..T-1; cos/sin [≥T x head_dim/2].
template <typename T>
void BlockForward(const BlockDims& d, const BlockParams<T>& p, const Mat<T>& cos,
                  const Mat<T>& sin, const Mat<T>& x, BlockCache<T>* cache, Mat<T>* y);
// Adds the gradients of the parameters into *g (call g->Zero first); dx (nullable) receives
// ∂L/∂x. dy = ∂L/∂y.
template <typename T>
void BlockBackward(const BlockDims& d, const BlockParams<T>& p, const Mat<T>& cos,
                   const Mat<T>& sin, const BlockCache<T>& cache, const Mat<T>& dy,
                   BlockGrads<T>* g, Mat<T>* dx);
// The same with every backward op on `ops` when T is float and ops is non-null (the worker's
// device's, through a model::BackwardOpsSession; a CpuBackwardOps gives the bits of the above),
// else backward_ops.h's code. Errors are the ops' (a device out of memory, say).
template <typename T>
absl::Status BlockBackwardOn(const BlockDims& d, const BlockParams<T>& p, const Mat<T>& cos,
                             const Mat<T>& sin, const BlockCache<T>& cache, const Mat<T>& dy,
                             BlockGrads<T>* g, Mat<T>* dx, quant::BackwardOps* ops);

}  // namespace quantd::model::grad

#endif  // QUANTD_ENGINE_MODEL_BLOCK_GRAD_H_
