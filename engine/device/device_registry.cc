#include "engine/device/device_registry.h"

#include <chrono>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/quant/synthetic.h"

#ifdef QUANTD_HAVE_CUDA
#include "engine/device/cuda/cuda_device.h"
#endif

namespace quantd::device {
namespace {

// Resolves auto to a concrete kind.
DeviceSpec Resolve(DeviceSpec s) {
  if (s.kind == DeviceSpec::Kind::kAuto) {
    s.kind = GpuCount() > 0 ? DeviceSpec::Kind::kCuda : DeviceSpec::Kind::kCpu;
    s.ordinal = 0;
  }
  return s;
}

#ifndef QUANTD_HAVE_CUDA
absl::Status NoCuda(int ordinal) {
  return absl::FailedPreconditionError(absl::StrCat(
      "device cuda:", ordinal,
      " is not available: this build has no CUDA support (configure with -DQUANTD_CUDA=ON on a "
      "machine with the CUDA toolkit)"));
}
#endif

}  // namespace

absl::StatusOr<DeviceSpec> ParseDeviceSpec(absl::string_view spec) {
  DeviceSpec s;
  if (spec == "auto") return s;
  if (spec == "cpu") {
    s.kind = DeviceSpec::Kind::kCpu;
    return s;
  }
  if (spec == "cuda") {
    s.kind = DeviceSpec::Kind::kCuda;
    return s;
  }
  if (absl::StartsWith(spec, "cuda:")) {
    absl::string_view num = spec.substr(5);
    int ordinal = -1;
    const bool digits = !num.empty() && num.find_first_not_of("0123456789") == absl::string_view::npos;
    if (digits && absl::SimpleAtoi(num, &ordinal) && ordinal >= 0) {
      s.kind = DeviceSpec::Kind::kCuda;
      s.ordinal = ordinal;
      return s;
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("device \"", spec, "\" is not auto, cpu or cuda:N (N = 0, 1, ...)"));
}

bool CudaBuiltIn() {
#ifdef QUANTD_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

int GpuCount() {
#ifdef QUANTD_HAVE_CUDA
  return cuda::CudaDeviceCount();
#else
  return 0;
#endif
}

absl::StatusOr<std::unique_ptr<quant::Device>> MakeDevice(absl::string_view spec,
                                                          int cpu_threads) {
  QUANTD_ASSIGN_OR_RETURN(DeviceSpec s, ParseDeviceSpec(spec));
  s = Resolve(s);
  if (s.kind == DeviceSpec::Kind::kCpu) return quant::MakeCpuDevice(cpu_threads);
#ifdef QUANTD_HAVE_CUDA
  return cuda::MakeCudaDevice(s.ordinal);
#else
  return NoCuda(s.ordinal);
#endif
}

absl::StatusOr<double> MeasureGemmPeakTflops(absl::string_view spec, int n, bool fp64,
                                             int cpu_threads) {
  QUANTD_ASSIGN_OR_RETURN(DeviceSpec s, ParseDeviceSpec(spec));
  s = Resolve(s);
  if (s.kind == DeviceSpec::Kind::kCuda) {
#ifdef QUANTD_HAVE_CUDA
    return cuda::MeasureGemmTflops(s.ordinal, n, fp64);
#else
    return NoCuda(s.ordinal);
#endif
  }
  if (n <= 0) return absl::InvalidArgumentError(absl::StrCat("MeasureGemmPeakTflops: n = ", n));
  std::unique_ptr<quant::Device> dev = quant::MakeCpuDevice(cpu_threads);
  const MatrixD a = quant::GaussianMatrix(n, n, 1);
  const MatrixF af = a.cast<float>();
  MatrixD c;
  MatrixF cf;
  const auto t0 = std::chrono::steady_clock::now();
  QUANTD_RETURN_IF_ERROR(fp64 ? dev->Gemm(a, a, &c) : dev->Gemm(af, af, &cf));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return 2.0 * n * static_cast<double>(n) * n / secs / 1e12;
}

}  // namespace quantd::device
