#include "engine/device/cuda/cuda_device.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "common/mutex.h"
#include "common/status_macros.h"
#include "engine/device/cuda/cuda_backward.h"
#include "engine/device/cuda/cuda_forward.h"
#include "engine/device/cuda/cuda_kernels.h"
#include "engine/device/cuda/cuda_resources.h"
#include "engine/device/cuda/cuda_status.h"

namespace quantd::cuda {
namespace {

std::string Shape(int64_t r, int64_t c) { return absl::StrCat("[", r, ",", c, "]"); }

// c = a·b for densely stored column-major operands a [m x k], b [k x n], c [m x n]: one
// cublasSgemm (fp32, in the handle's math mode) or cublasDgemm, named in the status.
template <typename T>
absl::Status GemmNN(cublasHandle_t h, int m, int n, int k, const T* a, const T* b, T* c) {
  const T one = 1, zero = 0;
  if constexpr (std::is_same_v<T, float>) {
    return CublasStatus(
        cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, a, m, b, k, &zero, c, m),
        "cublasSgemm");
  } else {
    return CublasStatus(
        cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, a, m, b, k, &zero, c, m),
        "cublasDgemm");
  }
}

absl::Status SelectGpu(int ordinal) {
  return CudaStatus(cudaSetDevice(ordinal), absl::StrCat("cudaSetDevice(", ordinal, ")"));
}

template <typename T>
absl::StatusOr<DeviceBuffer<T>> Upload(const T* host, int64_t count, cudaStream_t stream) {
  QUANTD_ASSIGN_OR_RETURN(DeviceBuffer<T> buf, DeviceBuffer<T>::Allocate(count));
  if (count > 0) {
    QUANTD_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(buf.get(), host, count * sizeof(T), cudaMemcpyHostToDevice, stream));
  }
  return buf;
}

template <typename T>
absl::Status Download(const DeviceBuffer<T>& buf, T* host, const Stream& stream,
                      absl::string_view what) {
  if (buf.size() > 0) {
    QUANTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host, buf.get(), buf.bytes(),
                                                cudaMemcpyDeviceToHost, stream.get()));
  }
  return stream.Synchronize(what);
}

class CudaDevice : public quant::Device {
 public:
  CudaDevice(int ordinal, CudaDeviceOptions options, std::string gpu_name, Stream stream,
             CublasHandle blas, CusolverHandle solver)
      : ordinal_(ordinal),
        options_(options),
        gpu_name_(std::move(gpu_name)),
        stream_(std::move(stream)),
        blas_(std::move(blas)),
        solver_(std::move(solver)) {}
  // Handles and the stream are released after this body, on this device.
  ~CudaDevice() override { cudaSetDevice(ordinal_); }

  std::string name() const override { return absl::StrCat("cuda:", ordinal_, "(", gpu_name_, ")"); }
  bool host_memory() const override { return false; }

  // A forward session of its own (stream, cuBLAS handle, buffers) on this GPU.
  absl::StatusOr<std::unique_ptr<quant::ForwardOps>> NewForwardOps() override {
    return MakeCudaForwardOps(ordinal_);
  }
  // A backward session of its own (stream, cuBLAS handle, buffers) on this GPU.
  absl::StatusOr<std::unique_ptr<quant::BackwardOps>> NewBackwardOps() override {
    return MakeCudaBackwardOps(ordinal_);
  }

