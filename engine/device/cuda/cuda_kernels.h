// Hand-written CUDA kernels of the CUDA device (the operations cuBLAS/cuSOLVER have no
// equivalent for). Each launcher queues its work on `stream` and returns the launch status
// (cudaGetLastError); pointers are device memory.
// Thread-safety: launchers are stateless.
#ifndef QUANTD_ENGINE_DEVICE_CUDA_CUDA_KERNELS_H_
#define QUANTD_ENGINE_DEVICE_CUDA_CUDA_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace quantd::cuda {

// out[i] = (double) in[i] for i < count.
cudaError_t LaunchFloatToDouble(const float* in, double* out, int64_t count, cudaStream_t stream);

// h[i][j] += g(max(i,j), min(i,j)) for the n×n matrix h (either layout; the update is
// symmetric) and g column-major n×n of which only the lower triangle is read (DSYRK's output).
cudaError_t LaunchAddSymmetricLower(const double* g, double* h, int64_t n, cudaStream_t stream);

// Normalized fast Walsh–Hadamard transform of each of the `rows` rows (row-major, `len` a power
// of two ≥ 1) in place: x ← H x · scale. Same butterflies in the same order as the CPU's Fwht
// (stride 1, 2, 4, ...) and the scale applied last, so results match the CPU bit for bit.
// Rows up to 4096 long are done in shared memory by one block; longer rows do their first 12
// stages per 4096-element chunk in shared memory and the rest as global passes.
cudaError_t LaunchFwhtRows(double* data, int64_t rows, int64_t len, double scale,
                           cudaStream_t stream);

}  // namespace quantd::cuda

#endif  // QUANTD_ENGINE_DEVICE_CUDA_CUDA_KERNELS_H_
