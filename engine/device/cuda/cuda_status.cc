#include "engine/device/cuda/cuda_status.h"

#include "absl/strings/str_cat.h"

namespace quantd::cuda {
namespace {

absl::Status Make(absl::StatusCode code, absl::string_view call, absl::string_view what,
                  absl::string_view name) {
  return absl::Status(code, absl::StrCat(call, ": ", what, " (", name, ")"));
}

// The code of a failed cuBLAS or cuSOLVER call: RESOURCE_EXHAUSTED when it could not allocate,
// FAILED_PRECONDITION when the library is not initialized or the GPU's architecture does not
// fit, INTERNAL otherwise.
absl::StatusCode LibraryCode(bool alloc_failed, bool unusable) {
  if (unusable) return absl::StatusCode::kFailedPrecondition;
  return alloc_failed ? absl::StatusCode::kResourceExhausted : absl::StatusCode::kInternal;
}

const char* CusolverName(cusolverStatus_t s) {
  switch (s) {
    case CUSOLVER_STATUS_SUCCESS: return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE: return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    default: return "cusolverStatus_t";
  }
}

}  // namespace

absl::Status CudaStatus(cudaError_t e, absl::string_view call) {
  if (e == cudaSuccess) return absl::OkStatus();
  absl::StatusCode code = absl::StatusCode::kInternal;
  switch (e) {
    case cudaErrorMemoryAllocation:
      code = absl::StatusCode::kResourceExhausted;
      break;
    case cudaErrorNoDevice:
    case cudaErrorInitializationError:
    case cudaErrorInsufficientDriver:
    case cudaErrorInvalidDevice:
    case cudaErrorDevicesUnavailable:
    case cudaErrorSystemDriverMismatch:
    case cudaErrorCompatNotSupportedOnDevice:
    case cudaErrorNoKernelImageForDevice:
      code = absl::StatusCode::kFailedPrecondition;
      break;
    default:
      break;
  }
  return Make(code, call, cudaGetErrorString(e), cudaGetErrorName(e));
}

absl::Status CublasStatus(cublasStatus_t s, absl::string_view call) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return Make(LibraryCode(s == CUBLAS_STATUS_ALLOC_FAILED,
                          s == CUBLAS_STATUS_NOT_INITIALIZED || s == CUBLAS_STATUS_ARCH_MISMATCH),
              call, cublasGetStatusString(s), cublasGetStatusName(s));
}

absl::Status CusolverStatus(cusolverStatus_t s, absl::string_view call) {
  if (s == CUSOLVER_STATUS_SUCCESS) return absl::OkStatus();
  return Make(LibraryCode(s == CUSOLVER_STATUS_ALLOC_FAILED,
                          s == CUSOLVER_STATUS_NOT_INITIALIZED ||
                              s == CUSOLVER_STATUS_ARCH_MISMATCH),
              call, "cuSOLVER call failed", CusolverName(s));
}

}  // namespace quantd::cuda
