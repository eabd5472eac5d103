// Device consistency test (the idea of ggml's test-backend-ops): every Device op and a whole
// layer quantization run on the CPU device (the oracle) and on the CUDA device with random inputs
// of several shapes, compared within a per-op bound:
// - AccumulateGram: |h_gpu − h_cpu| ≤ (γ_B(fp32) + γ_T(fp64) + 4u)·Σ_t|x_ti||x_tj| + 4u|h0|
//   element-wise: the CPU's documented fp32-block bound (docs/formats/hessian.md) plus the GPU's
//   fp64 one; and the GPU's update is exactly symmetric.
// - Gemm: |c_gpu − c_cpu| ≤ 2γ_k·(|a||b|) element-wise (γ_k for the precision).
// - Cholesky: backward error ‖L Lᵀ − A‖_max ≤ 4n·u·‖A‖_max on both devices, and not positive
//   definite is FAILED_PRECONDITION on both.
// - SolveLower: residual ‖L x − b‖_max ≤ 4n·u·(‖L‖·‖x‖ + ‖b‖) (the normwise backward error).
// - HadamardRows: 1e-12 relative (the GPU does the CPU's butterflies in order: in fact exact).
// - QuantizeMatrix (quip-sharp, 2 bits, 256×256, the Gram matrix of correlated activations):
//   proxy losses within 2% relative of each other and of the dequantized weights' own loss.
//   Tiny differences in the factorizations can flip a rounding decision, after which LDLQ's
//   feedback legitimately takes another path, so bytes are not required to match.
// - Butterfly: the learning's surrogate (value and analytic gradient, products on the device)
//   within 1e-9 relative of the CPU's; a whole butterfly quantization within 2% proxy loss.
// The forward's ops (CudaForwardOpsTest; cuda_forward.h), each against model::CpuForwardOps on
// random inputs, with u = 2⁻²⁴ (fp32), element-wise:
// - MatMulT fp32: |Δ| ≤ 2γ_k·(|x||w|ᵀ). bf16/fp16 weights: against the exact product of the
//   16-bit-rounded operands, |Δ| ≤ 2γ_k·(|x̂||ŵ|ᵀ) (fp32 accumulation of exact 16-bit products).
// - RmsNorm: |Δ| ≤ (n + 8)·u·|cpu| + 1e-30 (fp32 sum of squares in another order).
// - ApplyRope (partial rotary, an offset sequence): |Δ| ≤ 4u·(|a·c| + |b·s|) (FMA contraction).
// - Scale, Add: exact. SiluMul, Softcap: |Δ| ≤ 8u·|cpu| + 1e-30 (expf/tanhf vs Eigen's).
// - Attention (GQA, several sequences, sliding window, score soft-capping): |Δ| ≤ 1e-4·max|v|
//   (the scores differ by up to γ_hd·Σ|q||k| ≈ 1.5e-5 here, and the softmax carries that);
//   a sequence over kMaxAttentionKeys is declined (UNIMPLEMENTED).
// - AccumulateGram with a sink weight, twice: |Δ| ≤ 4γ_{2T+4}(fp64)·(|X|ᵀ diag(w) |X|), exactly
//   symmetric.
// - NllChunk over three vocabulary chunks: NLL within 1e-6 relative.
// - A whole stories260K forward (fp32 weights): hidden states within 1e-4 relative, Hessian sums
//   within 1e-4 relative Frobenius, per-row NLL within 1e-4 absolute.
// The fine-tuning backward's ops (CudaBackwardOpsTest; cuda_backward.h), each against
// model::CpuBackwardOps on random inputs, normwise max |Δ| ≤ tol·max |cpu|:
// - ScaledLinearBackward (fresh and accumulated outputs, no dx), RmsNormBackward, GQA
//   AttentionBackward: tol 1e-4 (fp32 sums of ≤ 300 terms in another order).
// - RopeBackward with a table shorter than the rows (period): 4u; partial-rotary tables are
//   declined (UNIMPLEMENTED). SiluMulBackward: 1e-5 (expf vs Eigen's exp).
// - A whole stories260K block backward through MakeCudaDevice's session: every gradient 1e-3.
// Tests that need a GPU skip when there is none (no /dev/nvidia0 or no CUDA device); the status
// mapping and resource error paths run everywhere.
#include "engine/device/cuda/cuda_device.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>

#include "gtest/gtest.h"
#include "engine/device/cuda/cuda_backward.h"
#include "engine/device/cuda/cuda_forward.h"
#include "engine/device/cuda/cuda_resources.h"
#include "engine/device/cuda/forward_kernels.h"
#include "engine/model/backward_device.h"
#include "engine/model/block_grad.h"
#include "engine/model/forward_device.h"
#include "engine/model/forward_ops.h"
#include "engine/model/hessian_capture.h"
#include "engine/model/streamed_forward.h"
#include "engine/model/test_util.h"
#include "engine/model/weight_source.h"
#include "engine/tokenizer/tokens.h"
#include "engine/device/cuda/cuda_status.h"
#include "engine/quant/butterfly.h"
#include "engine/quant/quantize.h"
#include "engine/quant/synthetic.h"

