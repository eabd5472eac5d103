// Kernels of the CUDA backward ops (backward_kernels.h).
#include "engine/device/cuda/backward_kernels.h"

#include "engine/device/cuda/kernel_util.cuh"

namespace quantd::cuda {
namespace {

constexpr int kColumnTile = 32, kRowSplit = 8;

__global__ void ScaleColumnsKernel(const float* in, const float* s, int64_t rows, int64_t cols,
                                   bool accumulate, float* out) {
  QUANTD_GRID_STRIDE(k, rows * cols) {
    const float v = in[k] * s[k % cols];
    out[k] = accumulate ? out[k] + v : v;
  }
}

// block (kColumnTile, kRowSplit): column blockIdx.x·kColumnTile + threadIdx.x, rows
// threadIdx.y, threadIdx.y + kRowSplit, ...; the kRowSplit partial sums added in order.
__global__ void ColumnDotSumKernel(const float* x, const float* y, const float* row_scale,
                                   int64_t rows, int64_t cols, float* out) {
  __shared__ float part[kRowSplit][kColumnTile];
  const int64_t j = blockIdx.x * int64_t{kColumnTile} + threadIdx.x;
  float acc = 0;
  if (j < cols) {
    for (int64_t t = threadIdx.y; t < rows; t += kRowSplit) {
      const float v = x[t * cols + j] * y[t * cols + j];
      acc += row_scale != nullptr ? v * row_scale[t] : v;
    }
  }
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && j < cols) {
    float total = 0;
    for (int i = 0; i < kRowSplit; ++i) total += part[i][threadIdx.x];
    out[j] += total;
  }
}

__global__ void RmsNormBackwardRowsKernel(const float* x, const float* w, const float* inv_rms,
                                          const float* dy, int64_t n, float* dx) {
  __shared__ float scratch[32];
  const int64_t base = blockIdx.x * n;
  const float r = inv_rms[blockIdx.x];
  float dot = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    dot += dy[base + i] * w[i] * (x[base + i] * r);
  }
  const float mean = BlockSum(dot, scratch) / static_cast<float>(n);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float g = dy[base + i] * w[i], xh = x[base + i] * r;
    dx[base + i] += r * (g - xh * mean);
  }
}

__global__ void SoftmaxBackwardRowsKernel(const float* p, int64_t t, float* dp) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x, base = row * t;
  float dot = 0;
  for (int64_t j = threadIdx.x; j <= row; j += blockDim.x) dot += dp[base + j] * p[base + j];
  dot = BlockSum(dot, scratch);
  for (int64_t j = threadIdx.x; j < t; j += blockDim.x) {
    dp[base + j] = j <= row ? p[base + j] * (dp[base + j] - dot) : 0.0f;
  }
}

__global__ void SiluMulBackwardKernel(const float* g, const float* u, const float* dout,
                                      int64_t count, float* dg, float* du) {
  QUANTD_GRID_STRIDE(i, count) {
    const float a = g[i], sig = 1.0f / (1.0f + expf(-a));
    du[i] = dout[i] * a * sig;
    dg[i] = dout[i] * u[i] * sig * (1.0f + a * (1.0f - sig));
  }
}

}  // namespace

cudaError_t LaunchScaleColumns(const float* in, const float* s, int64_t rows, int64_t cols,
                               bool accumulate, float* out, cudaStream_t stream) {
  if (rows * cols > 0) {
    ScaleColumnsKernel<<<Blocks(rows * cols), kThreads, 0, stream>>>(in, s, rows, cols,
                                                                      accumulate, out);
  }
  return cudaGetLastError();
}

cudaError_t LaunchColumnDotSum(const float* x, const float* y, const float* row_scale,
                               int64_t rows, int64_t cols, float* out, cudaStream_t stream) {
  if (rows > 0 && cols > 0) {
    const unsigned tiles = static_cast<unsigned>((cols + kColumnTile - 1) / kColumnTile);
    ColumnDotSumKernel<<<tiles, dim3(kColumnTile, kRowSplit), 0, stream>>>(x, y, row_scale, rows,
                                                                          cols, out);
  }
  return cudaGetLastError();
}

cudaError_t LaunchRmsNormBackwardRows(const float* x, const float* w, const float* inv_rms,
                                      const float* dy, int64_t rows, int64_t n, float* dx,
                                      cudaStream_t stream) {
  if (rows > 0 && n > 0) {
    RmsNormBackwardRowsKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        x, w, inv_rms, dy, n, dx);
  }
  return cudaGetLastError();
}

cudaError_t LaunchSoftmaxBackwardRows(const float* p, int64_t t, float* dp, cudaStream_t stream) {
  if (t > 0) SoftmaxBackwardRowsKernel<<<static_cast<unsigned>(t), kThreads, 0, stream>>>(p, t, dp);
  return cudaGetLastError();
}

cudaError_t LaunchSiluMulBackward(const float* g, const float* u, const float* dout,
                                  int64_t count, float* dg, float* du, cudaStream_t stream) {
  if (count > 0) {
    SiluMulBackwardKernel<<<Blocks(count), kThreads, 0, stream>>>(g, u, dout, count, dg, du);
  }
  return cudaGetLastError();
}

}  // namespace quantd::cuda
