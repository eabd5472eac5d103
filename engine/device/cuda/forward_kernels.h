// Kernels of the CUDA forward ops (cuda_forward.h): the small element-wise and per-row work of a
// decoder layer; the GEMMs and the Hessian SYRK are cuBLAS. Each launcher queues its work on
// `stream` and returns the launch status (cudaGetLastError); pointers are device memory,
// matrices row-major fp32 unless stated.
// Thread-safety: launchers are stateless.
#ifndef QUANTD_ENGINE_DEVICE_CUDA_FORWARD_KERNELS_H_
#define QUANTD_ENGINE_DEVICE_CUDA_FORWARD_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace quantd::cuda {

// out[i] = bf16(in[i]) (bf16 = true) or fp16(in[i]), round to nearest even; `out` holds the
// 16-bit patterns.
cudaError_t LaunchToHalf(const float* in, uint16_t* out, int64_t count, bool bf16,
                         cudaStream_t stream);

// out[r] = x[r] / sqrt(mean(x[r]²) + eps) ⊙ w for each of `rows` rows of length n (w already
// includes any (1 + w) offset). One block per row; fp32 sum of squares (a tree, not Eigen's
// order).
cudaError_t LaunchRmsNorm(const float* x, const float* w, float eps, int64_t rows, int64_t n,
                          float* out, cudaStream_t stream);

// rotate_half RoPE on rows [0, rows) of m (row stride `ld` floats): every head h < heads, pairs
// (i, i + half) for i < half, using row t of cos/sin [rows × half].
cudaError_t LaunchRope(const float* cos, const float* sin, int64_t rows, int heads, int hd,
                       int half, float* m, int64_t ld, cudaStream_t stream);

// m[i] *= s; x[i] += y[i]; g[i] = silu(g[i])·u[i]; m[i] = cap·tanh(m[i]/cap).
cudaError_t LaunchScale(float s, float* m, int64_t count, cudaStream_t stream);
cudaError_t LaunchAdd(const float* y, float* x, int64_t count, cudaStream_t stream);
cudaError_t LaunchSiluMul(const float* u, float* g, int64_t count, cudaStream_t stream);
cudaError_t LaunchSoftcap(float cap, float* m, int64_t count, cudaStream_t stream);

// Longest sequence AttentionKernel takes (its scores live in 48 KiB of shared memory).
constexpr int64_t kMaxAttentionKeys = 11264;
// Largest head_dim AttentionKernel takes.
constexpr int kMaxAttentionHeadDim = 512;

// Causal GQA attention: `offsets` (device, nseq + 1 entries) delimit the sequences; q [N ×
// heads·hd] pre-scaled, k/v [N × kv_heads·hd], out [N × heads·hd]. One block per (row, head):
// scores in shared memory, softmax with the max subtracted (fp32), then Σ p·v. window > 0:
// keys (t − window, t]; softcap > 0: scores ← softcap·tanh(score/softcap). max_len ≤
// kMaxAttentionKeys.
cudaError_t LaunchAttention(const float* q, const float* k, const float* v,
                            const int64_t* offsets, int nseq, int64_t rows, int heads,
                            int kv_heads, int hd, int window, float softcap, int64_t max_len,
                            float* out, cudaStream_t stream);

// Per row r of logits [rows × cols] with targets[r] ≥ 0: mx[r] = max, z[r] = Σ (double)
// expf(l − mx) (fp32 exp, fp64 sum, as the CPU), tl[r] = the target's logit when
// col_begin ≤ target < col_begin + cols (else untouched). One block per row.
cudaError_t LaunchNllChunk(const float* logits, int64_t rows, int64_t cols, const int32_t* targets,
                           int col_begin, float* mx, double* z, float* tl, cudaStream_t stream);

// out[i·n + j] = (double) x[rows_idx[i]·n + j] for i < count (gather of fp32 rows to
// fp64), rows_idx device memory; rows_idx = nullptr: rows 0..count-1.
cudaError_t LaunchGatherRowsToDouble(const float* x, const int64_t* rows_idx, int64_t count,
                                     int64_t n, double* out, cudaStream_t stream);

// Mirrors the lower triangle of the column-major n×n g (DSYRK's output) into its upper one.
cudaError_t LaunchSymmetrizeLower(double* g, int64_t n, cudaStream_t stream);

}  // namespace quantd::cuda

#endif  // QUANTD_ENGINE_DEVICE_CUDA_FORWARD_KERNELS_H_