namespace quantd::cuda {
namespace {

constexpr double kU64 = std::numeric_limits<double>::epsilon() / 2;  // 2⁻⁵³
constexpr double kU32 = std::numeric_limits<float>::epsilon() / 2;   // 2⁻²⁴

double Gamma(double k, double u) { return k * u / (1 - k * u); }

bool GpuPresent() { return std::filesystem::exists("/dev/nvidia0") && CudaDeviceCount() > 0; }

TEST(CudaStatusTest, MapsCodesAndNamesTheCall) {
  EXPECT_TRUE(CudaStatus(cudaSuccess, "x").ok());
  absl::Status s = CudaStatus(cudaErrorMemoryAllocation, "cudaMalloc(64 bytes)");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("cudaMalloc(64 bytes)"), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find("cudaErrorMemoryAllocation"), absl::string_view::npos) << s;
  EXPECT_EQ(CudaStatus(cudaErrorNoDevice, "c").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(CudaStatus(cudaErrorInsufficientDriver, "c").code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(CudaStatus(cudaErrorLaunchFailure, "c").code(), absl::StatusCode::kInternal);

  EXPECT_TRUE(CublasStatus(CUBLAS_STATUS_SUCCESS, "x").ok());
  s = CublasStatus(CUBLAS_STATUS_ALLOC_FAILED, "cublasDsyrk");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("cublasDsyrk"), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find("CUBLAS_STATUS_ALLOC_FAILED"), absl::string_view::npos) << s;
  EXPECT_EQ(CublasStatus(CUBLAS_STATUS_EXECUTION_FAILED, "c").code(), absl::StatusCode::kInternal);

  EXPECT_TRUE(CusolverStatus(CUSOLVER_STATUS_SUCCESS, "x").ok());
  s = CusolverStatus(CUSOLVER_STATUS_ALLOC_FAILED, "cusolverDnDpotrf");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("CUSOLVER_STATUS_ALLOC_FAILED"), absl::string_view::npos) << s;
  EXPECT_EQ(CusolverStatus(CUSOLVER_STATUS_INVALID_VALUE, "c").code(), absl::StatusCode::kInternal);
}

absl::Status QuantdCudaMacroUser(cudaError_t e) {
  QUANTD_CUDA_RETURN_IF_ERROR(e);
  return absl::OkStatus();
}

TEST(CudaStatusTest, MacroReturnsTheMappedStatus) {
  EXPECT_TRUE(QuantdCudaMacroUser(cudaSuccess).ok());
  absl::Status s = QuantdCudaMacroUser(cudaErrorMemoryAllocation);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
}

TEST(CudaResourcesTest, ErrorPathsAreStatuses) {
  absl::StatusOr<DeviceBuffer<double>> empty = DeviceBuffer<double>::Allocate(0);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->get(), nullptr);
  DeviceBuffer<double> moved = std::move(*empty);
  EXPECT_EQ(moved.size(), 0u);

  // 2⁴⁵ doubles = 256 TiB: more than any GPU has; without a GPU the driver error is reported.
  absl::StatusOr<DeviceBuffer<double>> huge = DeviceBuffer<double>::Allocate(size_t{1} << 45);
  ASSERT_FALSE(huge.ok());
  EXPECT_NE(huge.status().message().find("cudaMalloc(281474976710656 bytes)"),
            absl::string_view::npos)
      << huge.status();
  EXPECT_EQ(huge.status().code(), GpuPresent() ? absl::StatusCode::kResourceExhausted
                                               : absl::StatusCode::kFailedPrecondition)
      << huge.status();

  EXPECT_EQ(MakeCudaDevice(-1).status().code(), absl::StatusCode::kInvalidArgument);
  absl::Status s = MakeCudaDevice(CudaDeviceCount()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("no such GPU"), absl::string_view::npos) << s;
  if (!GpuPresent()) {
    EXPECT_EQ(CudaDeviceCount(), 0);
    absl::StatusOr<Stream> stream = Stream::Create();
    ASSERT_FALSE(stream.ok());
    EXPECT_NE(stream.status().message().find("cudaStreamCreateWithFlags"), absl::string_view::npos)
        << stream.status();
  }
}

class CudaDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!GpuPresent()) GTEST_SKIP() << "no CUDA GPU (/dev/nvidia0 missing or cudaGetDeviceCount = 0)";
    cpu_ = quant::MakeCpuDevice(0);
    CudaDeviceOptions small_chunks;
    small_chunks.gram_chunk_elements = 100000;  // several chunks even for short inputs
    absl::StatusOr<std::unique_ptr<quant::Device>> gpu = MakeCudaDevice(0);
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = std::move(*gpu);
    gpu = MakeCudaDevice(0, small_chunks);
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_chunked_ = std::move(*gpu);
  }

  std::unique_ptr<quant::Device> cpu_, gpu_, gpu_chunked_;
};

MatrixD SpdMatrix(int n, uint64_t seed) {
  MatrixD x = quant::GaussianMatrix(2 * n + 8, n, seed);
  MatrixD a = x.transpose() * x / (2 * n + 8);
  a.diagonal().array() += 1e-2;
  return a;
}

