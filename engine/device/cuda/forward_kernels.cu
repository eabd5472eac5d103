// Kernels of the CUDA forward ops (forward_kernels.h).
#include "engine/device/cuda/forward_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "engine/device/cuda/kernel_util.cuh"

namespace quantd::cuda {
namespace {

__global__ void ToHalfKernel(const float* in, uint16_t* out, int64_t count, bool bf16) {
  QUANTD_GRID_STRIDE(i, count) {
    out[i] = bf16 ? __bfloat16_as_ushort(__float2bfloat16_rn(in[i]))
                  : __half_as_ushort(__float2half_rn(in[i]));
  }
}

__global__ void RmsNormKernel(const float* x, const float* w, float eps, int64_t n, float* out) {
  __shared__ float scratch[32];
  const float* row = x + blockIdx.x * n;
  float* dst = out + blockIdx.x * n;
  float ss = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) ss += row[i] * row[i];
  ss = BlockSum(ss, scratch);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(n) + eps);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dst[i] = (row[i] * inv) * w[i];
}

__global__ void RopeKernel(const float* cos, const float* sin, int64_t rows, int heads, int hd,
                           int half, float* m, int64_t ld) {
  const int64_t total = rows * heads * half;
  QUANTD_GRID_STRIDE(k, total) {
    const int64_t t = k / (int64_t{heads} * half);
    const int rem = static_cast<int>(k % (int64_t{heads} * half));
    const int h = rem / half, i = rem % half;
    float* v = m + t * ld + int64_t{h} * hd;
    const float c = cos[t * half + i], s = sin[t * half + i];
    const float a = v[i], b = v[i + half];
    v[i] = a * c - b * s;
    v[i + half] = b * c + a * s;
  }
}

__global__ void ScaleKernel(float s, float* m, int64_t count) {
  QUANTD_GRID_STRIDE(i, count) m[i] *= s;
}
__global__ void AddKernel(const float* y, float* x, int64_t count) {
  QUANTD_GRID_STRIDE(i, count) x[i] += y[i];
}
__global__ void SiluMulKernel(const float* u, float* g, int64_t count) {
  QUANTD_GRID_STRIDE(i, count) {
    const float a = g[i];
    g[i] = a / (1.0f + expf(-a)) * u[i];
  }
}
__global__ void SoftcapKernel(float cap, float* m, int64_t count) {
  QUANTD_GRID_STRIDE(i, count) m[i] = tanhf(m[i] / cap) * cap;
}

constexpr int kAttentionThreads = 128;

// grid (rows, heads). Shared: q row [hd], scores [max_len], reduction scratch [32].
__global__ void AttentionKernel(const float* q, const float* k, const float* v,
                                const int64_t* offsets, int nseq, int heads, int kv_heads, int hd,
                                int window, float softcap, float* out) {
  extern __shared__ float smem[];
  float* sq = smem;
  float* scratch = smem + hd;
  float* sc = smem + hd + 32;
  const int64_t r = blockIdx.x;
  const int head = blockIdx.y, kvh = head / (heads / kv_heads);
  int lo_s = 0, hi_s = nseq - 1;  // the sequence s with offsets[s] ≤ r < offsets[s + 1]
  while (lo_s < hi_s) {
    const int mid = (lo_s + hi_s + 1) / 2;
    if (offsets[mid] <= r) lo_s = mid; else hi_s = mid - 1;
  }
  const int64_t base = offsets[lo_s], t = r - base;
  const int64_t lo = window > 0 ? max(int64_t{0}, t - window + 1) : 0, nk = t - lo + 1;
  const int64_t ldq = int64_t{heads} * hd, ldkv = int64_t{kv_heads} * hd;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) sq[d] = q[r * ldq + int64_t{head} * hd + d];
  __syncthreads();
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < nk; j += blockDim.x) {
    const float* kr = k + (base + lo + j) * ldkv + int64_t{kvh} * hd;
    float s = 0;
    for (int d = 0; d < hd; ++d) s += sq[d] * kr[d];
    if (softcap > 0) s = tanhf(s / softcap) * softcap;
    sc[j] = s;
    mx = fmaxf(mx, s);
  }
  mx = BlockMax(mx, scratch);
  float sum = 0;
  for (int64_t j = threadIdx.x; j < nk; j += blockDim.x) {
    const float p = expf(sc[j] - mx);
    sc[j] = p;
    sum += p;
  }
  sum = BlockSum(sum, scratch);  // synchronizes: every sc[j] is written
  const float inv = 1.0f / sum;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc = 0;
    const float* vc = v + (base + lo) * ldkv + int64_t{kvh} * hd + d;
    for (int64_t j = 0; j < nk; ++j) acc += sc[j] * vc[j * ldkv];
    out[r * ldq + int64_t{head} * hd + d] = acc * inv;
  }
}

