// The fine-tuning backward's ops (quant::BackwardOps, engine/quant/device.h) on one NVIDIA GPU.
// The arguments are host matrices: each op uploads what it reads (and the outputs it adds
// into), computes on the GPU and downloads what it writes before returning; each session has its
// own stream, cuBLAS handle and scratch buffers (grown, never shrunk).
//
// What runs where and its numerics (cuda_device_test's CudaBackwardOpsTest compares each op
// with model::CpuBackwardOps):
// - ScaledLinearBackward: e = (dy ⊙ a)·C with cublasSgemm (fp32, no TF32); da, db column sums
//   of dy ⊙ z and x ⊙ e and dx += e ⊙ b: own kernels (fp32, another summation order than
//   Eigen's).
// - RmsNormBackward: one block per row for dx, column sums for dw (fp32).
// - RopeBackward: the forward's RoPE kernel with −sin (the rotation's transpose); declines
//   (UNIMPLEMENTED) tables narrower than hd/2 (partial rotary), which the CPU code handles.
// - AttentionBackward: per head, cublasSgemm for dV += Pᵀ·dO, dP = dO·Vᵀ, dQ += dS·K,
//   dK += dSᵀ·Q on the heads' column slices, a kernel for dS = P ⊙ (dP − rowsum(dP ⊙ P)).
// - SiluMulBackward: element-wise kernel (expf).
// Transfers: every op moves its operands both ways (the activations do not stay on the GPU
// between ops, unlike the forward's ops); the linears' fixed matrices C are uploaded on every
// call.
// Unverified on real hardware while no GPU has been lent (docs/cuda.md).
// Thread-safety: one session per thread; not thread-safe itself.
#ifndef QUANTD_ENGINE_DEVICE_CUDA_CUDA_BACKWARD_H_
#define QUANTD_ENGINE_DEVICE_CUDA_CUDA_BACKWARD_H_

#include <memory>

#include "absl/status/statusor.h"
#include "engine/quant/device.h"

namespace quantd::cuda {

// A backward session on GPU `ordinal`. Errors as MakeCudaDevice.
absl::StatusOr<std::unique_ptr<quant::BackwardOps>> MakeCudaBackwardOps(int ordinal);

}  // namespace quantd::cuda

#endif  // QUANTD_ENGINE_DEVICE_CUDA_CUDA_BACKWARD_H_