TEST_F(CudaDeviceTest, NameMemoryAndShapeErrors) {
  EXPECT_EQ(gpu_->name().rfind("cuda:0(", 0), 0u) << gpu_->name();
  EXPECT_FALSE(gpu_->host_memory());
  quant::MemoryInfo mem = gpu_->GetMemoryInfo();
  EXPECT_GT(mem.total_bytes, 0);
  EXPECT_GT(mem.available_bytes, 0);
  EXPECT_LE(mem.available_bytes, mem.total_bytes);

  MatrixF x(4, 3);
  MatrixD wrong(2, 2), l(2, 3), b(3, 1);
  MatrixF cf;
  MatrixD cd;
  EXPECT_EQ(gpu_->AccumulateGram(x, &wrong).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gpu_->Gemm(x, x, &cf).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gpu_->Gemm(wrong, l.transpose().eval(), &cd).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gpu_->Cholesky(l, &cd).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gpu_->SolveLower(wrong, false, &b).code(), absl::StatusCode::kInvalidArgument);
  MatrixD odd(2, 12);
  EXPECT_EQ(gpu_->HadamardRows(&odd).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CudaDeviceTest, GramMatchesCpuWithinTheFp32BlockBound) {
  const int shapes[][2] = {{1, 1}, {37, 33}, {300, 172}, {1500, 256}, {2100, 1536}};
  for (auto [t, n] : shapes) {
    for (quant::Device* gpu : {gpu_.get(), gpu_chunked_.get()}) {
      MatrixF x = quant::GaussianMatrix(t, n, 10 + n).cast<float>();
      x.col(n / 2) *= 100.0f;  // an outlier channel
      MatrixD h0 = SpdMatrix(n, 20 + n);
      MatrixD h_cpu = h0, h_gpu = h0;
      ASSERT_TRUE(cpu_->AccumulateGram(x, &h_cpu).ok());
      ASSERT_TRUE(gpu->AccumulateGram(x, &h_gpu).ok());
      const MatrixD ax = x.cast<double>().cwiseAbs();
      const MatrixD s = ax.transpose() * ax;
      const double gamma = Gamma(std::min(t, 1024), kU32) + Gamma(t, kU64) + 4 * kU64;
      const MatrixD bound = gamma * s + 4 * kU64 * h0.cwiseAbs();
      const MatrixD excess = (h_gpu - h_cpu).cwiseAbs() - bound;
      EXPECT_LE(excess.maxCoeff(), 0) << "T=" << t << " n=" << n << " on " << gpu->name();
      const MatrixD update = h_gpu - h0;
      EXPECT_EQ((update - update.transpose()).cwiseAbs().maxCoeff(), 0) << "n=" << n;
    }
  }
}

TEST_F(CudaDeviceTest, GemmMatchesCpu) {
  const int shapes[][3] = {{1, 1, 1}, {33, 65, 17}, {172, 1536, 172}, {256, 100, 1536}};
  for (auto [m, k, n] : shapes) {
    const MatrixD a = quant::GaussianMatrix(m, k, 1), b = quant::GaussianMatrix(k, n, 2);
    const MatrixD abs_ab = a.cwiseAbs() * b.cwiseAbs();
    MatrixD cd_cpu, cd_gpu;
    ASSERT_TRUE(cpu_->Gemm(a, b, &cd_cpu).ok());
    ASSERT_TRUE(gpu_->Gemm(a, b, &cd_gpu).ok());
    ASSERT_EQ(cd_gpu.rows(), m);
    ASSERT_EQ(cd_gpu.cols(), n);
    EXPECT_LE(((cd_gpu - cd_cpu).cwiseAbs() - 2 * Gamma(k, kU64) * abs_ab).maxCoeff(), 0)
        << m << "x" << k << "x" << n;
    const MatrixF af = a.cast<float>(), bf = b.cast<float>();
    MatrixF cf_cpu, cf_gpu;
    ASSERT_TRUE(cpu_->Gemm(af, bf, &cf_cpu).ok());
    ASSERT_TRUE(gpu_->Gemm(af, bf, &cf_gpu).ok());
    const MatrixD abs_abf = af.cast<double>().cwiseAbs() * bf.cast<double>().cwiseAbs();
    EXPECT_LE(((cf_gpu.cast<double>() - cf_cpu.cast<double>()).cwiseAbs() -
               2 * Gamma(k, kU32) * abs_abf).maxCoeff(), 0)
        << m << "x" << k << "x" << n << " fp32";
  }
}

TEST_F(CudaDeviceTest, CholeskyAndSolveAreBackwardStable) {
  for (int n : {1, 33, 172, 1536}) {
    MatrixD a = SpdMatrix(n, 5 + n);
    MatrixD input = a;
    input.triangularView<Eigen::StrictlyUpper>().setConstant(1e300);  // must not be read
    MatrixD l_cpu, l_gpu;
    ASSERT_TRUE(cpu_->Cholesky(input, &l_cpu).ok());
    ASSERT_TRUE(gpu_->Cholesky(input, &l_gpu).ok()) << n;
    EXPECT_EQ(l_gpu.triangularView<Eigen::StrictlyUpper>().toDenseMatrix().cwiseAbs().maxCoeff(), 0);
    const double tol = 4 * n * kU64 * a.cwiseAbs().maxCoeff();
    EXPECT_LE((l_gpu * l_gpu.transpose() - a).cwiseAbs().maxCoeff(), tol) << n;
    EXPECT_LE((l_cpu * l_cpu.transpose() - a).cwiseAbs().maxCoeff(), tol) << n;

    for (int k : {1, 7, 64}) {
      for (bool transpose : {false, true}) {
        MatrixD lower = l_cpu;
        lower.triangularView<Eigen::StrictlyUpper>().setConstant(1e300);  // must not be read
        const MatrixD b0 = quant::GaussianMatrix(n, k, 7 + k);
        MatrixD x_cpu = b0, x_gpu = b0;
        ASSERT_TRUE(cpu_->SolveLower(lower, transpose, &x_cpu).ok());
        ASSERT_TRUE(gpu_->SolveLower(lower, transpose, &x_gpu).ok());
        const MatrixD op = transpose ? MatrixD(l_cpu.transpose()) : l_cpu;
        for (const MatrixD* x : {&x_cpu, &x_gpu}) {
          const double resid = (op * *x - b0).cwiseAbs().maxCoeff();
          const double scale = op.cwiseAbs().rowwise().sum().maxCoeff() * x->cwiseAbs().maxCoeff() +
                               b0.cwiseAbs().maxCoeff();
          EXPECT_LE(resid, 4 * n * kU64 * scale)
              << "n=" << n << " k=" << k << " transpose=" << transpose
              << (x == &x_gpu ? " gpu" : " cpu");
        }
      }
    }
  }
  MatrixD not_pd = -SpdMatrix(16, 3), l;
  EXPECT_EQ(cpu_->Cholesky(not_pd, &l).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(gpu_->Cholesky(not_pd, &l).code(), absl::StatusCode::kFailedPrecondition);
  MatrixD indefinite = SpdMatrix(40, 4);
  indefinite(30, 30) = -1;
  EXPECT_EQ(gpu_->Cholesky(indefinite, &l).code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(CudaDeviceTest, HadamardMatchesCpu) {
  const int shapes[][2] = {{3, 1}, {5, 2}, {7, 32}, {172, 1024}, {3, 4096}, {4, 8192}, {2, 65536}};
  for (auto [r, len] : shapes) {
    MatrixD rows = quant::GaussianMatrix(r, len, len), cpu = rows, gpu = rows;
    ASSERT_TRUE(cpu_->HadamardRows(&cpu).ok());
    ASSERT_TRUE(gpu_->HadamardRows(&gpu).ok());
    EXPECT_LE((gpu - cpu).cwiseAbs().maxCoeff(), 1e-12 * cpu.cwiseAbs().maxCoeff())
        << r << "x" << len;
  }
}

TEST_F(CudaDeviceTest, WholeLayerQuantizationAgrees) {
  const int m = 256, n = 256;
  const MatrixF w = quant::SyntheticWeight(m, n, 3);
  // The Gram matrix of correlated activations with an outlier channel, as a layer's input gives.
  MatrixF x = (quant::GaussianMatrix(4096, n, 4) * quant::GaussianMatrix(n, n, 5) / std::sqrt(n))
                  .cast<float>();
  x.col(7) *= 20.0f;
  MatrixD h_cpu = MatrixD::Zero(n, n), h_gpu = MatrixD::Zero(n, n);
  ASSERT_TRUE(cpu_->AccumulateGram(x, &h_cpu).ok());
  ASSERT_TRUE(gpu_->AccumulateGram(x, &h_gpu).ok());
  h_cpu /= x.rows();
  h_gpu /= x.rows();
  quant::QuantSpec spec;
  spec.method = quant::Method::kQuipSharp;
  spec.bits = 2;
  spec.seed = 11;
  absl::StatusOr<quant::QuantizedMatrix> q_cpu = quant::QuantizeMatrix(*cpu_, w, h_cpu, spec, "l");
  absl::StatusOr<quant::QuantizedMatrix> q_gpu = quant::QuantizeMatrix(*gpu_, w, h_gpu, spec, "l");
  ASSERT_TRUE(q_cpu.ok()) << q_cpu.status();
  if (q_gpu.status().code() == absl::StatusCode::kUnimplemented) GTEST_SKIP() << q_gpu.status();
  ASSERT_TRUE(q_gpu.ok()) << q_gpu.status();
  EXPECT_NEAR(q_gpu->proxy_loss, q_cpu->proxy_loss, 0.02 * q_cpu->proxy_loss);
  EXPECT_EQ(q_gpu->stored_method, q_cpu->stored_method);
  // Each packed matrix dequantizes to weights whose loss (under the CPU's Hessian) is the one
  // reported.
  for (const quant::QuantizedMatrix* q : {&*q_cpu, &*q_gpu}) {
    absl::StatusOr<MatrixF> what = quant::DequantizeMatrix(q->packed);
    ASSERT_TRUE(what.ok()) << what.status();
    const MatrixD e = what->cast<double>() - w.cast<double>();
    const MatrixD wd = w.cast<double>();
    const double loss = (e * h_cpu * e.transpose()).trace() / (wd * h_cpu * wd.transpose()).trace();
    EXPECT_NEAR(loss, q->proxy_loss, 0.02 * q->proxy_loss);
  }
}

// ButterflyQuant's learning runs its m·n² products on the device: the surrogate and its gradient
// agree with the CPU's to fp64 GEMM rounding (n = 172: four power-of-two blocks).
TEST_F(CudaDeviceTest, ButterflySurrogateMatchesCpu) {
  const int m = 96, n = 172;
  const MatrixD w = quant::SyntheticWeight(m, n, 5).cast<double>();
  const MatrixD h = SpdMatrix(n, 6);
  absl::StatusOr<quant::Butterfly> b = quant::Butterfly::Make(n);
  ASSERT_TRUE(b.ok()) << b.status();
  for (size_t k = 0; k < b->angles().size(); ++k) {
    b->mutable_angles()[k] = 0.3 * std::sin(1.0 + static_cast<double>(k));
  }
  const MatrixD delta = quant::ButterflyRoundingError(*b, w, 2);
  std::vector<double> g_cpu, g_gpu;
  absl::StatusOr<double> f_cpu = quant::ButterflySurrogate(*cpu_, *b, w, h, delta, 0.05, &g_cpu);
  absl::StatusOr<double> f_gpu = quant::ButterflySurrogate(*gpu_, *b, w, h, delta, 0.05, &g_gpu);
  ASSERT_TRUE(f_cpu.ok()) << f_cpu.status();
  ASSERT_TRUE(f_gpu.ok()) << f_gpu.status();
  EXPECT_NEAR(*f_gpu, *f_cpu, 1e-9 * std::fabs(*f_cpu));
  ASSERT_EQ(g_gpu.size(), g_cpu.size());
  double gmax = 0, err = 0;
  for (size_t k = 0; k < g_cpu.size(); ++k) {
    gmax = std::max(gmax, std::fabs(g_cpu[k]));
    err = std::max(err, std::fabs(g_gpu[k] - g_cpu[k]));
  }
  EXPECT_GT(gmax, 0);
  EXPECT_LE(err, 1e-9 * gmax);
}

TEST_F(CudaDeviceTest, ButterflyQuantizationAgrees) {
  const int m = 128, n = 256;
  const MatrixF w = quant::SyntheticWeight(m, n, 8);
  const MatrixD h = SpdMatrix(n, 9);
  quant::QuantSpec spec;
  spec.method = quant::Method::kButterfly;
  spec.bits = 2;
  spec.seed = 3;
  absl::StatusOr<quant::QuantizedMatrix> q_cpu = quant::QuantizeMatrix(*cpu_, w, h, spec, "l");
  absl::StatusOr<quant::QuantizedMatrix> q_gpu = quant::QuantizeMatrix(*gpu_, w, h, spec, "l");
  ASSERT_TRUE(q_cpu.ok()) << q_cpu.status();
  ASSERT_TRUE(q_gpu.ok()) << q_gpu.status();
  EXPECT_NEAR(q_gpu->proxy_loss, q_cpu->proxy_loss, 0.02 * q_cpu->proxy_loss);
}


// ---- The forward's ops ----

class CudaForwardOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!GpuPresent()) GTEST_SKIP() << "no CUDA GPU (/dev/nvidia0 missing or cudaGetDeviceCount = 0)";
    CudaForwardOptions small;
    small.gram_chunk_elements = 5000;  // several chunks even for short inputs
    auto g = MakeCudaForwardOps(0, small);
    ASSERT_TRUE(g.ok()) << g.status();
    gpu_ = std::move(*g);
  }
  std::unique_ptr<quant::DeviceMatrix> Up(quant::ForwardOps& ops, const MatrixF& m) {
    auto d = ops.NewMatrix();
    EXPECT_TRUE(ops.Upload(m, d.get()).ok());
    return d;
  }
  MatrixF Down(quant::ForwardOps& ops, const quant::DeviceMatrix& d) {
    MatrixF m;
    EXPECT_TRUE(ops.Download(d, &m).ok());
    return m;
  }
  model::CpuForwardOps cpu_;
  std::unique_ptr<quant::ForwardOps> gpu_;
};

MatrixF RandomF(int64_t r, int64_t c, uint64_t seed, double scale = 1.0) {
  return (quant::GaussianMatrix(r, c, seed) * scale).cast<float>();
}

// Round to nearest even in bf16 (8 mantissa bits) or fp16-like precision (11 bits, values in
// range), as the GPU's conversion does.
float RoundBits(float v, int mantissa_bits) {
  if (mantissa_bits == 8) {
    uint32_t b;
    std::memcpy(&b, &v, 4);
    b += 0x7fff + ((b >> 16) & 1);
    b &= 0xffff0000u;
    float r;
    std::memcpy(&r, &b, 4);
    return r;
  }
  int e;
  const double m = std::frexp(static_cast<double>(v), &e);
  return static_cast<float>(std::ldexp(std::nearbyint(std::ldexp(m, mantissa_bits)), e - mantissa_bits));
}

TEST_F(CudaForwardOpsTest, MatMulTMatchesCpuInEachWeightDtype) {
  const int64_t rows = 300, in = 200, cols = 150;
  const MatrixF x = RandomF(rows, in, 1), w = RandomF(cols, in, 2, 0.1);
  const double g = 2 * Gamma(in, kU32);
  // fp32, plain and accumulating.
  for (bool acc : {false, true}) {
    MatrixF c_cpu = RandomF(rows, cols, 3), c_gpu_init = c_cpu;
    auto xc = Up(cpu_, x), oc = Up(cpu_, c_cpu);
    auto wc = cpu_.BindWeight(w, quant::WeightDtype::kF32);
    ASSERT_TRUE(cpu_.MatMulT(*xc, **wc, oc.get(), acc).ok());
    auto xg = Up(*gpu_, x), og = Up(*gpu_, c_gpu_init);
    auto wg = gpu_->BindWeight(w, quant::WeightDtype::kF32);
    ASSERT_TRUE(wg.ok()) << wg.status();
    ASSERT_TRUE(gpu_->MatMulT(*xg, **wg, og.get(), acc).ok());
    const MatrixF a = Down(cpu_, *oc), b = Down(*gpu_, *og);
    MatrixF bound = (x.cwiseAbs() * w.cwiseAbs().transpose()).array() * static_cast<float>(g);
    if (acc) bound.array() += c_gpu_init.cwiseAbs().array() * static_cast<float>(2 * kU32);
    EXPECT_TRUE(((a - b).cwiseAbs().array() <= bound.array() + 1e-30f).all()) << "acc " << acc;
  }
  // bf16 and fp16 weights (values exact in the dtype): the GPU rounds x to it too.
  for (auto [dtype, bits] : {std::pair{quant::WeightDtype::kBF16, 8},
                             std::pair{quant::WeightDtype::kF16, 11}}) {
    MatrixF wr = w, xr = x;
    for (int64_t i = 0; i < wr.size(); ++i) wr.data()[i] = RoundBits(wr.data()[i], bits);
    for (int64_t i = 0; i < xr.size(); ++i) xr.data()[i] = RoundBits(xr.data()[i], bits);
    auto xg = Up(*gpu_, x), og = gpu_->NewMatrix();
    auto wg = gpu_->BindWeight(wr, dtype);
    ASSERT_TRUE(wg.ok()) << wg.status();
    ASSERT_TRUE(gpu_->MatMulT(*xg, **wg, og.get(), false).ok());
    const MatrixF b = Down(*gpu_, *og);
    const MatrixD exact = xr.cast<double>() * wr.cast<double>().transpose();
    const MatrixD bound = (xr.cwiseAbs() * wr.cwiseAbs().transpose()).cast<double>() * g;
    EXPECT_TRUE(((exact - b.cast<double>()).cwiseAbs().array() <= bound.array() + 1e-30).all())
        << "mantissa bits " << bits;
  }
}

TEST_F(CudaForwardOpsTest, ElementwiseOpsMatchCpu) {
  const int64_t rows = 70, n = 512;
  const MatrixF x = RandomF(rows, n, 4, 3.0), y = RandomF(rows, n, 5);
  const VectorF w = RandomF(n, 1, 6).col(0);
  auto check = [&](const MatrixF& a, const MatrixF& b, double rel, const char* what) {
    EXPECT_TRUE(((a - b).cwiseAbs().array() <= a.cwiseAbs().array() * rel + 1e-30f).all())
        << what << " max diff " << (a - b).cwiseAbs().maxCoeff();
  };
  for (float offset : {0.0f, 1.0f}) {
    auto xc = Up(cpu_, x), oc = cpu_.NewMatrix();
    auto xg = Up(*gpu_, x), og = gpu_->NewMatrix();
    ASSERT_TRUE(cpu_.RmsNorm(*xc, w, 1e-5f, offset, oc.get()).ok());
    ASSERT_TRUE(gpu_->RmsNorm(*xg, w, 1e-5f, offset, og.get()).ok());
    check(Down(cpu_, *oc), Down(*gpu_, *og), (n + 8) * kU32, "RmsNorm");
  }
  {
    auto xc = Up(cpu_, x), yc = Up(cpu_, y), xg = Up(*gpu_, x), yg = Up(*gpu_, y);
    ASSERT_TRUE(cpu_.Scale(0.125f, xc.get()).ok() && gpu_->Scale(0.125f, xg.get()).ok());
    EXPECT_EQ(Down(cpu_, *xc), Down(*gpu_, *xg));
    ASSERT_TRUE(cpu_.Add(*yc, xc.get()).ok() && gpu_->Add(*yg, xg.get()).ok());
    EXPECT_EQ(Down(cpu_, *xc), Down(*gpu_, *xg));
    ASSERT_TRUE(cpu_.SiluMul(*yc, xc.get()).ok() && gpu_->SiluMul(*yg, xg.get()).ok());
    check(Down(cpu_, *xc), Down(*gpu_, *xg), 8 * kU32, "SiluMul");
    // Softcap on identical inputs (the SiluMul results differ in their last bits).
    ASSERT_TRUE(cpu_.Upload(x, xc.get()).ok() && gpu_->Upload(x, xg.get()).ok());
    ASSERT_TRUE(cpu_.Softcap(2.5f, xc.get()).ok() && gpu_->Softcap(2.5f, xg.get()).ok());
    check(Down(cpu_, *xc), Down(*gpu_, *xg), 8 * kU32, "Softcap");
  }
}

TEST_F(CudaForwardOpsTest, RopeMatchesCpuWithPartialRotaryAndAnOffset) {
  const int heads = 3, hd = 16, half = 6;  // partial rotary: 12 of 16 dims
  const int64_t rows = 40, row0 = 9, len = 25;
  const MatrixF m = RandomF(rows, heads * hd, 7), cos = RandomF(len, half, 8),
                sin = RandomF(len, half, 9);
  auto mc = Up(cpu_, m), mg = Up(*gpu_, m);
  auto cc = cpu_.BindWeight(cos, quant::WeightDtype::kF32), sc = cpu_.BindWeight(sin, quant::WeightDtype::kF32);
  auto cg = gpu_->BindWeight(cos, quant::WeightDtype::kF32), sg = gpu_->BindWeight(sin, quant::WeightDtype::kF32);
  ASSERT_TRUE(cpu_.ApplyRope(**cc, **sc, heads, hd, row0, len, mc.get()).ok());
  ASSERT_TRUE(gpu_->ApplyRope(**cg, **sg, heads, hd, row0, len, mg.get()).ok());
  const MatrixF a = Down(cpu_, *mc), b = Down(*gpu_, *mg);
  for (int64_t t = 0; t < rows; ++t) {
    for (int h = 0; h < heads; ++h) {
      for (int i = 0; i < hd; ++i) {
        double bound = 0;
        if (t >= row0 && t < row0 + len && i < 2 * half) {
          const int j = i % half;
          const double c = cos(t - row0, j), s = sin(t - row0, j);
          const double p = m(t, h * hd + j), q = m(t, h * hd + j + half);
          bound = 4 * kU32 * (std::abs(p * c) + std::abs(q * s) + std::abs(q * c) + std::abs(p * s));
        }
        EXPECT_LE(std::abs(a(t, h * hd + i) - b(t, h * hd + i)), bound) << t << " " << h << " " << i;
      }
    }
  }
}

TEST_F(CudaForwardOpsTest, AttentionMatchesCpuAndDeclinesLongSequences) {
  const int heads = 4, kv = 2, hd = 32;
  const std::vector<int64_t> offsets = {0, 50, 53, 180};
  const int64_t n = offsets.back();
  const MatrixF q = RandomF(n, heads * hd, 10, 0.3), k = RandomF(n, kv * hd, 11),
                v = RandomF(n, kv * hd, 12);
  const double vmax = v.cwiseAbs().maxCoeff();
  for (auto [window, softcap] : {std::pair{0, 0.0f}, std::pair{7, 0.0f}, std::pair{0, 5.0f}}) {
    auto qc = Up(cpu_, q), kc = Up(cpu_, k), vc = Up(cpu_, v), oc = cpu_.NewMatrix();
    auto qg = Up(*gpu_, q), kg = Up(*gpu_, k), vg = Up(*gpu_, v), og = gpu_->NewMatrix();
    ASSERT_TRUE(cpu_.Attention(*qc, *kc, *vc, offsets, heads, kv, hd, window, softcap, oc.get()).ok());
    absl::Status s = gpu_->Attention(*qg, *kg, *vg, offsets, heads, kv, hd, window, softcap, og.get());
    ASSERT_TRUE(s.ok()) << s;
    const MatrixF a = Down(cpu_, *oc), b = Down(*gpu_, *og);
    EXPECT_LE((a - b).cwiseAbs().maxCoeff(), 1e-4 * vmax) << "window " << window << " softcap " << softcap;
  }
  // Longer than the kernel takes: declined, so the forward runs the CPU's code.
  const int64_t long_n = kMaxAttentionKeys + 1;
  auto ql = Up(*gpu_, MatrixF::Zero(long_n, 1 * 4)), kl = Up(*gpu_, MatrixF::Zero(long_n, 4));
  auto ol = gpu_->NewMatrix();
  const std::vector<int64_t> one = {0, long_n};
  EXPECT_EQ(gpu_->Attention(*ql, *kl, *kl, one, 1, 1, 4, 0, 0, ol.get()).code(),
            absl::StatusCode::kUnimplemented);
}

TEST_F(CudaForwardOpsTest, WeightedGramMatchesCpuAndIsSymmetric) {
  const int64_t t = 600, n = 96;
  const MatrixF x = RandomF(t, n, 13);
  std::vector<double> w(t, 1.0);
  for (int64_t r : {0, 100, 257, 599}) w[r] = 16;
  w[300] = 0.5;
  auto xc = Up(cpu_, x), xg = Up(*gpu_, x);
  auto gc = cpu_.NewGram(n), gg = gpu_->NewGram(n);
  ASSERT_TRUE(gc.ok() && gg.ok());
  for (int rep = 0; rep < 2; ++rep) {  // accumulates
    ASSERT_TRUE(cpu_.AccumulateGram(*xc, w, gc->get()).ok());
    ASSERT_TRUE(gpu_->AccumulateGram(*xg, w, gg->get()).ok());
  }
  MatrixD a, b;
  ASSERT_TRUE(cpu_.ReadGram(**gc, &a).ok() && gpu_->ReadGram(**gg, &b).ok());
  MatrixD ax = x.cast<double>().cwiseAbs();
  MatrixD wax = ax;
  for (int64_t r = 0; r < t; ++r) wax.row(r) *= w[r];
  // Each side: ≤ γ_{2T+4}·2·|X|ᵀW|X| (two calls); their difference twice that.
  const MatrixD bound = 4 * Gamma(2 * t + 4, kU64) * (ax.transpose() * wax);
  EXPECT_TRUE(((a - b).cwiseAbs().array() <= bound.array()).all());
  EXPECT_EQ(b, b.transpose());
}

TEST_F(CudaForwardOpsTest, NllChunksMatchCpu) {
  const int64_t rows = 50, vocab = 1000;
  const MatrixF logits = RandomF(rows, vocab, 14, 4.0);
  std::vector<int32_t> targets(rows);
  for (int64_t r = 0; r < rows; ++r) targets[r] = r % 7 == 3 ? -1 : static_cast<int32_t>((r * 37) % vocab);
  quant::NllState sc, sg;
  sc.Reset(rows);
  sg.Reset(rows);
  for (int c0 : {0, 400, 800}) {
    const int cols = std::min<int>(400, vocab - c0);
    const MatrixF chunk = logits.middleCols(c0, cols);
    auto lc = Up(cpu_, chunk), lg = Up(*gpu_, chunk);
    ASSERT_TRUE(cpu_.NllChunk(*lc, c0, targets, &sc).ok());
    ASSERT_TRUE(gpu_->NllChunk(*lg, c0, targets, &sg).ok());
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[r] < 0) continue;
    const double a = std::log(sc.sum[r]) + sc.max[r] - sc.target_logit[r];
    const double b = std::log(sg.sum[r]) + sg.max[r] - sg.target_logit[r];
    EXPECT_NEAR(a, b, 1e-6 * std::abs(a)) << r;
  }
}

