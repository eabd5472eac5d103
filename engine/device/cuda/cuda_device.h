// The CUDA implementation of quant::Device (engine/quant/device.h) on one NVIDIA GPU: cuBLAS
// for Gram/GEMM/triangular solves, cuSOLVER for Cholesky, our own kernel for the Hadamard
// transform. Inputs and outputs stay in host memory (the Device contract); each call uploads
// its operands, computes on the GPU and downloads the result.
//
// Numerics (what cuda_device_test checks against the CPU device):
// - AccumulateGram converts x to fp64 on the GPU and runs cublasDsyrk, so the whole sum is fp64:
//   |error_ij| ≤ γ_T·Σ_t|x_ti||x_tj| with γ_T ≈ T·2⁻⁵³, far inside the CPU device's fp32-block
//   bound (docs/formats/hessian.md). The update added to h is exactly symmetric.
// - Gemm(fp32) is cublasSgemm with CUBLAS_DEFAULT_MATH (true fp32, never TF32); Gemm(fp64) is
//   cublasDgemm.
// - Cholesky is cusolverDnDpotrf (FAILED_PRECONDITION when not positive definite, like the CPU);
//   SolveLower is cublasDtrsm; both are backward stable like Eigen's.
// - HadamardRows does the CPU's butterflies in the CPU's order: results are bit-identical.
// Thread-safety: the device serializes its calls with a mutex and selects its GPU on every call,
// so it may be used from any thread.
#ifndef QUANTD_ENGINE_DEVICE_CUDA_CUDA_DEVICE_H_
#define QUANTD_ENGINE_DEVICE_CUDA_CUDA_DEVICE_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "engine/quant/device.h"

namespace quantd::cuda {

// Number of CUDA GPUs this process can use; 0 (not an error) when there is no driver or GPU.
int CudaDeviceCount();

struct CudaDeviceOptions {
  // Default: 2^25. AccumulateGram uploads x in chunks of at most this many elements (fp32 plus
  // an fp64 copy on the GPU: 12 bytes each), bounding its scratch memory for long inputs.
  int64_t gram_chunk_elements = int64_t{1} << 25;
};

// The device on GPU `ordinal` (0-based, as in cuda:N). INVALID_ARGUMENT for a negative ordinal;
// FAILED_PRECONDITION when that GPU does not exist or the driver is unusable;
// RESOURCE_EXHAUSTED when the GPU has no memory for the cuBLAS/cuSOLVER handles.
absl::StatusOr<std::unique_ptr<quant::Device>> MakeCudaDevice(int ordinal,
                                                              CudaDeviceOptions options = {});

// Device-resident GEMM throughput of GPU `ordinal` in TFLOP/s (2n³ flops per n×n×n GEMM):
// cublasDgemm (fp64) or cublasSgemm (fp32, CUBLAS_DEFAULT_MATH) on operands already on the GPU,
// one warm-up then `reps` timed calls. The peak the benchmarks compare against. Errors as
// MakeCudaDevice, plus RESOURCE_EXHAUSTED when 3n² elements do not fit.
absl::StatusOr<double> MeasureGemmTflops(int ordinal, int n, bool fp64, int reps = 10);

}  // namespace quantd::cuda

#endif  // QUANTD_ENGINE_DEVICE_CUDA_CUDA_DEVICE_H_
