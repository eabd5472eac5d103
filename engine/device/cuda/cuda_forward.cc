#include "engine/device/cuda/cuda_forward.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/device/cuda/cuda_device.h"
#include "engine/device/cuda/cuda_resources.h"
#include "engine/device/cuda/cuda_status.h"
#include "engine/device/cuda/forward_kernels.h"

namespace quantd::cuda {
namespace {

using quant::WeightDtype;

std::string Shape(int64_t r, int64_t c) { return absl::StrCat("[", r, ",", c, "]"); }

// A matrix in GPU memory: fp32, or (a bound weight) bf16/fp16 bit patterns.
class CudaMatrix : public quant::DeviceMatrix {
 public:
  int64_t rows() const override { return rows_; }
  int64_t cols() const override { return cols_; }
  absl::Status Resize(int64_t r, int64_t c) {
    QUANTD_RETURN_IF_ERROR(Ensure(&f32_, static_cast<size_t>(r * c)));
    rows_ = r;
    cols_ = c;
    dtype_ = WeightDtype::kF32;
    return absl::OkStatus();
  }
  absl::Status ResizeHalf(int64_t r, int64_t c, WeightDtype d) {
    QUANTD_RETURN_IF_ERROR(Ensure(&half_, static_cast<size_t>(r * c)));
    rows_ = r;
    cols_ = c;
    dtype_ = d;
    return absl::OkStatus();
  }
  float* f32() const { return f32_.get(); }
  uint16_t* half() const { return half_.get(); }
  WeightDtype dtype() const { return dtype_; }
  int64_t size() const { return rows_ * cols_; }

 private:
  DeviceBuffer<float> f32_;
  DeviceBuffer<uint16_t> half_;
  WeightDtype dtype_ = WeightDtype::kF32;
  int64_t rows_ = 0, cols_ = 0;
};

class CudaGram : public quant::DeviceGram {
 public:
  int64_t n() const override { return n_; }
  DeviceBuffer<double> g;  // column-major n×n, lower triangle accumulated
  int64_t n_ = 0;
};

const CudaMatrix& C(const quant::DeviceMatrix& m) { return static_cast<const CudaMatrix&>(m); }
CudaMatrix* C(quant::DeviceMatrix* m) { return static_cast<CudaMatrix*>(m); }

absl::Status NeedF32(const CudaMatrix& m, const char* op) {
  if (m.dtype() != WeightDtype::kF32) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": operand is a 16-bit weight"));
  }
  return absl::OkStatus();
}

class CudaForwardOps : public quant::ForwardOps {
 public:
  CudaForwardOps(int ordinal, CudaForwardOptions options, Stream stream, CublasHandle blas)
      : ordinal_(ordinal),
        options_(options),
        stream_(std::move(stream)),
        blas_(std::move(blas)) {}
  ~CudaForwardOps() override { cudaSetDevice(ordinal_); }

  std::string name() const override { return absl::StrCat("cuda:", ordinal_); }
  MatrixF* HostMatrix(quant::DeviceMatrix&) override { return nullptr; }
  const MatrixD* HostGram(const quant::DeviceGram&) override { return nullptr; }
  std::unique_ptr<quant::DeviceMatrix> NewMatrix() override {
    return std::make_unique<CudaMatrix>();
  }