__global__ void NllChunkKernel(const float* logits, int64_t cols, const int32_t* targets,
                               int col_begin, float* mx_out, double* z_out, float* tl) {
  __shared__ float fscratch[32];
  __shared__ double dscratch[32];
  const int64_t r = blockIdx.x;
  const int32_t target = targets[r];
  if (target < 0) return;
  const float* row = logits + r * cols;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) mx = fmaxf(mx, row[j]);
  mx = BlockMax(mx, fscratch);
  double z = 0;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) z += static_cast<double>(expf(row[j] - mx));
  z = BlockSum(z, dscratch);
  if (threadIdx.x == 0) {
    mx_out[r] = mx;
    z_out[r] = z;
    if (target >= col_begin && target < col_begin + cols) tl[r] = row[target - col_begin];
  }
}

__global__ void GatherRowsToDoubleKernel(const float* x, const int64_t* idx, int64_t count,
                                         int64_t n, double* out) {
  QUANTD_GRID_STRIDE(k, count * n) {
    const int64_t i = k / n, j = k % n;
    const int64_t row = idx != nullptr ? idx[i] : i;
    out[k] = static_cast<double>(x[row * n + j]);
  }
}

__global__ void SymmetrizeLowerKernel(double* g, int64_t n) {
  QUANTD_GRID_STRIDE(k, n * n) {
    const int64_t i = k % n, j = k / n;  // column-major (i, j)
    if (i < j) g[k] = g[j + i * n];
  }
}

}  // namespace

cudaError_t LaunchToHalf(const float* in, uint16_t* out, int64_t count, bool bf16,
                         cudaStream_t stream) {
  if (count > 0) ToHalfKernel<<<Blocks(count), kThreads, 0, stream>>>(in, out, count, bf16);
  return cudaGetLastError();
}

cudaError_t LaunchRmsNorm(const float* x, const float* w, float eps, int64_t rows, int64_t n,
                          float* out, cudaStream_t stream) {
  if (rows > 0) RmsNormKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, w, eps, n, out);
  return cudaGetLastError();
}

cudaError_t LaunchRope(const float* cos, const float* sin, int64_t rows, int heads, int hd,
                       int half, float* m, int64_t ld, cudaStream_t stream) {
  const int64_t total = rows * heads * half;
  if (total > 0) {
    RopeKernel<<<Blocks(total), kThreads, 0, stream>>>(cos, sin, rows, heads, hd, half, m, ld);
  }
  return cudaGetLastError();
}

cudaError_t LaunchScale(float s, float* m, int64_t count, cudaStream_t stream) {
  if (count > 0) ScaleKernel<<<Blocks(count), kThreads, 0, stream>>>(s, m, count);
  return cudaGetLastError();
}
cudaError_t LaunchAdd(const float* y, float* x, int64_t count, cudaStream_t stream) {
  if (count > 0) AddKernel<<<Blocks(count), kThreads, 0, stream>>>(y, x, count);
  return cudaGetLastError();
}
cudaError_t LaunchSiluMul(const float* u, float* g, int64_t count, cudaStream_t stream) {
  if (count > 0) SiluMulKernel<<<Blocks(count), kThreads, 0, stream>>>(u, g, count);
  return cudaGetLastError();
}
cudaError_t LaunchSoftcap(float cap, float* m, int64_t count, cudaStream_t stream) {
  if (count > 0) SoftcapKernel<<<Blocks(count), kThreads, 0, stream>>>(cap, m, count);
  return cudaGetLastError();
}

cudaError_t LaunchAttention(const float* q, const float* k, const float* v,
                            const int64_t* offsets, int nseq, int64_t rows, int heads,
                            int kv_heads, int hd, int window, float softcap, int64_t max_len,
                            float* out, cudaStream_t stream) {
  if (rows > 0 && heads > 0) {
    const size_t shared = sizeof(float) * (hd + 32 + max_len);
    const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(heads));
    AttentionKernel<<<grid, kAttentionThreads, shared, stream>>>(q, k, v, offsets, nseq, heads,
                                                                 kv_heads, hd, window, softcap,
                                                                 out);
  }
  return cudaGetLastError();
}

cudaError_t LaunchNllChunk(const float* logits, int64_t rows, int64_t cols, const int32_t* targets,
                           int col_begin, float* mx, double* z, float* tl, cudaStream_t stream) {
  if (rows > 0 && cols > 0) {
    NllChunkKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(logits, cols, targets,
                                                                         col_begin, mx, z, tl);
  }
  return cudaGetLastError();
}

cudaError_t LaunchGatherRowsToDouble(const float* x, const int64_t* rows_idx, int64_t count,
                                     int64_t n, double* out, cudaStream_t stream) {
  if (count * n > 0) {
    GatherRowsToDoubleKernel<<<Blocks(count * n), kThreads, 0, stream>>>(x, rows_idx, count, n, out);
  }
  return cudaGetLastError();
}

cudaError_t LaunchSymmetrizeLower(double* g, int64_t n, cudaStream_t stream) {
  if (n > 0) SymmetrizeLowerKernel<<<Blocks(n * n), kThreads, 0, stream>>>(g, n);
  return cudaGetLastError();
}

}  // namespace quantd::cuda