  absl::Status AccumulateGram(const MatrixF& x, MatrixD* h) override {
    const int64_t t = x.rows(), n = x.cols();
    if (h->rows() != n || h->cols() != n) {
      return absl::InvalidArgumentError(absl::StrCat("AccumulateGram: x is ", Shape(t, n),
                                                     ", h is ", Shape(h->rows(), h->cols())));
    }
    if (t == 0 || n == 0) return absl::OkStatus();
    MutexLock lock(&mu_);
    QUANTD_RETURN_IF_ERROR(SelectGpu(ordinal_));
    const int64_t chunk = std::clamp<int64_t>(options_.gram_chunk_elements / n, 1, t);
    QUANTD_ASSIGN_OR_RETURN(auto xf, DeviceBuffer<float>::Allocate(chunk * n));
    QUANTD_ASSIGN_OR_RETURN(auto xd, DeviceBuffer<double>::Allocate(chunk * n));
    QUANTD_ASSIGN_OR_RETURN(auto g, DeviceBuffer<double>::Allocate(n * n));
    for (int64_t t0 = 0; t0 < t; t0 += chunk) {
      const int64_t len = std::min(chunk, t - t0);
      QUANTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(xf.get(), x.data() + t0 * n,
                                                  len * n * sizeof(float),
                                                  cudaMemcpyHostToDevice, stream_.get()));
      QUANTD_CUDA_RETURN_IF_ERROR(LaunchFloatToDouble(xf.get(), xd.get(), len * n, stream_.get()));
      // The row-major len×n chunk is the column-major n×len matrix A = xᵀ; G (+)= A·Aᵀ.
      const double one = 1.0, beta = t0 == 0 ? 0.0 : 1.0;
      QUANTD_CUBLAS_RETURN_IF_ERROR(cublasDsyrk(blas_.get(), CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N,
                                                static_cast<int>(n), static_cast<int>(len), &one,
                                                xd.get(), static_cast<int>(n), &beta, g.get(),
                                                static_cast<int>(n)));
    }
    QUANTD_ASSIGN_OR_RETURN(auto hd, Upload(h->data(), n * n, stream_.get()));
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchAddSymmetricLower(g.get(), hd.get(), n, stream_.get()));
    return Download(hd, h->data(), stream_, "AccumulateGram");
  }

  absl::Status Gemm(const MatrixF& a, const MatrixF& b, MatrixF* c) override {
    return GemmImpl(a, b, c);
  }
  absl::Status Gemm(const MatrixD& a, const MatrixD& b, MatrixD* c) override {
    return GemmImpl(a, b, c);
  }

  absl::Status Cholesky(const MatrixD& a, MatrixD* lower) override {
    const int64_t n = a.rows();
    if (a.rows() != a.cols()) {
      return absl::InvalidArgumentError(absl::StrCat("Cholesky of ", Shape(a.rows(), a.cols())));
    }
    if (n == 0) {
      lower->resize(0, 0);
      return absl::OkStatus();
    }
    MutexLock lock(&mu_);
    QUANTD_RETURN_IF_ERROR(SelectGpu(ordinal_));
    // Row-major a is, read column-major, aᵀ: its upper triangle is a's lower one. potrf(UPPER)
    // gives U with aᵀ = UᵀU, and U read back row-major is L = Uᵀ with a = L Lᵀ.
    QUANTD_ASSIGN_OR_RETURN(auto ad, Upload(a.data(), n * n, stream_.get()));
    int work_size = 0;
    QUANTD_CUSOLVER_RETURN_IF_ERROR(cusolverDnDpotrf_bufferSize(
        solver_.get(), CUBLAS_FILL_MODE_UPPER, static_cast<int>(n), ad.get(), static_cast<int>(n),
        &work_size));
    QUANTD_ASSIGN_OR_RETURN(auto work, DeviceBuffer<double>::Allocate(std::max(work_size, 1)));
    QUANTD_ASSIGN_OR_RETURN(auto info_d, DeviceBuffer<int>::Allocate(1));
    QUANTD_CUSOLVER_RETURN_IF_ERROR(cusolverDnDpotrf(solver_.get(), CUBLAS_FILL_MODE_UPPER,
                                                     static_cast<int>(n), ad.get(),
                                                     static_cast<int>(n), work.get(), work_size,
                                                     info_d.get()));
    MatrixD result(n, n);
    QUANTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(result.data(), ad.get(), ad.bytes(),
                                                cudaMemcpyDeviceToHost, stream_.get()));
    int info = 0;
    QUANTD_RETURN_IF_ERROR(Download(info_d, &info, stream_, "cusolverDnDpotrf"));
    if (info > 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "matrix is not positive definite (cusolverDnDpotrf: leading minor ", info, " of ", n,
          ")"));
    }
    if (info < 0) {
      return absl::InternalError(absl::StrCat("cusolverDnDpotrf: bad argument ", -info));
    }
    *lower = result.triangularView<Eigen::Lower>();
    if (!lower->allFinite() || (lower->diagonal().array() <= 0).any()) {
      return absl::FailedPreconditionError("matrix is not positive definite (degenerate pivot)");
    }
    return absl::OkStatus();
  }

  absl::Status SolveLower(const MatrixD& lower, bool transpose, MatrixD* b) override {
    const int64_t n = lower.rows(), k = b->cols();
    if (lower.rows() != lower.cols() || b->rows() != n) {
      return absl::InvalidArgumentError(absl::StrCat("SolveLower: L is ",
                                                     Shape(lower.rows(), lower.cols()), ", b is ",
                                                     Shape(b->rows(), b->cols())));
    }
    if (n == 0 || k == 0) return absl::OkStatus();
    MutexLock lock(&mu_);
    QUANTD_RETURN_IF_ERROR(SelectGpu(ordinal_));
    // Column-major views: Lc = Lᵀ (upper), Bc = bᵀ (k×n). L⁻¹b = (Bc·Lc⁻¹)ᵀ and
    // L⁻ᵀb = (Bc·Lc⁻ᵀ)ᵀ: a right-side solve with the upper triangle.
    QUANTD_ASSIGN_OR_RETURN(auto ld, Upload(lower.data(), n * n, stream_.get()));
    QUANTD_ASSIGN_OR_RETURN(auto bd, Upload(b->data(), n * k, stream_.get()));
    const double one = 1.0;
    QUANTD_CUBLAS_RETURN_IF_ERROR(cublasDtrsm(
        blas_.get(), CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_UPPER,
        transpose ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT, static_cast<int>(k),
        static_cast<int>(n), &one, ld.get(), static_cast<int>(n), bd.get(), static_cast<int>(k)));
    return Download(bd, b->data(), stream_, "SolveLower");
  }

  absl::Status HadamardRows(MatrixD* rows) override {
    const int64_t len = rows->cols(), r = rows->rows();
    if (len <= 0 || (len & (len - 1)) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("HadamardRows: row length ", len, " is not a power of two"));
    }
    if (r == 0) return absl::OkStatus();
    MutexLock lock(&mu_);
    QUANTD_RETURN_IF_ERROR(SelectGpu(ordinal_));
    QUANTD_ASSIGN_OR_RETURN(auto d, Upload(rows->data(), r * len, stream_.get()));
    const double norm = 1.0 / std::sqrt(static_cast<double>(len));
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchFwhtRows(d.get(), r, len, norm, stream_.get()));
    return Download(d, rows->data(), stream_, "HadamardRows");
  }

  quant::MemoryInfo GetMemoryInfo() const override {
    quant::MemoryInfo info;
    MutexLock lock(&mu_);
    size_t free_b = 0, total_b = 0;
    if (cudaSetDevice(ordinal_) == cudaSuccess && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
      info.total_bytes = static_cast<int64_t>(total_b);
      info.available_bytes = static_cast<int64_t>(free_b);
    } else {
      cudaGetLastError();
    }
    return info;
  }

 private:
  // c = a·b for row-major matrices: column-major, that is cᵀ = bᵀ·aᵀ with the operands as stored.
  template <typename T>
  absl::Status GemmImpl(const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>& a,
                        const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>& b,
                        Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>* c) {
    if (a.cols() != b.rows()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Gemm: a is ", Shape(a.rows(), a.cols()), ", b is ", Shape(b.rows(), b.cols())));
    }
    const int64_t m = a.rows(), k = a.cols(), n = b.cols();
    c->resize(m, n);
    if (m == 0 || n == 0) return absl::OkStatus();
    if (k == 0) {
      c->setZero();
      return absl::OkStatus();
    }
    MutexLock lock(&mu_);
    QUANTD_RETURN_IF_ERROR(SelectGpu(ordinal_));
    QUANTD_ASSIGN_OR_RETURN(auto ad, Upload(a.data(), m * k, stream_.get()));
    QUANTD_ASSIGN_OR_RETURN(auto bd, Upload(b.data(), k * n, stream_.get()));
    QUANTD_ASSIGN_OR_RETURN(auto cd, DeviceBuffer<T>::Allocate(m * n));
    QUANTD_RETURN_IF_ERROR(GemmNN(blas_.get(), static_cast<int>(n), static_cast<int>(m),
                                  static_cast<int>(k), bd.get(), ad.get(), cd.get()));
    return Download(cd, c->data(), stream_, "Gemm");
  }

  const int ordinal_;
  const CudaDeviceOptions options_;
  const std::string gpu_name_;
  mutable Mutex mu_;
  // Declaration order matters: the handles are destroyed before the stream they use.
  Stream stream_;
  CublasHandle blas_;
  CusolverHandle solver_;
};