  absl::Status Upload(const MatrixF& host, quant::DeviceMatrix* dst) override {
    QUANTD_RETURN_IF_ERROR(Select());
    CudaMatrix* d = C(dst);
    QUANTD_RETURN_IF_ERROR(d->Resize(host.rows(), host.cols()));
    if (d->size() > 0) {
      QUANTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d->f32(), host.data(), d->size() * 4,
                                                  cudaMemcpyHostToDevice, stream_.get()));
    }
    return stream_.Synchronize("Upload");
  }

  absl::Status Download(const quant::DeviceMatrix& src, MatrixF* host) override {
    QUANTD_RETURN_IF_ERROR(Select());
    const CudaMatrix& s = C(src);
    QUANTD_RETURN_IF_ERROR(NeedF32(s, "Download"));
    host->resize(s.rows(), s.cols());
    if (s.size() > 0) {
      QUANTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host->data(), s.f32(), s.size() * 4,
                                                  cudaMemcpyDeviceToHost, stream_.get()));
    }
    return stream_.Synchronize("Download");
  }

  absl::StatusOr<std::unique_ptr<quant::DeviceMatrix>> BindWeight(const MatrixF& w,
                                                                  WeightDtype stored) override {
    auto m = std::make_unique<CudaMatrix>();
    if (stored == WeightDtype::kF32 || !options_.gemm_in_stored_dtype) {
      QUANTD_RETURN_IF_ERROR(Upload(w, m.get()));
      return std::unique_ptr<quant::DeviceMatrix>(std::move(m));
    }
    // fp32 → stored dtype on the GPU (exact: the values came from it).
    QUANTD_RETURN_IF_ERROR(Upload(w, &staging_));
    QUANTD_RETURN_IF_ERROR(m->ResizeHalf(w.rows(), w.cols(), stored));
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchToHalf(staging_.f32(), m->half(), m->size(),
                                             stored == WeightDtype::kBF16, stream_.get()));
    return std::unique_ptr<quant::DeviceMatrix>(std::move(m));
  }

  absl::Status MatMulT(const quant::DeviceMatrix& xm, const quant::DeviceMatrix& wm,
                       quant::DeviceMatrix* outm, bool accumulate) override {
    const CudaMatrix &x = C(xm), &w = C(wm);
    CudaMatrix* out = C(outm);
    QUANTD_RETURN_IF_ERROR(NeedF32(x, "MatMulT"));
    if (x.cols() != w.cols()) {
      return absl::InvalidArgumentError(absl::StrCat("MatMulT: x is ", Shape(x.rows(), x.cols()),
                                                     ", w is ", Shape(w.rows(), w.cols())));
    }
    const int64_t rows = x.rows(), in = x.cols(), cols = w.rows();
    QUANTD_RETURN_IF_ERROR(Select());
    if (accumulate) {
      if (out->rows() != rows || out->cols() != cols) {
        return absl::InvalidArgumentError(absl::StrCat("MatMulT: accumulating into ",
                                                       Shape(out->rows(), out->cols()), ", product is ",
                                                       Shape(rows, cols)));
      }
    } else {
      QUANTD_RETURN_IF_ERROR(out->Resize(rows, cols));
    }
    if (rows == 0 || cols == 0) return absl::OkStatus();
    if (in == 0) {
      if (!accumulate) {
        QUANTD_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(out->f32(), 0, out->size() * 4, stream_.get()));
      }
      return absl::OkStatus();
    }
    QUANTD_RETURN_IF_ERROR(FitsInt(std::max({rows, in, cols}), "MatMulT dimension"));
    // Row-major out [rows×cols] is column-major outᵀ = w·xᵀ: A = w read transposed
    // (column-major in×cols), B = xᵀ (column-major in×rows).
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    const void* a = w.f32();
    const void* b = x.f32();
    cudaDataType type = CUDA_R_32F;
    if (w.dtype() != WeightDtype::kF32) {
      const bool bf16 = w.dtype() == WeightDtype::kBF16;
      QUANTD_RETURN_IF_ERROR(Ensure(&x_half_, static_cast<size_t>(x.size())));
      QUANTD_CUDA_RETURN_IF_ERROR(LaunchToHalf(x.f32(), x_half_.get(), x.size(), bf16,
                                               stream_.get()));
      a = w.half();
      b = x_half_.get();
      type = bf16 ? CUDA_R_16BF : CUDA_R_16F;
    }
    QUANTD_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(
        blas_.get(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(cols), static_cast<int>(rows),
        static_cast<int>(in), &alpha, a, type, static_cast<int>(in), b, type,
        static_cast<int>(in), &beta, out->f32(), CUDA_R_32F, static_cast<int>(cols),
        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return absl::OkStatus();
  }

  absl::Status RmsNorm(const quant::DeviceMatrix& xm, const VectorF& weight, float eps,
                       float offset, quant::DeviceMatrix* outm) override {
    const CudaMatrix& x = C(xm);
    QUANTD_RETURN_IF_ERROR(NeedF32(x, "RmsNorm"));
    if (weight.size() != x.cols()) {
      return absl::InvalidArgumentError(absl::StrCat("RmsNorm: weight of ", weight.size(),
                                                     " for rows of ", x.cols()));
    }
    QUANTD_RETURN_IF_ERROR(Select());
    // (offset + w) in fp32 on the host, as the CPU (Gemma2RMSNorm).
    const VectorF w = offset != 0.0f ? VectorF(weight.array() + offset) : weight;
    QUANTD_RETURN_IF_ERROR(Ensure(&vec_, static_cast<size_t>(w.size())));
    QUANTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(vec_.get(), w.data(), w.size() * 4,
                                                cudaMemcpyHostToDevice, stream_.get()));
    CudaMatrix* out = C(outm);
    QUANTD_RETURN_IF_ERROR(out->Resize(x.rows(), x.cols()));
    QUANTD_CUDA_RETURN_IF_ERROR(
        LaunchRmsNorm(x.f32(), vec_.get(), eps, x.rows(), x.cols(), out->f32(), stream_.get()));
    return stream_.Synchronize("RmsNorm");  // w's host copy is freed after this
  }

  absl::Status ApplyRope(const quant::DeviceMatrix& cosm, const quant::DeviceMatrix& sinm,
                         int heads, int hd, int64_t row0, int64_t rows,
                         quant::DeviceMatrix* mm) override {
    const CudaMatrix &c = C(cosm), &s = C(sinm);
    CudaMatrix* m = C(mm);
    const int half = static_cast<int>(c.cols());
    if (c.dtype() != WeightDtype::kF32 || s.dtype() != WeightDtype::kF32 || s.cols() != half ||
        c.rows() < rows || s.rows() < rows || 2 * half > hd ||
        int64_t{heads} * hd > m->cols() || row0 < 0 || row0 + rows > m->rows()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ApplyRope: tables ", Shape(c.rows(), c.cols()), ", ", heads, " heads of ", hd,
          ", rows [", row0, ",", row0 + rows, ") of ", Shape(m->rows(), m->cols())));
    }
    QUANTD_RETURN_IF_ERROR(Select());
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchRope(c.f32(), s.f32(), rows, heads, hd, half,
                                           m->f32() + row0 * m->cols(), m->cols(),
                                           stream_.get()));
    return absl::OkStatus();
  }

  absl::Status Scale(float s, quant::DeviceMatrix* mm) override {
    CudaMatrix* m = C(mm);
    QUANTD_RETURN_IF_ERROR(NeedF32(*m, "Scale"));
    QUANTD_RETURN_IF_ERROR(Select());
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchScale(s, m->f32(), m->size(), stream_.get()));
    return absl::OkStatus();
  }

  absl::Status Add(const quant::DeviceMatrix& ym, quant::DeviceMatrix* xm) override {
    const CudaMatrix& y = C(ym);
    CudaMatrix* x = C(xm);
    if (y.rows() != x->rows() || y.cols() != x->cols()) {
      return absl::InvalidArgumentError(absl::StrCat("Add: ", Shape(x->rows(), x->cols()), " + ",
                                                     Shape(y.rows(), y.cols())));
    }
    QUANTD_RETURN_IF_ERROR(Select());
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchAdd(y.f32(), x->f32(), x->size(), stream_.get()));
    return absl::OkStatus();
  }

  absl::Status Attention(const quant::DeviceMatrix& qm, const quant::DeviceMatrix& km,
                         const quant::DeviceMatrix& vm, absl::Span<const int64_t> offsets,
                         int heads, int kv_heads, int hd, int window, float softcap,
                         quant::DeviceMatrix* outm) override {
    const CudaMatrix &q = C(qm), &k = C(km), &v = C(vm);
    const int64_t n = q.rows();
    if (offsets.size() < 2 || offsets.front() != 0 || offsets.back() != n || kv_heads <= 0 ||
        heads % kv_heads != 0 || q.cols() != int64_t{heads} * hd ||
        k.cols() != int64_t{kv_heads} * hd || v.cols() != k.cols() || k.rows() != n ||
        v.rows() != n) {
      return absl::InvalidArgumentError(
          absl::StrCat("Attention: q ", Shape(n, q.cols()), ", k ", Shape(k.rows(), k.cols()),
                       ", ", heads, "/", kv_heads, " heads of ", hd));
    }
    int64_t max_len = 0;
    for (size_t s = 0; s + 1 < offsets.size(); ++s) {
      max_len = std::max(max_len, offsets[s + 1] - offsets[s]);
    }
    if (max_len > kMaxAttentionKeys || hd > kMaxAttentionHeadDim) {
      return absl::UnimplementedError(absl::StrCat(
          "CUDA attention takes sequences of up to ", kMaxAttentionKeys, " tokens and heads of up to ",
          kMaxAttentionHeadDim, " (", max_len, ", ", hd, " here)"));
    }
    QUANTD_RETURN_IF_ERROR(Select());
    QUANTD_RETURN_IF_ERROR(Ensure(&offsets_, offsets.size()));
    QUANTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(offsets_.get(), offsets.data(),
                                                offsets.size() * sizeof(int64_t),
                                                cudaMemcpyHostToDevice, stream_.get()));
    CudaMatrix* out = C(outm);
    QUANTD_RETURN_IF_ERROR(out->Resize(n, q.cols()));
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchAttention(
        q.f32(), k.f32(), v.f32(), offsets_.get(), static_cast<int>(offsets.size()) - 1, n, heads,
        kv_heads, hd, window, softcap, max_len, out->f32(), stream_.get()));
    return stream_.Synchronize("Attention");  // the offsets' host copy is the caller's
  }

  absl::Status SiluMul(const quant::DeviceMatrix& um, quant::DeviceMatrix* gm) override {
    const CudaMatrix& u = C(um);
    CudaMatrix* g = C(gm);
    if (u.rows() != g->rows() || u.cols() != g->cols()) {
      return absl::InvalidArgumentError("SiluMul: shapes differ");
    }
    QUANTD_RETURN_IF_ERROR(Select());
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchSiluMul(u.f32(), g->f32(), g->size(), stream_.get()));
    return absl::OkStatus();
  }

  absl::Status Softcap(float cap, quant::DeviceMatrix* mm) override {
    CudaMatrix* m = C(mm);
    QUANTD_RETURN_IF_ERROR(Select());
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchSoftcap(cap, m->f32(), m->size(), stream_.get()));
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<quant::DeviceGram>> NewGram(int64_t n) override {
    QUANTD_RETURN_IF_ERROR(Select());
    auto g = std::make_unique<CudaGram>();
    g->n_ = n;
    QUANTD_ASSIGN_OR_RETURN(g->g, DeviceBuffer<double>::Allocate(static_cast<size_t>(n * n)));
    if (n > 0) {
      QUANTD_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(g->g.get(), 0, g->g.bytes(), stream_.get()));
    }
    return std::unique_ptr<quant::DeviceGram>(std::move(g));
  }

  absl::Status AccumulateGram(const quant::DeviceMatrix& xm, absl::Span<const double> w,
                              quant::DeviceGram* gm) override {
    const CudaMatrix& x = C(xm);
    CudaGram* g = static_cast<CudaGram*>(gm);
    const int64_t rows = x.rows(), n = x.cols();
    QUANTD_RETURN_IF_ERROR(NeedF32(x, "AccumulateGram"));
    if (n != g->n()) {
      return absl::InvalidArgumentError(absl::StrCat("AccumulateGram: x is ", Shape(rows, n),
                                                     ", the sum is ", g->n(), " wide"));
    }
    if (rows == 0 || n == 0) return absl::OkStatus();
    QUANTD_RETURN_IF_ERROR(FitsInt(n, "AccumulateGram width"));
    QUANTD_RETURN_IF_ERROR(Select());
    const int64_t chunk = std::clamp<int64_t>(options_.gram_chunk_elements / n, 1, rows);
    QUANTD_RETURN_IF_ERROR(Ensure(&xd_, static_cast<size_t>(chunk * n)));
    auto syrk = [&](int64_t k, double alpha) {
      // The row-major k×n fp64 block is the column-major n×k A; G += α·A·Aᵀ (lower).
      const double beta = 1.0;
      return CublasStatus(cublasDsyrk(blas_.get(), CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N,
                                      static_cast<int>(n), static_cast<int>(k), &alpha, xd_.get(),
                                      static_cast<int>(n), &beta, g->g.get(), static_cast<int>(n)),
                          "cublasDsyrk");
    };
    for (int64_t t0 = 0; t0 < rows; t0 += chunk) {
      const int64_t len = std::min(chunk, rows - t0);
      QUANTD_CUDA_RETURN_IF_ERROR(
          LaunchGatherRowsToDouble(x.f32() + t0 * n, nullptr, len, n, xd_.get(), stream_.get()));
      QUANTD_RETURN_IF_ERROR(syrk(len, 1.0));
    }
    // Rows of weight w ≠ 1 once more with α = w − 1, grouped by weight (the CPU's scheme).
    std::map<double, std::vector<int64_t>> extra;
    const int64_t wn = std::min<int64_t>(rows, static_cast<int64_t>(w.size()));
    for (int64_t r = 0; r < wn; ++r) {
      if (w[r] != 1.0) extra[w[r]].push_back(r);
    }
    for (const auto& [weight, idx] : extra) {
      for (size_t i0 = 0; i0 < idx.size(); i0 += static_cast<size_t>(chunk)) {
        const int64_t len = std::min<int64_t>(chunk, static_cast<int64_t>(idx.size() - i0));
        QUANTD_RETURN_IF_ERROR(Ensure(&idx_, static_cast<size_t>(len)));
        QUANTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(idx_.get(), idx.data() + i0,
                                                    len * sizeof(int64_t),
                                                    cudaMemcpyHostToDevice, stream_.get()));
        QUANTD_CUDA_RETURN_IF_ERROR(
            LaunchGatherRowsToDouble(x.f32(), idx_.get(), len, n, xd_.get(), stream_.get()));
        QUANTD_RETURN_IF_ERROR(syrk(len, weight - 1.0));
        QUANTD_RETURN_IF_ERROR(stream_.Synchronize("AccumulateGram"));  // idx is reused
      }
    }
    return absl::OkStatus();
  }

  absl::Status ReadGram(const quant::DeviceGram& gm, MatrixD* out) override {
    const CudaGram& g = static_cast<const CudaGram&>(gm);
    const int64_t n = g.n();
    out->resize(n, n);
    if (n == 0) return absl::OkStatus();
    QUANTD_RETURN_IF_ERROR(Select());
    // Only the lower triangle was accumulated; mirroring it in place is harmless (DSYRK never
    // reads the upper one). Symmetric, so the column-major bytes are the row-major matrix.
    QUANTD_CUDA_RETURN_IF_ERROR(
        LaunchSymmetrizeLower(const_cast<double*>(g.g.get()), n, stream_.get()));
    QUANTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out->data(), g.g.get(), g.g.bytes(),
                                                cudaMemcpyDeviceToHost, stream_.get()));
    return stream_.Synchronize("ReadGram");
  }

  absl::Status NllChunk(const quant::DeviceMatrix& lm, int col_begin,
                        absl::Span<const int32_t> targets, quant::NllState* st) override {
    const CudaMatrix& l = C(lm);
    const int64_t rows = l.rows();
    QUANTD_RETURN_IF_ERROR(NeedF32(l, "NllChunk"));
    if (static_cast<int64_t>(targets.size()) != rows ||
        static_cast<int64_t>(st->max.size()) != rows) {
      return absl::InvalidArgumentError(absl::StrCat("NllChunk: ", targets.size(),
                                                     " targets for ", rows, " rows"));
    }
    if (rows == 0) return absl::OkStatus();
    QUANTD_RETURN_IF_ERROR(Select());
    QUANTD_RETURN_IF_ERROR(Ensure(&targets_, static_cast<size_t>(rows)));
    QUANTD_RETURN_IF_ERROR(Ensure(&mx_, static_cast<size_t>(rows)));
    QUANTD_RETURN_IF_ERROR(Ensure(&z_, static_cast<size_t>(rows)));
    QUANTD_RETURN_IF_ERROR(Ensure(&tl_, static_cast<size_t>(rows)));
    QUANTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(targets_.get(), targets.data(), rows * 4,
                                                cudaMemcpyHostToDevice, stream_.get()));
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchNllChunk(l.f32(), rows, l.cols(), targets_.get(),
                                               col_begin, mx_.get(), z_.get(), tl_.get(),
                                               stream_.get()));
    std::vector<float> mx(rows), tl(rows);
    std::vector<double> z(rows);
    QUANTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(mx.data(), mx_.get(), rows * 4,
                                                cudaMemcpyDeviceToHost, stream_.get()));
    QUANTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(z.data(), z_.get(), rows * 8,
                                                cudaMemcpyDeviceToHost, stream_.get()));
    QUANTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(tl.data(), tl_.get(), rows * 4,
                                                cudaMemcpyDeviceToHost, stream_.get()));
    QUANTD_RETURN_IF_ERROR(stream_.Synchronize("NllChunk"));
    // The merge the CPU does (model::host::NllChunk), with the chunk's max and sum from the GPU.
    for (int64_t r = 0; r < rows; ++r) {
      if (targets[r] < 0) continue;
      const float mc = mx[r];
      if (mc > st->max[r]) {
        st->sum[r] = st->sum[r] * std::exp(static_cast<double>(st->max[r]) - mc) + z[r];
        st->max[r] = mc;
      } else {
        st->sum[r] += z[r] * std::exp(static_cast<double>(mc) - st->max[r]);
      }
      const int t = targets[r];
      if (t >= col_begin && t < col_begin + l.cols()) st->target_logit[r] = tl[r];
    }
    return absl::OkStatus();
  }

 private:
  absl::Status Select() const {
    return CudaStatus(cudaSetDevice(ordinal_), absl::StrCat("cudaSetDevice(", ordinal_, ")"));
  }

  const int ordinal_;
  const CudaForwardOptions options_;
  // Declaration order: buffers and the handle go before the stream they use.
  Stream stream_;
  CublasHandle blas_;
  CudaMatrix staging_;
  DeviceBuffer<uint16_t> x_half_;
  DeviceBuffer<float> vec_;
  DeviceBuffer<int64_t> offsets_, idx_;
  DeviceBuffer<double> xd_;
  DeviceBuffer<int32_t> targets_;
  DeviceBuffer<float> mx_, tl_;
  DeviceBuffer<double> z_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<quant::ForwardOps>> MakeCudaForwardOps(int ordinal,
                                                                      CudaForwardOptions options) {
  QUANTD_ASSIGN_OR_RETURN(CudaSession s, CudaSession::Open(ordinal));
  return std::unique_ptr<quant::ForwardOps>(
      new CudaForwardOps(ordinal, options, std::move(s.stream), std::move(s.blas)));
}

}  // namespace quantd::cuda
