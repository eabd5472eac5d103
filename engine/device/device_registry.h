// Device selection: turns the --device syntax shared by quantd, quantd-worker and quantd-bench
// (auto | cpu | cuda:N) into a quant::Device. The CPU device is always built; the CUDA device
// only when the build found the CUDA toolkit (QUANTD_CUDA, cmake/QuantdCuda.cmake). This is the
// only place that knows which devices a build has.
// Thread-safety: all functions are thread-safe.
#ifndef QUANTD_ENGINE_DEVICE_DEVICE_REGISTRY_H_
#define QUANTD_ENGINE_DEVICE_DEVICE_REGISTRY_H_

#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/quant/device.h"

namespace quantd::device {

struct DeviceSpec {
  enum class Kind { kAuto, kCpu, kCuda };
  Kind kind = Kind::kAuto;  // Default: auto (cuda:0 when built with CUDA and a GPU is present)
  int ordinal = 0;          // Default: 0. The N of cuda:N.
};

// "auto", "cpu", "cuda" (= cuda:0) or "cuda:N" with N ≥ 0 decimal. INVALID_ARGUMENT otherwise,
// naming the spec.
absl::StatusOr<DeviceSpec> ParseDeviceSpec(absl::string_view spec);

// Whether this build contains the CUDA device.
bool CudaBuiltIn();

// GPUs this process can use: 0 without CUDA support, driver or GPU (never an error).
int GpuCount();

// The device for `spec`; cpu_threads is the CPU device's thread count (0 = all cores).
// auto: cuda:0 when CudaBuiltIn() and GpuCount() > 0, else the CPU. cuda:N:
// FAILED_PRECONDITION when the build has no CUDA support or GPU N does not exist (the message
// says which); other errors as cuda::MakeCudaDevice. INVALID_ARGUMENT for a bad spec.
absl::StatusOr<std::unique_ptr<quant::Device>> MakeDevice(absl::string_view spec,
                                                          int cpu_threads = 0);

// Device-resident GEMM throughput in TFLOP/s for the device `spec` names (n×n×n, 2n³ flops per
// GEMM; fp64 or fp32): the peak benchmarks report next to what they achieved. For the CPU it
// times the CPU device's Gemm; for a GPU, cuBLAS on operands already in GPU memory.
// Errors as MakeDevice.
absl::StatusOr<double> MeasureGemmPeakTflops(absl::string_view spec, int n, bool fp64,
                                             int cpu_threads = 0);

}  // namespace quantd::device

#endif  // QUANTD_ENGINE_DEVICE_DEVICE_REGISTRY_H_
