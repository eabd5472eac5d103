// RAII owners of CUDA resources: device memory, a stream, a cuBLAS handle, a cuSOLVER dense
// handle. Each is created by a static factory that returns a status naming the failed call
// (RESOURCE_EXHAUSTED when memory runs out, FAILED_PRECONDITION without a usable GPU) and is
// released in its destructor; nothing outside this file calls cudaMalloc/cudaFree or
// create/destroy functions directly. All are move-only. Also the small helpers every CUDA op
// file uses: Ensure (grow a scratch buffer) and FitsInt (cuBLAS's int dimensions).
// Thread-safety: an object may be used by one thread at a time; the caller selects the GPU
// (cudaSetDevice) before creating or using one.
#ifndef QUANTD_ENGINE_DEVICE_CUDA_CUDA_RESOURCES_H_
#define QUANTD_ENGINE_DEVICE_CUDA_CUDA_RESOURCES_H_

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "engine/device/cuda/cuda_status.h"

namespace quantd::cuda {

// count elements of T in device memory (uninitialized). Empty buffers (count 0) own nothing.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static absl::StatusOr<DeviceBuffer> Allocate(size_t count) {
    DeviceBuffer b;
    if (count == 0) return b;
    void* p = nullptr;
    absl::Status s = CudaStatus(cudaMalloc(&p, count * sizeof(T)),
                                absl::StrCat("cudaMalloc(", count * sizeof(T), " bytes)"));
    if (!s.ok()) {
      cudaGetLastError();  // clear the (non-sticky) allocation error
      return s;
    }
    b.ptr_ = static_cast<T*>(p);
    b.count_ = count;
    return b;
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), count_(std::exchange(o.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      Reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      count_ = std::exchange(o.count_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { Reset(); }

  T* get() const { return ptr_; }
  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }

 private:
  void Reset() {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    count_ = 0;
  }
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

// Grows `buf` to at least `count` elements (contents not kept).
template <typename T>
absl::Status Ensure(DeviceBuffer<T>* buf, size_t count) {
  if (buf->size() >= count) return absl::OkStatus();
  *buf = DeviceBuffer<T>();
  QUANTD_ASSIGN_OR_RETURN(*buf, DeviceBuffer<T>::Allocate(count));
  return absl::OkStatus();
}

// INVALID_ARGUMENT naming `what` when v exceeds the int range of cuBLAS's dimensions.
inline absl::Status FitsInt(int64_t v, const char* what) {
  if (v > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " ", v, " exceeds cuBLAS's int range"));
  }
  return absl::OkStatus();
}

// Owns a handle `H` of the CUDA runtime or a CUDA library, released with `Destroy`
// (cudaStreamDestroy, cublasDestroy, cusolverDnDestroy). Move-only; a moved-from owner holds
// nothing. The base of Stream, CublasHandle and CusolverHandle.
template <typename H, auto Destroy>
class OwnedHandle {
 public:
  OwnedHandle(OwnedHandle&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  OwnedHandle& operator=(OwnedHandle&& o) noexcept {
    if (this != &o) {
      Reset();
      h_ = std::exchange(o.h_, nullptr);
    }
    return *this;
  }
  OwnedHandle(const OwnedHandle&) = delete;
  OwnedHandle& operator=(const OwnedHandle&) = delete;
  ~OwnedHandle() { Reset(); }
  H get() const { return h_; }

 protected:
  explicit OwnedHandle(H h) : h_(h) {}

 private:
  void Reset() {
    if (h_ != nullptr) Destroy(h_);
  }
  H h_ = nullptr;
};

class Stream : public OwnedHandle<cudaStream_t, cudaStreamDestroy> {
 public:
  static absl::StatusOr<Stream> Create();
  // Waits for all work queued on the stream; the status names `what` (the operation waited for).
  absl::Status Synchronize(absl::string_view what) const;

 private:
  explicit Stream(cudaStream_t s) : OwnedHandle(s) {}
};

class CublasHandle : public OwnedHandle<cublasHandle_t, cublasDestroy> {
 public:
  // Bound to `stream` (not owned; must outlive the handle). Math mode CUBLAS_DEFAULT_MATH: fp32
  // GEMMs are computed in fp32, never TF32.
  static absl::StatusOr<CublasHandle> Create(cudaStream_t stream);

 private:
  explicit CublasHandle(cublasHandle_t h) : OwnedHandle(h) {}
};

class CusolverHandle : public OwnedHandle<cusolverDnHandle_t, cusolverDnDestroy> {
 public:
  static absl::StatusOr<CusolverHandle> Create(cudaStream_t stream);

 private:
  explicit CusolverHandle(cusolverDnHandle_t h) : OwnedHandle(h) {}
};

// What an op session (the forward's, the backward's) owns: GPU `ordinal` selected, a stream
// and a cuBLAS handle on it (declared after the stream: destroyed first).
struct CudaSession {
  // INVALID_ARGUMENT for a negative ordinal, FAILED_PRECONDITION for a GPU this machine lacks,
  // else the resources' errors.
  static absl::StatusOr<CudaSession> Open(int ordinal);
  // cudaSetDevice(ordinal) as a status (before each op: the caller's thread may have another).
  absl::Status Select() const;

  int ordinal = 0;
  Stream stream;
  CublasHandle blas;
};

}  // namespace quantd::cuda

#endif  // QUANTD_ENGINE_DEVICE_CUDA_CUDA_RESOURCES_H_