absl::Status CheckOrdinal(int ordinal) {
  if (ordinal < 0) {
    return absl::InvalidArgumentError(absl::StrCat("cuda:", ordinal, ": negative GPU ordinal"));
  }
  const int count = CudaDeviceCount();
  if (ordinal >= count) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cuda:", ordinal, ": no such GPU (this machine has ", count,
        count == 0 ? "; no CUDA driver or GPU found)" : ")"));
  }
  return SelectGpu(ordinal);
}

}  // namespace

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

absl::StatusOr<std::unique_ptr<quant::Device>> MakeCudaDevice(int ordinal,
                                                              CudaDeviceOptions options) {
  QUANTD_RETURN_IF_ERROR(CheckOrdinal(ordinal));
  cudaDeviceProp prop{};
  QUANTD_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, ordinal));
  QUANTD_ASSIGN_OR_RETURN(Stream stream, Stream::Create());
  QUANTD_ASSIGN_OR_RETURN(CublasHandle blas, CublasHandle::Create(stream.get()));
  QUANTD_ASSIGN_OR_RETURN(CusolverHandle solver, CusolverHandle::Create(stream.get()));
  return std::unique_ptr<quant::Device>(new CudaDevice(
      ordinal, options, prop.name, std::move(stream), std::move(blas), std::move(solver)));
}