TEST_F(CudaForwardOpsTest, WholeStreamedForwardMatchesCpu) {
  auto m = model::testing::LoadStories260K();
  ASSERT_NE(m, nullptr);
  auto ckpt = model::Checkpoint::Open(model::testing::ExamplePath("stories260K"));
  ASSERT_TRUE(ckpt.ok());
  auto toks = model::LoadTokenFile(
      model::testing::ExamplePath("tinystories/tinystories_valid_first1000.tok512.u16"));
  ASSERT_TRUE(toks.ok());
  std::vector<absl::Span<const int32_t>> seqs = {{toks->data(), 256}, {toks->data() + 256, 100}};
  std::vector<int32_t> targets;
  for (auto s : seqs) {
    for (size_t i = 0; i < s.size(); ++i) targets.push_back(i + 1 < s.size() ? s[i + 1] : -1);
  }
  const std::vector<double> weights = model::RowWeights({256, 100}, model::TokenWeighting{16, 1});
  auto run = [&](quant::ForwardOps* ops, std::vector<MatrixD>* sums, MatrixF* hidden,
                 std::vector<double>* nll) {
    model::CheckpointWeightSource src(m->cfg, **ckpt);
    model::LayerHessianStream stream(m->cfg, 0, m->cfg.num_layers,
                                     [&](int, model::LinearGroup, const MatrixD& s, int64_t) {
                                       sums->push_back(s);
                                       return absl::OkStatus();
                                     },
                                     weights);
    auto h = model::ForwardBatch(m->cfg, src, seqs, &stream, ops);
    ASSERT_TRUE(h.ok()) << h.status();
    *hidden = *h;
    auto n = model::RowNll(m->cfg, src, *h, targets, 200, ops);
    ASSERT_TRUE(n.ok()) << n.status();
    *nll = *n;
  };
  std::vector<MatrixD> sc, sg;
  MatrixF hc, hg;
  std::vector<double> nc, ng;
  run(nullptr, &sc, &hc, &nc);
  run(gpu_.get(), &sg, &hg, &ng);
  ASSERT_EQ(sc.size(), sg.size());
  EXPECT_LE(((hc - hg).array().abs() / hc.array().abs().max(1.0f)).maxCoeff(), 1e-4);
  double worst = 0;
  for (size_t i = 0; i < sc.size(); ++i) {
    worst = std::max(worst, (sc[i] - sg[i]).norm() / std::max(sc[i].norm(), 1e-300));
  }
  EXPECT_LE(worst, 1e-4);
  for (size_t r = 0; r < nc.size(); ++r) EXPECT_NEAR(nc[r], ng[r], 1e-4) << r;
  std::printf("stories260K on the GPU: Hessian rel Frobenius diff %.3g\n", worst);
}

