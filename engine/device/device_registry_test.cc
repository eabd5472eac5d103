#include "engine/device/device_registry.h"

#include "gtest/gtest.h"

namespace quantd::device {
namespace {

TEST(DeviceRegistryTest, ParsesSpecs) {
  absl::StatusOr<DeviceSpec> s = ParseDeviceSpec("auto");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->kind, DeviceSpec::Kind::kAuto);
  s = ParseDeviceSpec("cpu");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->kind, DeviceSpec::Kind::kCpu);
  s = ParseDeviceSpec("cuda");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->kind, DeviceSpec::Kind::kCuda);
  EXPECT_EQ(s->ordinal, 0);
  s = ParseDeviceSpec("cuda:12");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->kind, DeviceSpec::Kind::kCuda);
  EXPECT_EQ(s->ordinal, 12);
  for (const char* bad : {"", "gpu", "cuda:", "cuda:-1", "cuda:x", "cuda:1x", "cuda: 1", "CPU",
                          "cuda:99999999999"}) {
    absl::Status st = ParseDeviceSpec(bad).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(st.message().find(std::string("\"") + bad + "\""), absl::string_view::npos) << st;
  }
}

TEST(DeviceRegistryTest, MakesCpuAndAutoDevices) {
  absl::StatusOr<std::unique_ptr<quant::Device>> cpu = MakeDevice("cpu", 1);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_EQ((*cpu)->name(), "cpu(threads=1)");
  EXPECT_TRUE((*cpu)->host_memory());

  absl::StatusOr<std::unique_ptr<quant::Device>> dev = MakeDevice("auto", 1);
  ASSERT_TRUE(dev.ok()) << dev.status();
  if (GpuCount() > 0) {
    EXPECT_EQ((*dev)->name().rfind("cuda:0", 0), 0u) << (*dev)->name();
    EXPECT_FALSE((*dev)->host_memory());
  } else {
    EXPECT_EQ((*dev)->name(), "cpu(threads=1)");
  }
  EXPECT_EQ(MakeDevice("tpu:0").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DeviceRegistryTest, MissingGpuIsAClearError) {
  if (!CudaBuiltIn()) EXPECT_EQ(GpuCount(), 0);
  absl::Status s = MakeDevice("cuda:999").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("cuda:999"), absl::string_view::npos) << s;
  if (!CudaBuiltIn()) {
    EXPECT_NE(s.message().find("no CUDA support"), absl::string_view::npos) << s;
  }
  EXPECT_EQ(MeasureGemmPeakTflops("cuda:999", 64, true).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(DeviceRegistryTest, CpuGemmPeakIsPositive) {
  absl::StatusOr<double> tflops = MeasureGemmPeakTflops("cpu", 128, true, 1);
  ASSERT_TRUE(tflops.ok()) << tflops.status();
  EXPECT_GT(*tflops, 0);
  EXPECT_EQ(MeasureGemmPeakTflops("cpu", 0, true).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quantd::device
