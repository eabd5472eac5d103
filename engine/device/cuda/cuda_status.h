// CUDA, cuBLAS and cuSOLVER return codes as absl::Status, naming the call that failed.
// Allocation failures (cudaErrorMemoryAllocation, CUBLAS_STATUS_ALLOC_FAILED,
// CUSOLVER_STATUS_ALLOC_FAILED) are RESOURCE_EXHAUSTED; a missing driver or GPU
// (cudaErrorNoDevice, cudaErrorInsufficientDriver, cudaErrorInvalidDevice, ...) is
// FAILED_PRECONDITION; everything else is INTERNAL.
// Thread-safety: stateless functions.
#ifndef QUANTD_ENGINE_DEVICE_CUDA_CUDA_STATUS_H_
#define QUANTD_ENGINE_DEVICE_CUDA_CUDA_STATUS_H_

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"

namespace quantd::cuda {

// OK for cudaSuccess; otherwise e.g. "cudaMalloc(8388608 bytes): out of memory
// (cudaErrorMemoryAllocation)". Reading the status does not clear CUDA's sticky error state.
absl::Status CudaStatus(cudaError_t e, absl::string_view call);
absl::Status CublasStatus(cublasStatus_t s, absl::string_view call);
absl::Status CusolverStatus(cusolverStatus_t s, absl::string_view call);

}  // namespace quantd::cuda

// Evaluates a CUDA / cuBLAS / cuSOLVER call; returns the mapped status from the enclosing
// function when it fails. The message names the call as written.
#define QUANTD_CUDA_RETURN_IF_ERROR(call) \
  QUANTD_RETURN_IF_ERROR(::quantd::cuda::CudaStatus((call), #call))
#define QUANTD_CUBLAS_RETURN_IF_ERROR(call) \
  QUANTD_RETURN_IF_ERROR(::quantd::cuda::CublasStatus((call), #call))
#define QUANTD_CUSOLVER_RETURN_IF_ERROR(call) \
  QUANTD_RETURN_IF_ERROR(::quantd::cuda::CusolverStatus((call), #call))

#endif  // QUANTD_ENGINE_DEVICE_CUDA_CUDA_STATUS_H_
