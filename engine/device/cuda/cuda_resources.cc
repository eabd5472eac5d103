#include "engine/device/cuda/cuda_resources.h"

#include "engine/device/cuda/cuda_device.h"

namespace quantd::cuda {

absl::StatusOr<Stream> Stream::Create() {
  cudaStream_t s = nullptr;
  QUANTD_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return Stream(s);
}

absl::Status Stream::Synchronize(absl::string_view what) const {
  return CudaStatus(cudaStreamSynchronize(get()),
                    absl::StrCat("cudaStreamSynchronize after ", what));
}

absl::StatusOr<CublasHandle> CublasHandle::Create(cudaStream_t stream) {
  cublasHandle_t h = nullptr;
  QUANTD_CUBLAS_RETURN_IF_ERROR(cublasCreate(&h));
  CublasHandle handle(h);  // owns h from here on, also on the error paths below
  QUANTD_CUBLAS_RETURN_IF_ERROR(cublasSetStream(h, stream));
  QUANTD_CUBLAS_RETURN_IF_ERROR(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));
  return handle;
}

absl::StatusOr<CusolverHandle> CusolverHandle::Create(cudaStream_t stream) {
  cusolverDnHandle_t h = nullptr;
  QUANTD_CUSOLVER_RETURN_IF_ERROR(cusolverDnCreate(&h));
  CusolverHandle handle(h);
  QUANTD_CUSOLVER_RETURN_IF_ERROR(cusolverDnSetStream(h, stream));
  return handle;
}

absl::StatusOr<CudaSession> CudaSession::Open(int ordinal) {
  if (ordinal < 0) {
    return absl::InvalidArgumentError(absl::StrCat("cuda:", ordinal, ": negative GPU ordinal"));
  }
  const int count = CudaDeviceCount();
  if (ordinal >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("cuda:", ordinal, ": no such GPU (this machine has ", count, ")"));
  }
  QUANTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(ordinal));
  QUANTD_ASSIGN_OR_RETURN(Stream stream, Stream::Create());
  QUANTD_ASSIGN_OR_RETURN(CublasHandle blas, CublasHandle::Create(stream.get()));
  return CudaSession{ordinal, std::move(stream), std::move(blas)};
}

absl::Status CudaSession::Select() const {
  return CudaStatus(cudaSetDevice(ordinal), absl::StrCat("cudaSetDevice(", ordinal, ")"));
}

}  // namespace quantd::cuda
