// The CUDA device's own kernels (cuda_kernels.h). Kept in one .cu file so the build compiles
// little device code.
#include "engine/device/cuda/cuda_kernels.h"

#include <algorithm>

#include "engine/device/cuda/kernel_util.cuh"

namespace quantd::cuda {
namespace {

constexpr int64_t kFwhtChunk = 4096;  // doubles in shared memory per block: 32 KiB

__global__ void FloatToDoubleKernel(const float* in, double* out, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = static_cast<double>(in[i]);
  }
}

__global__ void AddSymmetricLowerKernel(const double* g, double* h, int64_t n) {
  const int64_t total = n * n;
  for (int64_t k = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; k < total;
       k += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = k / n, j = k % n;
    const int64_t r = i > j ? i : j, c = i > j ? j : i;
    h[k] += g[r + c * n];
  }
}

// One block per chunk of `chunk` elements (chunk = len when len ≤ kFwhtChunk): stages
// h = 1 .. chunk/2 in shared memory; multiplies by `scale` on the way out.
__global__ void FwhtSharedKernel(double* data, int64_t chunk, double scale) {
  extern __shared__ double s[];
  double* x = data + blockIdx.x * chunk;
  for (int64_t i = threadIdx.x; i < chunk; i += blockDim.x) s[i] = x[i];
  __syncthreads();
  const int64_t half = chunk / 2;
  for (int64_t h = 1; h < chunk; h <<= 1) {
    for (int64_t p = threadIdx.x; p < half; p += blockDim.x) {
      const int64_t i = (p / h) * 2 * h + (p % h);
      const double a = s[i], b = s[i + h];
      s[i] = a + b;
      s[i + h] = a - b;
    }
    __syncthreads();
  }
  for (int64_t i = threadIdx.x; i < chunk; i += blockDim.x) x[i] = s[i] * scale;
}

// One butterfly stage of stride h over all rows; pairs (i, i+h) within each row.
__global__ void FwhtStageKernel(double* data, int64_t rows, int64_t len, int64_t h, double scale,
                                bool apply_scale) {
  const int64_t half = len / 2, total = rows * half;
  for (int64_t k = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; k < total;
       k += int64_t{gridDim.x} * blockDim.x) {
    const int64_t row = k / half, p = k % half;
    double* x = data + row * len + (p / h) * 2 * h + (p % h);
    const double a = x[0], b = x[h];
    if (apply_scale) {
      x[0] = (a + b) * scale;
      x[h] = (a - b) * scale;
    } else {
      x[0] = a + b;
      x[h] = a - b;
    }
  }
}

}  // namespace

cudaError_t LaunchFloatToDouble(const float* in, double* out, int64_t count, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  FloatToDoubleKernel<<<Blocks(count), kThreads, 0, stream>>>(in, out, count);
  return cudaGetLastError();
}

cudaError_t LaunchAddSymmetricLower(const double* g, double* h, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  AddSymmetricLowerKernel<<<Blocks(n * n), kThreads, 0, stream>>>(g, h, n);
  return cudaGetLastError();
}

cudaError_t LaunchFwhtRows(double* data, int64_t rows, int64_t len, double scale,
                           cudaStream_t stream) {
  if (rows <= 0 || len <= 0) return cudaSuccess;
  if (len == 1) return cudaSuccess;  // H_1 = [1] and the normalized scale is 1
  const int64_t chunk = std::min(len, kFwhtChunk);
  const int64_t blocks = rows * (len / chunk);
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, chunk / 2));
  const bool single_pass = len <= kFwhtChunk;
  // Shared-memory pass; launched in slices so the grid stays below its x-dimension limit.
  constexpr int64_t kMaxGrid = int64_t{1} << 30;
  for (int64_t b0 = 0; b0 < blocks; b0 += kMaxGrid) {
    const int64_t nb = std::min(kMaxGrid, blocks - b0);
    FwhtSharedKernel<<<static_cast<unsigned>(nb), threads, chunk * sizeof(double), stream>>>(
        data + b0 * chunk, chunk, single_pass ? scale : 1.0);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  for (int64_t h = chunk; h < len; h <<= 1) {
    const bool last = (h << 1) >= len;
    FwhtStageKernel<<<Blocks(rows * len / 2), kThreads, 0, stream>>>(data, rows, len, h, scale,
                                                                   last);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace quantd::cuda
