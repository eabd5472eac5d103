#include "engine/model/forward_device.h"

#include <cmath>
#include <utility>

#include "common/status_macros.h"
#include "common/str_util.h"
#include "engine/model/forward_ops.h"
#include "engine/model/hessian_capture.h"

namespace quantd::model {
namespace {

// A host matrix: owned, or a reference to a bound weight (never written).
class HostDeviceMatrix : public quant::DeviceMatrix {
 public:
  HostDeviceMatrix() = default;
  explicit HostDeviceMatrix(const MatrixF* ref) : ref_(ref) {}
  int64_t rows() const override { return get().rows(); }
  int64_t cols() const override { return get().cols(); }
  const MatrixF& get() const { return ref_ ? *ref_ : own_; }
  MatrixF* mut() { return ref_ ? const_cast<MatrixF*>(ref_) : &own_; }

 private:
  MatrixF own_;
  const MatrixF* ref_ = nullptr;
};

class HostGram : public quant::DeviceGram {
 public:
  explicit HostGram(int64_t n) : sum(MatrixD::Zero(n, n)) {}
  int64_t n() const override { return sum.rows(); }
  MatrixD sum;
};

const MatrixF& H(const quant::DeviceMatrix& m) {
  return static_cast<const HostDeviceMatrix&>(m).get();
}
MatrixF* H(quant::DeviceMatrix* m) { return static_cast<HostDeviceMatrix*>(m)->mut(); }

}  // namespace

MatrixF* CpuForwardOps::HostMatrix(quant::DeviceMatrix& m) { return H(&m); }

const MatrixD* CpuForwardOps::HostGram(const quant::DeviceGram& g) {
  return &static_cast<const model::HostGram&>(g).sum;
}

std::unique_ptr<quant::DeviceMatrix> CpuForwardOps::NewMatrix() {
  return std::make_unique<HostDeviceMatrix>();
}

absl::Status CpuForwardOps::Upload(const MatrixF& host, quant::DeviceMatrix* dst) {
  *H(dst) = host;
  return absl::OkStatus();
}

absl::Status CpuForwardOps::Download(const quant::DeviceMatrix& src, MatrixF* host) {
  *host = H(src);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<quant::DeviceMatrix>> CpuForwardOps::BindWeight(
    const MatrixF& w, quant::WeightDtype) {
  return std::unique_ptr<quant::DeviceMatrix>(new HostDeviceMatrix(&w));
}

absl::Status CpuForwardOps::MatMulT(const quant::DeviceMatrix& x, const quant::DeviceMatrix& w,
                                    quant::DeviceMatrix* out, bool accumulate) {
  ops::MatMulT(H(x), H(w), H(out), accumulate);
  return absl::OkStatus();
}

absl::Status CpuForwardOps::RmsNorm(const quant::DeviceMatrix& x, const VectorF& weight,
                                    float eps, float offset, quant::DeviceMatrix* out) {
  ops::RmsNorm(H(x), weight, eps, H(out), offset);
  return absl::OkStatus();
}

absl::Status CpuForwardOps::ApplyRope(const quant::DeviceMatrix& cos,
                                      const quant::DeviceMatrix& sin, int heads, int hd,
                                      int64_t row0, int64_t rows, quant::DeviceMatrix* m) {
  ops::ApplyRope(H(cos), H(sin), heads, hd, H(m)->middleRows(row0, rows));
  return absl::OkStatus();
}

absl::Status CpuForwardOps::Scale(float s, quant::DeviceMatrix* m) {
  *H(m) *= s;
  return absl::OkStatus();
}

absl::Status CpuForwardOps::Add(const quant::DeviceMatrix& y, quant::DeviceMatrix* x) {
  *H(x) += H(y);
  return absl::OkStatus();
}

absl::Status CpuForwardOps::Attention(const quant::DeviceMatrix& q, const quant::DeviceMatrix& k,
                                      const quant::DeviceMatrix& v,
                                      absl::Span<const int64_t> offsets, int heads, int kv_heads,
                                      int hd, int window, float softcap,
                                      quant::DeviceMatrix* out) {
  host::Attention(H(q), H(k), H(v), offsets, heads, kv_heads, hd, window, softcap, H(out));
  return absl::OkStatus();
}

absl::Status CpuForwardOps::SiluMul(const quant::DeviceMatrix& u, quant::DeviceMatrix* g) {
  ops::SiluMul(H(u), H(g));
  return absl::OkStatus();
}

absl::Status CpuForwardOps::Softcap(float cap, quant::DeviceMatrix* m) {
  ops::Softcap(cap, H(m));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<quant::DeviceGram>> CpuForwardOps::NewGram(int64_t n) {
  return std::unique_ptr<quant::DeviceGram>(new model::HostGram(n));
}

absl::Status CpuForwardOps::AccumulateGram(const quant::DeviceMatrix& x,
                                           absl::Span<const double> row_weights,
                                           quant::DeviceGram* g) {
  MatrixD& sum = static_cast<model::HostGram*>(g)->sum;
  if (sum.cols() != x.cols()) {
    return absl::InvalidArgumentError(internal::Cat("AccumulateGram: x has ", x.cols(),
                                                   " columns, the sum is ", sum.cols(), " wide"));
  }
  AddWeightedXtX(H(x), row_weights, &sum);
  return absl::OkStatus();
}

absl::Status CpuForwardOps::ReadGram(const quant::DeviceGram& g, MatrixD* out) {
  *out = static_cast<const model::HostGram&>(g).sum;
  return absl::OkStatus();
}

absl::Status CpuForwardOps::NllChunk(const quant::DeviceMatrix& logits, int col_begin,
                                     absl::Span<const int32_t> targets, quant::NllState* st) {
  host::NllChunk(H(logits), col_begin, targets, st);
  return absl::OkStatus();
}

namespace host {

void Attention(const MatrixF& q, const MatrixF& k, const MatrixF& v,
               absl::Span<const int64_t> offsets, int heads, int kv_heads, int hd, int window,
               float softcap, MatrixF* out) {
  if (out->rows() != q.rows() || out->cols() != q.cols()) out->resize(q.rows(), q.cols());
  const int nseq = static_cast<int>(offsets.size()) - 1;
  const int group = heads / kv_heads;
  // One (sequence, head) pair per iteration; each writes its own block of out.
#pragma omp parallel
  {
    MatrixF scores;
#pragma omp for schedule(dynamic, 1)
    for (int job = 0; job < nseq * heads; ++job) {
      const int s = job / heads, head = job % heads, kvh = head / group;
      const Eigen::Index r0 = offsets[s], T = offsets[s + 1] - offsets[s];
      ops::AttentionHead(q.block(r0, head * hd, T, hd), k.block(r0, kvh * hd, T, hd),
                         v.block(r0, kvh * hd, T, hd), out->block(r0, head * hd, T, hd),
                         &scores, window, softcap);
    }
  }
}

void NllChunk(const MatrixF& logits, int c0, absl::Span<const int32_t> targets,
              quant::NllState* st) {
  const int64_t rows = logits.rows();
  std::vector<float>& m = st->max;
  std::vector<double>& z = st->sum;
  std::vector<float>& target_logit = st->target_logit;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[r] < 0) continue;
    const auto row = logits.row(r);
    const float mc = row.maxCoeff();
    const double zc = (row.array() - mc).exp().template cast<double>().sum();
    if (mc > m[r]) {
      z[r] = z[r] * std::exp(static_cast<double>(m[r]) - mc) + zc;
      m[r] = mc;
    } else {
      z[r] += zc * std::exp(static_cast<double>(mc) - m[r]);
    }
    const int t = targets[r];
    if (t >= c0 && t < c0 + logits.cols()) target_logit[r] = row[t - c0];
  }
}

}  // namespace host

absl::Status OnHost(quant::ForwardOps& ops, std::vector<const quant::DeviceMatrix*> inputs,
                    std::vector<quant::DeviceMatrix*> outputs,
                    const std::function<absl::Status(absl::Span<const MatrixF* const> in,
                                                     absl::Span<MatrixF* const> out)>& fn) {
  std::vector<const MatrixF*> in(inputs.size());
  std::vector<MatrixF*> out(outputs.size());
  std::vector<MatrixF> copies;
  copies.reserve(inputs.size() + outputs.size());
  bool host = true;
  // `m`'s own matrix on a host backend, else a downloaded copy.
  auto host_view = [&](auto& m) -> absl::StatusOr<decltype(ops.HostMatrix(m))> {
    if (auto* h = ops.HostMatrix(m); h != nullptr) return h;
    host = false;
    copies.emplace_back();
    QUANTD_RETURN_IF_ERROR(ops.Download(m, &copies.back()));
    return &copies.back();
  };
  for (size_t i = 0; i < inputs.size(); ++i) {
    QUANTD_ASSIGN_OR_RETURN(in[i], host_view(*inputs[i]));
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    QUANTD_ASSIGN_OR_RETURN(out[i], host_view(*outputs[i]));
  }
  QUANTD_RETURN_IF_ERROR(fn(in, out));
  if (host) return absl::OkStatus();
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (ops.HostMatrix(*outputs[i]) == nullptr) {
      QUANTD_RETURN_IF_ERROR(ops.Upload(*out[i], outputs[i]));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ForwardOpsSession> ForwardOpsSession::Open(quant::Device* device) {
  ForwardOpsSession s;
  if (device != nullptr) {
    QUANTD_ASSIGN_OR_RETURN(s.ops_, device->NewForwardOps());
  }
  if (s.ops_ == nullptr) {
    s.ops_ = std::make_unique<CpuForwardOps>();
  } else {
    s.on_host_ = false;
  }
  return s;
}

}  // namespace quantd::model