absl::StatusOr<double> MeasureGemmTflops(int ordinal, int n, bool fp64, int reps) {
  if (n <= 0 || reps <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("MeasureGemmTflops: n = ", n, ", reps = ", reps));
  }
  QUANTD_RETURN_IF_ERROR(CheckOrdinal(ordinal));
  QUANTD_ASSIGN_OR_RETURN(Stream stream, Stream::Create());
  QUANTD_ASSIGN_OR_RETURN(CublasHandle blas, CublasHandle::Create(stream.get()));
  const size_t elems = static_cast<size_t>(n) * n, elem_bytes = fp64 ? 8 : 4;
  // Raw byte buffers: the GEMM only needs finite, non-zero operands (every byte 0x3c).
  QUANTD_ASSIGN_OR_RETURN(auto a, DeviceBuffer<char>::Allocate(elems * elem_bytes));
  QUANTD_ASSIGN_OR_RETURN(auto b, DeviceBuffer<char>::Allocate(elems * elem_bytes));
  QUANTD_ASSIGN_OR_RETURN(auto c, DeviceBuffer<char>::Allocate(elems * elem_bytes));
  QUANTD_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(a.get(), 0x3c, a.bytes(), stream.get()));
  QUANTD_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(b.get(), 0x3c, b.bytes(), stream.get()));
  auto gemm = [&]() -> absl::Status {
    if (fp64) {
      return GemmNN(blas.get(), n, n, n, reinterpret_cast<const double*>(a.get()),
                    reinterpret_cast<const double*>(b.get()), reinterpret_cast<double*>(c.get()));
    }
    return GemmNN(blas.get(), n, n, n, reinterpret_cast<const float*>(a.get()),
                  reinterpret_cast<const float*>(b.get()), reinterpret_cast<float*>(c.get()));
  };
  QUANTD_RETURN_IF_ERROR(gemm());
  QUANTD_RETURN_IF_ERROR(stream.Synchronize("warm-up GEMM"));
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) QUANTD_RETURN_IF_ERROR(gemm());
  QUANTD_RETURN_IF_ERROR(stream.Synchronize("timed GEMMs"));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return 2.0 * n * static_cast<double>(n) * n * reps / secs / 1e12;
}

}  // namespace quantd::cuda
