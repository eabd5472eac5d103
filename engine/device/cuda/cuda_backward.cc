#include "engine/device/cuda/cuda_backward.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/device/cuda/backward_kernels.h"
#include "engine/device/cuda/cuda_resources.h"
#include "engine/device/cuda/cuda_status.h"
#include "engine/device/cuda/forward_kernels.h"

namespace quantd::cuda {
namespace {

std::string Shape(const MatrixF& m) { return absl::StrCat("[", m.rows(), ",", m.cols(), "]"); }

class CudaBackwardOps : public quant::BackwardOps {
 public:
  explicit CudaBackwardOps(CudaSession s) : s_(std::move(s)) {}
  ~CudaBackwardOps() override { cudaSetDevice(s_.ordinal); }

  std::string name() const override { return absl::StrCat("cuda:", s_.ordinal); }

  absl::Status ScaledLinearBackward(const MatrixF& x, const MatrixF& c, const VectorF& a,
                                    const VectorF& b, const MatrixF& z, const MatrixF& dy,
                                    MatrixF* dx, VectorF* da, VectorF* db) override {
    const int64_t rows = x.rows(), n = x.cols(), m = c.rows();
    if (c.cols() != n || a.size() != m || b.size() != n || z.rows() != rows || z.cols() != m ||
        dy.rows() != rows || dy.cols() != m) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ScaledLinearBackward: x ", Shape(x), ", c ", Shape(c), ", a ", a.size(), ", b ",
          b.size(), ", z ", Shape(z), ", dy ", Shape(dy)));
    }
    QUANTD_RETURN_IF_ERROR(FitsInt(std::max({rows, n, m}), "ScaledLinearBackward dimension"));
    QUANTD_RETURN_IF_ERROR(s_.Select());
    QUANTD_RETURN_IF_ERROR(Up(x, &x_));
    QUANTD_RETURN_IF_ERROR(Up(c, &c_));
    QUANTD_RETURN_IF_ERROR(Up(a, &a_));
    QUANTD_RETURN_IF_ERROR(Up(b, &b_));
    QUANTD_RETURN_IF_ERROR(Up(z, &z_));
    QUANTD_RETURN_IF_ERROR(Up(dy, &dy_));
    QUANTD_RETURN_IF_ERROR(UpSum(da, m, 1, &da_));
    QUANTD_RETURN_IF_ERROR(UpSum(db, n, 1, &db_));
    if (rows > 0 && n > 0 && m > 0) {
      // dya = dy ⊙ a; e [rows × n] = dya·C: column-major eᵀ = Cᵀ·dyaᵀ, C's buffer being the
      // column-major n×m Cᵀ and dya's the m×rows dyaᵀ.
      QUANTD_RETURN_IF_ERROR(Ensure(&t1_, static_cast<size_t>(rows * m)));
      QUANTD_RETURN_IF_ERROR(Ensure(&t2_, static_cast<size_t>(rows * n)));
      QUANTD_CUDA_RETURN_IF_ERROR(LaunchScaleColumns(dy_.get(), a_.get(), rows, m, false,
                                                     t1_.get(), stream()));
      const float one = 1.0f, zero = 0.0f;
      QUANTD_CUBLAS_RETURN_IF_ERROR(cublasSgemm(
          s_.blas.get(), CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(rows),
          static_cast<int>(m), &one, c_.get(), static_cast<int>(n), t1_.get(),
          static_cast<int>(m), &zero, t2_.get(), static_cast<int>(n)));
      QUANTD_CUDA_RETURN_IF_ERROR(
          LaunchColumnDotSum(dy_.get(), z_.get(), nullptr, rows, m, da_.get(), stream()));
      QUANTD_CUDA_RETURN_IF_ERROR(
          LaunchColumnDotSum(x_.get(), t2_.get(), nullptr, rows, n, db_.get(), stream()));
    }
    if (dx != nullptr) {
      QUANTD_RETURN_IF_ERROR(UpSum(dx, rows, n, &dx_));
      if (rows > 0 && n > 0 && m > 0) {
        QUANTD_CUDA_RETURN_IF_ERROR(
            LaunchScaleColumns(t2_.get(), b_.get(), rows, n, true, dx_.get(), stream()));
      }
      QUANTD_RETURN_IF_ERROR(Down(dx_, dx));
    }
    QUANTD_RETURN_IF_ERROR(Down(da_, da));
    QUANTD_RETURN_IF_ERROR(Down(db_, db));
    return s_.stream.Synchronize("ScaledLinearBackward");
  }

  absl::Status RmsNormBackward(const MatrixF& x, const VectorF& w, const VectorF& inv_rms,
                               const MatrixF& dy, MatrixF* dx, VectorF* dw) override {
    const int64_t rows = x.rows(), n = x.cols();
    if (w.size() != n || inv_rms.size() != rows || dy.rows() != rows || dy.cols() != n) {
      return absl::InvalidArgumentError(absl::StrCat("RmsNormBackward: x ", Shape(x), ", w ",
                                                     w.size(), ", inv_rms ", inv_rms.size(),
                                                     ", dy ", Shape(dy)));
    }
    QUANTD_RETURN_IF_ERROR(s_.Select());
    QUANTD_RETURN_IF_ERROR(Up(x, &x_));
    QUANTD_RETURN_IF_ERROR(Up(w, &a_));
    QUANTD_RETURN_IF_ERROR(Up(inv_rms, &b_));
    QUANTD_RETURN_IF_ERROR(Up(dy, &dy_));
    QUANTD_RETURN_IF_ERROR(UpSum(dx, rows, n, &dx_));
    QUANTD_RETURN_IF_ERROR(UpSum(dw, n, 1, &da_));
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchRmsNormBackwardRows(x_.get(), a_.get(), b_.get(),
                                                          dy_.get(), rows, n, dx_.get(),
                                                          stream()));
    QUANTD_CUDA_RETURN_IF_ERROR(
        LaunchColumnDotSum(dy_.get(), x_.get(), b_.get(), rows, n, da_.get(), stream()));
    QUANTD_RETURN_IF_ERROR(Down(dx_, dx));
    QUANTD_RETURN_IF_ERROR(Down(da_, dw));
    return s_.stream.Synchronize("RmsNormBackward");
  }

  absl::Status RopeBackward(const MatrixF& cos, const MatrixF& sin, int heads, int hd,
                            MatrixF* m) override {
    const int half = hd / 2;
    if (cos.rows() < 1 || sin.rows() != cos.rows() || sin.cols() != cos.cols() ||
        int64_t{heads} * hd > m->cols() || heads < 0 || hd < 0) {
      return absl::InvalidArgumentError(absl::StrCat("RopeBackward: tables ", Shape(cos), ", ",
                                                     Shape(sin), ", ", heads, " heads of ", hd,
                                                     " on ", Shape(*m)));
    }
    if (cos.cols() != half) {
      return absl::UnimplementedError(absl::StrCat("CUDA RopeBackward takes tables of hd/2 = ",
                                                   half, " columns, not ", cos.cols()));
    }
    const int64_t rows = m->rows();
    if (rows == 0 || half == 0 || heads == 0) return absl::OkStatus();
    // Row t uses table row t mod period: the tables for rows 0..rows-1, and −sin (Rᵀ).
    MatrixF c(rows, half), ns(rows, half);
    for (int64_t t = 0; t < rows; ++t) {
      c.row(t) = cos.row(t % cos.rows());
      ns.row(t) = -sin.row(t % sin.rows());
    }
    QUANTD_RETURN_IF_ERROR(s_.Select());
    QUANTD_RETURN_IF_ERROR(Up(c, &a_));
    QUANTD_RETURN_IF_ERROR(Up(ns, &b_));
    QUANTD_RETURN_IF_ERROR(Up(*m, &x_));
    QUANTD_CUDA_RETURN_IF_ERROR(
        LaunchRope(a_.get(), b_.get(), rows, heads, hd, half, x_.get(), m->cols(), stream()));
    QUANTD_RETURN_IF_ERROR(Down(x_, m));
    return s_.stream.Synchronize("RopeBackward");  // c and ns are read until here
  }

  absl::Status AttentionBackward(const MatrixF& q, const MatrixF& k, const MatrixF& v,
                                 absl::Span<const MatrixF> p, const MatrixF& dout, int heads,
                                 int kv_heads, int hd, MatrixF* dq, MatrixF* dk,
                                 MatrixF* dv) override {
    const int64_t t = q.rows(), lq = q.cols(), lkv = k.cols();
    bool ok = kv_heads > 0 && heads % kv_heads == 0 && hd > 0 && lq == int64_t{heads} * hd &&
              lkv == int64_t{kv_heads} * hd && v.cols() == lkv && k.rows() == t &&
              v.rows() == t && dout.rows() == t && dout.cols() == lq &&
              static_cast<int64_t>(p.size()) == heads;
    for (const MatrixF& ph : p) ok = ok && ph.rows() == t && ph.cols() == t;
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "AttentionBackward: q ", Shape(q), ", k ", Shape(k), ", v ", Shape(v), ", dout ",
          Shape(dout), ", ", p.size(), " probability matrices, ", heads, "/", kv_heads,
          " heads of ", hd));
    }
    QUANTD_RETURN_IF_ERROR(FitsInt(std::max(t, lq), "AttentionBackward dimension"));
    QUANTD_RETURN_IF_ERROR(s_.Select());
    QUANTD_RETURN_IF_ERROR(Up(q, &x_));
    QUANTD_RETURN_IF_ERROR(Up(k, &c_));
    QUANTD_RETURN_IF_ERROR(Up(v, &z_));
    QUANTD_RETURN_IF_ERROR(Up(dout, &dy_));
    QUANTD_RETURN_IF_ERROR(UpSum(dq, t, lq, &dx_));
    QUANTD_RETURN_IF_ERROR(UpSum(dk, t, lkv, &da_));
    QUANTD_RETURN_IF_ERROR(UpSum(dv, t, lkv, &db_));
    QUANTD_RETURN_IF_ERROR(Ensure(&t2_, static_cast<size_t>(t * t)));
    const int group = heads / kv_heads, it = static_cast<int>(t), ihd = hd;
    const int ilq = static_cast<int>(lq), ilkv = static_cast<int>(lkv);
    const float one = 1.0f, zero = 0.0f;
    // Row-major X [r × c] with leading dimension L is the column-major Xᵀ [c × r] (ld L); a
    // head's slice starts at column h·hd.
    for (int h = 0; h < heads && t > 0; ++h) {
      const int64_t qo = int64_t{h} * hd, ko = int64_t{h / group} * hd;
      QUANTD_RETURN_IF_ERROR(Up(p[h], &t1_));
      // dVᵀ += dOᵀ·P.
      QUANTD_CUBLAS_RETURN_IF_ERROR(cublasSgemm(s_.blas.get(), CUBLAS_OP_N, CUBLAS_OP_T, ihd, it,
                                                it, &one, dy_.get() + qo, ilq, t1_.get(), it,
                                                &one, db_.get() + ko, ilkv));
      // dPᵀ = V·dOᵀ (t2 holds the row-major dP).
      QUANTD_CUBLAS_RETURN_IF_ERROR(cublasSgemm(s_.blas.get(), CUBLAS_OP_T, CUBLAS_OP_N, it, it,
                                                ihd, &one, z_.get() + ko, ilkv, dy_.get() + qo,
                                                ilq, &zero, t2_.get(), it));
      QUANTD_CUDA_RETURN_IF_ERROR(LaunchSoftmaxBackwardRows(t1_.get(), t, t2_.get(), stream()));
      // dQᵀ += Kᵀ·dSᵀ; dKᵀ += Qᵀ·dS.
      QUANTD_CUBLAS_RETURN_IF_ERROR(cublasSgemm(s_.blas.get(), CUBLAS_OP_N, CUBLAS_OP_N, ihd, it,
                                                it, &one, c_.get() + ko, ilkv, t2_.get(), it,
                                                &one, dx_.get() + qo, ilq));
      QUANTD_CUBLAS_RETURN_IF_ERROR(cublasSgemm(s_.blas.get(), CUBLAS_OP_N, CUBLAS_OP_T, ihd, it,
                                                it, &one, x_.get() + qo, ilq, t2_.get(), it,
                                                &one, da_.get() + ko, ilkv));
    }
    QUANTD_RETURN_IF_ERROR(Down(dx_, dq));
    QUANTD_RETURN_IF_ERROR(Down(da_, dk));
    QUANTD_RETURN_IF_ERROR(Down(db_, dv));
    return s_.stream.Synchronize("AttentionBackward");
  }

  absl::Status SiluMulBackward(const MatrixF& g, const MatrixF& u, const MatrixF& dout,
                               MatrixF* dg, MatrixF* du) override {
    if (u.rows() != g.rows() || u.cols() != g.cols() || dout.rows() != g.rows() ||
        dout.cols() != g.cols()) {
      return absl::InvalidArgumentError(absl::StrCat("SiluMulBackward: g ", Shape(g), ", u ",
                                                     Shape(u), ", dout ", Shape(dout)));
    }
    QUANTD_RETURN_IF_ERROR(s_.Select());
    QUANTD_RETURN_IF_ERROR(Up(g, &x_));
    QUANTD_RETURN_IF_ERROR(Up(u, &z_));
    QUANTD_RETURN_IF_ERROR(Up(dout, &dy_));
    QUANTD_RETURN_IF_ERROR(Ensure(&dx_, static_cast<size_t>(g.size())));
    QUANTD_RETURN_IF_ERROR(Ensure(&t1_, static_cast<size_t>(g.size())));
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchSiluMulBackward(x_.get(), z_.get(), dy_.get(), g.size(),
                                                      dx_.get(), t1_.get(), stream()));
    dg->resize(g.rows(), g.cols());
    du->resize(g.rows(), g.cols());
    QUANTD_RETURN_IF_ERROR(Down(dx_, dg));
    QUANTD_RETURN_IF_ERROR(Down(t1_, du));
    return s_.stream.Synchronize("SiluMulBackward");
  }

 private:
  cudaStream_t stream() const { return s_.stream.get(); }

  // dst ← the host array (grown to fit). The copy is queued; the op synchronizes before it
  // returns, so `host` must live until then (it does: the op's arguments).
  template <typename M>
  absl::Status Up(const M& host, DeviceBuffer<float>* dst) {
    QUANTD_RETURN_IF_ERROR(Ensure(dst, static_cast<size_t>(host.size())));
    if (host.size() == 0) return absl::OkStatus();
    QUANTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst->get(), host.data(), host.size() * 4,
                                                cudaMemcpyHostToDevice, stream()));
    return absl::OkStatus();
  }
  // An output the op adds into: resized and zeroed (on both sides) when its shape is not
  // rows × cols (the BackwardOps rule), else uploaded.
  template <typename M>
  absl::Status UpSum(M* host, int64_t rows, int64_t cols, DeviceBuffer<float>* dst) {
    if (host->rows() == rows && host->cols() == cols) return Up(*host, dst);
    if constexpr (M::ColsAtCompileTime == 1) {
      host->setZero(rows);
    } else {
      host->setZero(rows, cols);
    }
    QUANTD_RETURN_IF_ERROR(Ensure(dst, static_cast<size_t>(rows * cols)));
    if (rows * cols > 0) {
      QUANTD_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(dst->get(), 0, rows * cols * 4, stream()));
    }
    return absl::OkStatus();
  }
  // host (already sized) ← the first host->size() elements of src; queued.
  template <typename M>
  absl::Status Down(const DeviceBuffer<float>& src, M* host) {
    if (host->size() == 0) return absl::OkStatus();
    QUANTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host->data(), src.get(), host->size() * 4,
                                                cudaMemcpyDeviceToHost, stream()));
    return absl::OkStatus();
  }

  CudaSession s_;
  // Scratch, reused across ops (declared after the session: freed first).
  DeviceBuffer<float> x_, c_, a_, b_, z_, dy_, dx_, da_, db_, t1_, t2_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<quant::BackwardOps>> MakeCudaBackwardOps(int ordinal) {
  QUANTD_ASSIGN_OR_RETURN(CudaSession s, CudaSession::Open(ordinal));
  return std::unique_ptr<quant::BackwardOps>(new CudaBackwardOps(std::move(s)));
}

}  // namespace quantd::cuda
