// The forward's ops (quant::ForwardOps, engine/quant/device.h) on one NVIDIA GPU: the layer's
// activations, weights, RoPE tables, Hessian sums and logits chunks live in GPU memory; each
// session has its own stream and cuBLAS handle, so concurrent tasks on one GPU do not share
// state.
//
// What runs where and its numerics (cuda_device_test compares each op with the CPU's):
// - MatMulT: cublasGemmEx, fp32 accumulation (CUBLAS_COMPUTE_32F). Weights stored as bf16/fp16
//   are kept in that dtype (exact: they came from it) and the activations are rounded to it for
//   the product (gemm_in_stored_dtype, the default; the fp32 path otherwise): per element
//   |error| ≲ 2·2⁻⁹·Σ|x||w| (bf16) on top of fp32 accumulation. fp32 weights: true fp32 (no
//   TF32).
// - AccumulateGram: the input converted to fp64, cublasDsyrk; rows whose weight w ≠ 1 added
//   again with α = w − 1 (the CPU's scheme): fp64 throughout.
// - RMSNorm, RoPE (every variant: they differ only in the cos/sin tables), scale/add,
//   SiLU·mul, soft-capping, causal GQA attention (sliding window, score soft-capping) and the
//   NLL chunk statistics: own kernels in fp32 (NLL sums in fp64), rounding order differs from
//   Eigen's.
// - Declines (UNIMPLEMENTED, the forward then runs the CPU code on host copies): attention over
//   sequences longer than kMaxAttentionKeys or heads wider than kMaxAttentionHeadDim.
// Unverified on real hardware while no GPU has been lent (docs/cuda.md).
// Thread-safety: one session per forward; not thread-safe itself.
#ifndef QUANTD_ENGINE_DEVICE_CUDA_CUDA_FORWARD_H_
#define QUANTD_ENGINE_DEVICE_CUDA_CUDA_FORWARD_H_

#include <memory>

#include "absl/status/statusor.h"
#include "engine/quant/device.h"

namespace quantd::cuda {

struct CudaForwardOptions {
  // Default: true. bf16/fp16-stored weights multiply in their dtype (activations rounded to it);
  // false: every GEMM in fp32.
  bool gemm_in_stored_dtype = true;
  // Default: 2^25. AccumulateGram converts at most this many input elements to fp64 at a time.
  int64_t gram_chunk_elements = int64_t{1} << 25;
};

// A forward session on GPU `ordinal`. Errors as MakeCudaDevice.
absl::StatusOr<std::unique_ptr<quant::ForwardOps>> MakeCudaForwardOps(
    int ordinal, CudaForwardOptions options = {});

}  // namespace quantd::cuda

#endif  // QUANTD_ENGINE_DEVICE_CUDA_CUDA_FORWARD_H_
