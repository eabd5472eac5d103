// Helpers shared by the CUDA kernel files (cuda_kernels.cu, forward_kernels.cu,
// backward_kernels.cu): the launch geometry of grid-stride kernels and warp/block reductions.
// Include only from .cu files; everything here is internal linkage per file.
// Thread-safety: stateless.
#ifndef QUANTD_ENGINE_DEVICE_CUDA_KERNEL_UTIL_CUH_
#define QUANTD_ENGINE_DEVICE_CUDA_KERNEL_UTIL_CUH_

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace quantd::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535 * 16;

// Blocks of kThreads for `work` items of a grid-stride loop (at least 1, at most kMaxBlocks).
inline int Blocks(int64_t work) {
  return static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, kMaxBlocks)));
}

#define QUANTD_GRID_STRIDE(i, count)                                           \
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < (count); \
       i += int64_t{gridDim.x} * blockDim.x)

struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <typename T, typename Op>
__device__ inline T WarpReduce(T v, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide reduction (blockDim.x a multiple of 32, ≤ 1024; scratch ≥ 32 elements): each
// warp's result, then the warps' in order from `init`. Every thread gets the result.
template <typename T, typename Op>
__device__ inline T BlockReduce(T v, T* scratch, T init, Op op) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = WarpReduce(v, op);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = init;
  for (int w = 0; w < warps; ++w) total = op(total, scratch[w]);
  return total;
}
template <typename T>
__device__ inline T BlockSum(T v, T* scratch) {
  return BlockReduce(v, scratch, T(0), SumOp());
}
__device__ inline float BlockMax(float v, float* scratch) {
  return BlockReduce(v, scratch, -INFINITY, MaxOp());
}

}  // namespace
}  // namespace quantd::cuda

#endif  // QUANTD_ENGINE_DEVICE_CUDA_KERNEL_UTIL_CUH_
