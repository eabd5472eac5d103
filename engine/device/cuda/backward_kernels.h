// Kernels of the CUDA backward ops (cuda_backward.h): the element-wise, per-row and per-column
// work of the fine-tuning backward; the GEMMs are cuBLAS and the RoPE transpose is the forward's
// LaunchRope with −sin. Each launcher queues its work on `stream` and returns the launch status
// (cudaGetLastError); pointers are device memory, matrices row-major fp32.
// Thread-safety: launchers are stateless.
#ifndef QUANTD_ENGINE_DEVICE_CUDA_BACKWARD_KERNELS_H_
#define QUANTD_ENGINE_DEVICE_CUDA_BACKWARD_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace quantd::cuda {

// out[t, j] = in[t, j]·s[j] (accumulate: out[t, j] += in[t, j]·s[j]) for a rows × cols matrix.
cudaError_t LaunchScaleColumns(const float* in, const float* s, int64_t rows, int64_t cols,
                               bool accumulate, float* out, cudaStream_t stream);

// out[j] += Σ_t x[t, j]·y[t, j]·(row_scale ? row_scale[t] : 1) for rows × cols x, y: one
// thread column per j, the rows split over 8 threads and summed in a fixed order (fp32).
cudaError_t LaunchColumnDotSum(const float* x, const float* y, const float* row_scale,
                               int64_t rows, int64_t cols, float* out, cudaStream_t stream);

// RMSNorm's input gradient, row t of rows × n: with r = inv_rms[t], x̂ = x·r, g = dy ⊙ w,
// dx += r·(g − x̂·mean(g ⊙ x̂)). One block per row (fp32 block sum).
cudaError_t LaunchRmsNormBackwardRows(const float* x, const float* w, const float* inv_rms,
                                      const float* dy, int64_t rows, int64_t n, float* dx,
                                      cudaStream_t stream);

// Softmax backward of one head's causal attention, in place: dp [t × t] holds dP = dO·Vᵀ and
// becomes dS = P ⊙ (dP − Σ_{j ≤ i} dP_ij·P_ij) row-wise (zero above the diagonal, where P is).
// One block per row.
cudaError_t LaunchSoftmaxBackwardRows(const float* p, int64_t t, float* dp, cudaStream_t stream);

// out = silu(g) ⊙ u backward: dg = dout ⊙ u ⊙ σ(g)·(1 + g·(1 − σ(g))), du = dout ⊙ g·σ(g).
cudaError_t LaunchSiluMulBackward(const float* g, const float* u, const float* dout,
                                  int64_t count, float* dg, float* du, cudaStream_t stream);

}  // namespace quantd::cuda

#endif  // QUANTD_ENGINE_DEVICE_CUDA_BACKWARD_KERNELS_H_