// ---- The fine-tuning backward's ops ----

class CudaBackwardOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!GpuPresent()) GTEST_SKIP() << "no CUDA GPU (/dev/nvidia0 missing or cudaGetDeviceCount = 0)";
    auto g = MakeCudaBackwardOps(0);
    ASSERT_TRUE(g.ok()) << g.status();
    gpu_ = std::move(*g);
  }
  model::CpuBackwardOps cpu_;
  std::unique_ptr<quant::BackwardOps> gpu_;
};

// max |got − want| ≤ tol · max |want| (normwise: the GPU sums in another order).
template <typename M>
void ExpectNear(const M& got, const M& want, double tol, const std::string& what) {
  ASSERT_EQ(got.rows(), want.rows()) << what;
  ASSERT_EQ(got.cols(), want.cols()) << what;
  const double scale = std::max<double>(want.cwiseAbs().maxCoeff(), 1e-30);
  EXPECT_LE((got - want).cwiseAbs().maxCoeff(), tol * scale) << what;
}

// Backward tolerance: fp32 sums of at most a few hundred terms in another order than Eigen's,
// normwise (cancellation makes element-wise bounds meaningless for random inputs).
constexpr double kBackwardTol = 1e-4;

TEST_F(CudaBackwardOpsTest, ScaledLinearBackwardMatchesCpu) {
  const int64_t rows = 70, n = 96, m = 80;
  const MatrixF x = RandomF(rows, n, 11), c = RandomF(m, n, 12, 0.2), dy = RandomF(rows, m, 13);
  const VectorF a = (RandomF(m, 1, 14, 0.1).array() + 1.0f).matrix().col(0);
  const VectorF b = (RandomF(n, 1, 15, 0.1).array() + 1.0f).matrix().col(0);
  const MatrixF z = (x * b.asDiagonal()) * c.transpose();
  for (bool fresh : {true, false}) {  // outputs resized and zeroed, or added into
    MatrixF dx_c, dx_g;
    VectorF da_c, da_g, db_c, db_g;
    if (!fresh) {
      dx_c = dx_g = RandomF(rows, n, 16);
      da_c = da_g = RandomF(m, 1, 17).col(0);
      db_c = db_g = RandomF(n, 1, 18).col(0);
    }
    ASSERT_TRUE(cpu_.ScaledLinearBackward(x, c, a, b, z, dy, &dx_c, &da_c, &db_c).ok());
    auto st = gpu_->ScaledLinearBackward(x, c, a, b, z, dy, &dx_g, &da_g, &db_g);
    ASSERT_TRUE(st.ok()) << st;
    ExpectNear(dx_g, dx_c, kBackwardTol, "dx");
    ExpectNear(da_g, da_c, kBackwardTol, "da");
    ExpectNear(db_g, db_c, kBackwardTol, "db");
  }
  VectorF da, db;  // no dx (the first layer's input)
  ASSERT_TRUE(gpu_->ScaledLinearBackward(x, c, a, b, z, dy, nullptr, &da, &db).ok());
  EXPECT_EQ(gpu_->ScaledLinearBackward(x, c, b, b, z, dy, nullptr, &da, &db).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(CudaBackwardOpsTest, RmsNormBackwardMatchesCpu) {
  const int64_t rows = 33, n = 300;
  const MatrixF x = RandomF(rows, n, 21, 2.0), dy = RandomF(rows, n, 22);
  const VectorF w = RandomF(n, 1, 23).col(0);
  VectorF r(rows);
  for (int64_t t = 0; t < rows; ++t) r(t) = 1.0f / std::sqrt(x.row(t).squaredNorm() / n + 1e-5f);
  MatrixF dx_c = RandomF(rows, n, 24), dx_g = dx_c;
  VectorF dw_c, dw_g;
  ASSERT_TRUE(cpu_.RmsNormBackward(x, w, r, dy, &dx_c, &dw_c).ok());
  auto st = gpu_->RmsNormBackward(x, w, r, dy, &dx_g, &dw_g);
  ASSERT_TRUE(st.ok()) << st;
  ExpectNear(dx_g, dx_c, kBackwardTol, "dx");
  ExpectNear(dw_g, dw_c, kBackwardTol, "dw");
}

TEST_F(CudaBackwardOpsTest, RopeBackwardMatchesCpuAndDeclinesPartialTables) {
  const int heads = 3, hd = 16;
  const MatrixF cos = RandomF(8, hd / 2, 31), sin = RandomF(8, hd / 2, 32);  // period 8
  MatrixF m_c = RandomF(20, heads * hd + 4, 33), m_g = m_c;
  ASSERT_TRUE(cpu_.RopeBackward(cos, sin, heads, hd, &m_c).ok());
  auto st = gpu_->RopeBackward(cos, sin, heads, hd, &m_g);
  ASSERT_TRUE(st.ok()) << st;
  ExpectNear(m_g, m_c, 4 * kU32, "rope");
  const MatrixF narrow = RandomF(8, hd / 2 - 2, 34);
  EXPECT_EQ(gpu_->RopeBackward(narrow, narrow, heads, hd, &m_g).code(),
            absl::StatusCode::kUnimplemented);
}

TEST_F(CudaBackwardOpsTest, GqaAttentionBackwardMatchesCpu) {
  const int heads = 4, kv_heads = 2, hd = 16, t = 50;
  const MatrixF q = RandomF(t, heads * hd, 41, 0.3), k = RandomF(t, kv_heads * hd, 42, 0.3),
                v = RandomF(t, kv_heads * hd, 43), dout = RandomF(t, heads * hd, 44);
  std::vector<MatrixF> p(heads);
  MatrixF out(t, heads * hd);
  for (int h = 0; h < heads; ++h) {
    const int g = h / (heads / kv_heads);
    model::grad::AttentionForward<float>(q.middleCols(h * hd, hd), k.middleCols(g * hd, hd),
                                         v.middleCols(g * hd, hd), out.middleCols(h * hd, hd),
                                         &p[h]);
  }
  MatrixF dq_c, dk_c, dv_c, dq_g, dk_g, dv_g;
  ASSERT_TRUE(cpu_.AttentionBackward(q, k, v, p, dout, heads, kv_heads, hd, &dq_c, &dk_c, &dv_c)
                  .ok());
  auto st = gpu_->AttentionBackward(q, k, v, p, dout, heads, kv_heads, hd, &dq_g, &dk_g, &dv_g);
  ASSERT_TRUE(st.ok()) << st;
  ExpectNear(dq_g, dq_c, kBackwardTol, "dq");
  ExpectNear(dk_g, dk_c, kBackwardTol, "dk");
  ExpectNear(dv_g, dv_c, kBackwardTol, "dv");
}

TEST_F(CudaBackwardOpsTest, SiluMulBackwardMatchesCpu) {
  const MatrixF g = RandomF(40, 130, 51, 3.0), u = RandomF(40, 130, 52), d = RandomF(40, 130, 53);
  MatrixF dg_c, du_c, dg_g, du_g;
  ASSERT_TRUE(cpu_.SiluMulBackward(g, u, d, &dg_c, &du_c).ok());
  auto st = gpu_->SiluMulBackward(g, u, d, &dg_g, &du_g);
  ASSERT_TRUE(st.ok()) << st;
  ExpectNear(dg_g, dg_c, 1e-5, "dg");
  ExpectNear(du_g, du_c, 1e-5, "du");
}

// A stories260K decoder block's whole backward through the CUDA device's session
// (model::BackwardOpsSession, as the fine-tuning runs it) against the CPU's.
TEST_F(CudaBackwardOpsTest, WholeBlockBackwardOnTheDeviceMatchesCpu) {
  auto m = model::testing::LoadStories260K();
  ASSERT_NE(m, nullptr);
  auto d = model::grad::BlockDimsFor(m->cfg, 0);
  ASSERT_TRUE(d.ok()) << d.status();
  const int t = 128;
  const model::grad::BlockParams<float> p = model::grad::ParamsFromWeights<float>(m->w.layers[0]);
  const MatrixF x = RandomF(t, d->hidden, 61), dy = RandomF(t, d->hidden, 62);
  MatrixF cos, sin;
  model::ops::RopeTables(m->cfg, t, &cos, &sin);
  model::grad::BlockCache<float> cache;
  MatrixF y;
  model::grad::BlockForward<float>(*d, p, cos, sin, x, &cache, &y);
  model::grad::BlockGrads<float> gc, gg;
  gc.Zero(p);
  gg.Zero(p);
  MatrixF dxc, dxg;
  model::grad::BlockBackward<float>(*d, p, cos, sin, cache, dy, &gc, &dxc);
  auto dev = MakeCudaDevice(0);
  ASSERT_TRUE(dev.ok()) << dev.status();
  auto s = model::BackwardOpsSession::Open(dev->get());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE(s->on_host());
  EXPECT_EQ(s->ops().name(), "cuda:0");
  auto st = model::grad::BlockBackwardOn<float>(*d, p, cos, sin, cache, dy, &gg, &dxg, &s->ops());
  ASSERT_TRUE(st.ok()) << st;
  ExpectNear(dxg, dxc, 1e-3, "dx");
  ExpectNear(gg.attn_norm, gc.attn_norm, 1e-3, "attn_norm");
  ExpectNear(gg.ffn_norm, gc.ffn_norm, 1e-3, "ffn_norm");
  for (int i = 0; i < model::grad::kBlockLinears; ++i) {
    ExpectNear(gg.a[i], gc.a[i], 1e-3, "a " + std::to_string(i));
    ExpectNear(gg.b[i], gc.b[i], 1e-3, "b " + std::to_string(i));
  }
}

}  // namespace
}  // namespace quantd::cuda
