// Device: the heavy linear-algebra operations of quantization behind one interface, so that the
// algorithms (Hessian accumulation, damping, LDLQ) run unchanged on the CPU (Eigen, always built)
// or on an accelerator (a CUDA device is a separate component registered elsewhere; nothing here
// depends on CUDA). The CPU device is the numerical oracle other devices are compared against.
// Thread-safety: a Device may be used by one thread at a time (it may own scratch buffers and
// thread pools); use one Device per worker thread.
#ifndef QUANTD_ENGINE_QUANT_DEVICE_H_
#define QUANTD_ENGINE_QUANT_DEVICE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "common/matrix.h"

namespace quantd::quant {

struct MemoryInfo {
  int64_t total_bytes = 0;      // physical memory of the device
  int64_t available_bytes = 0;  // what a new allocation can still use
};

class Device {
 public:
  virtual ~Device() = default;

  // e.g. "cpu(threads=2)".
  virtual std::string name() const = 0;

  // h[n×n] += xᵀx for x [T×n] fp32 row-major. The CPU device converts x to fp64 and accumulates
  // in fp64, so the result matches a naive fp64 sum to ~T·2⁻⁵³·Σ|x_i||x_j| (summation order
  // differs). INVALID_ARGUMENT when h is not n×n.
  virtual absl::Status AccumulateGram(const MatrixF& x, MatrixD* h) = 0;

  // c = a·b (fp32 and fp64 variants). INVALID_ARGUMENT on a shape mismatch.
  virtual absl::Status Gemm(const MatrixF& a, const MatrixF& b, MatrixF* c) = 0;
  virtual absl::Status Gemm(const MatrixD& a, const MatrixD& b, MatrixD* c) = 0;

  // Lower Cholesky factor L with a = L Lᵀ (a symmetric, only its lower triangle is read).
  // FAILED_PRECONDITION when a is not numerically positive definite.
  virtual absl::Status Cholesky(const MatrixD& a, MatrixD* lower) = 0;

  // b ← L⁻¹ b (transpose = false) or b ← L⁻ᵀ b (transpose = true), L lower triangular n×n,
  // b n×k. INVALID_ARGUMENT on a shape mismatch.
  virtual absl::Status SolveLower(const MatrixD& lower, bool transpose, MatrixD* b) = 0;

  // Every row x of `rows` (length a power of two) ← H x / √len (normalized FWHT).
  // INVALID_ARGUMENT when the row length is not a power of two.
  virtual absl::Status HadamardRows(MatrixD* rows) = 0;

  virtual MemoryInfo GetMemoryInfo() const = 0;

  // True when the device computes in host RAM (the CPU): a worker then advertises the host's
  // available memory; an accelerator advertises GetMemoryInfo().available_bytes instead.
  virtual bool host_memory() const { return true; }
};

// Eigen CPU device; threads = 0 uses all hardware threads (OpenMP inside Eigen's GEMM).
std::unique_ptr<Device> MakeCpuDevice(int threads = 0);

}  // namespace quantd::quant

#endif  // QUANTD_ENGINE_QUANT_DEVICE_H_
