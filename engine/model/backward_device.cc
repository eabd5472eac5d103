#include "engine/model/backward_device.h"

#include <utility>

#include "common/status_macros.h"
#include "engine/model/forward_device.h"

namespace quantd::model {
namespace {

// A device's ops, with the CPU's op run instead of any the device declines.
class WithCpuFallback : public quant::BackwardOps {
 public:
  explicit WithCpuFallback(std::unique_ptr<quant::BackwardOps> dev) : dev_(std::move(dev)) {}
  std::string name() const override { return dev_->name(); }
  absl::Status ScaledLinearBackward(const MatrixF& x, const MatrixF& c, const VectorF& a,
                                    const VectorF& b, const MatrixF& z, const MatrixF& dy,
                                    MatrixF* dx, VectorF* da, VectorF* db) override {
    return Try([&](quant::BackwardOps& o) {
      return o.ScaledLinearBackward(x, c, a, b, z, dy, dx, da, db);
    });
  }
  absl::Status RmsNormBackward(const MatrixF& x, const VectorF& w, const VectorF& inv_rms,
                               const MatrixF& dy, MatrixF* dx, VectorF* dw) override {
    return Try([&](quant::BackwardOps& o) { return o.RmsNormBackward(x, w, inv_rms, dy, dx, dw); });
  }
  absl::Status RopeBackward(const MatrixF& cos, const MatrixF& sin, int heads, int hd,
                            MatrixF* m) override {
    return Try([&](quant::BackwardOps& o) { return o.RopeBackward(cos, sin, heads, hd, m); });
  }
  absl::Status AttentionBackward(const MatrixF& q, const MatrixF& k, const MatrixF& v,
                                 absl::Span<const MatrixF> p, const MatrixF& dout, int heads,
                                 int kv_heads, int hd, MatrixF* dq, MatrixF* dk,
                                 MatrixF* dv) override {
    return Try([&](quant::BackwardOps& o) {
      return o.AttentionBackward(q, k, v, p, dout, heads, kv_heads, hd, dq, dk, dv);
    });
  }
  absl::Status SiluMulBackward(const MatrixF& g, const MatrixF& u, const MatrixF& dout,
                               MatrixF* dg, MatrixF* du) override {
    return Try([&](quant::BackwardOps& o) { return o.SiluMulBackward(g, u, dout, dg, du); });
  }

 private:
  template <typename F>
  absl::Status Try(const F& op) {
    absl::Status s = op(*dev_);
    return Declined(s) ? op(cpu_) : s;
  }
  std::unique_ptr<quant::BackwardOps> dev_;
  CpuBackwardOps cpu_;
};

}  // namespace

absl::Status CpuBackwardOps::ScaledLinearBackward(const MatrixF& x, const MatrixF& c,
                                                  const VectorF& a, const VectorF& b,
                                                  const MatrixF& z, const MatrixF& dy,
                                                  MatrixF* dx, VectorF* da, VectorF* db) {
  grad::ScaledLinearBackward<float>(x, c, a, b, z, dy, dx, da, db);
  return absl::OkStatus();
}

absl::Status CpuBackwardOps::RmsNormBackward(const MatrixF& x, const VectorF& w,
                                             const VectorF& inv_rms, const MatrixF& dy,
                                             MatrixF* dx, VectorF* dw) {
  grad::RmsNormBackward<float>(x, w, inv_rms, dy, dx, dw);
  return absl::OkStatus();
}

absl::Status CpuBackwardOps::RopeBackward(const MatrixF& cos, const MatrixF& sin, int heads,
                                          int hd, MatrixF* m) {
  grad::Rope<float>(cos, sin, heads, hd, true, m);
  return absl::OkStatus();
}

absl::Status CpuBackwardOps::AttentionBackward(const MatrixF& q, const MatrixF& k,
                                               const MatrixF& v, absl::Span<const MatrixF> p,
                                               const MatrixF& dout, int heads, int kv_heads,
                                               int hd, MatrixF* dq, MatrixF* dk, MatrixF* dv) {
  grad::AttentionBackwardHeads<float>(q, k, v, p.data(), dout, heads, kv_heads, hd, dq, dk, dv);
  return absl::OkStatus();
}

absl::Status CpuBackwardOps::SiluMulBackward(const MatrixF& g, const MatrixF& u,
                                             const MatrixF& dout, MatrixF* dg, MatrixF* du) {
  grad::SiluMulBackward<float>(g, u, dout, dg, du);
  return absl::OkStatus();
}

absl::StatusOr<BackwardOpsSession> BackwardOpsSession::Open(quant::Device* device) {
  BackwardOpsSession s;
  std::unique_ptr<quant::BackwardOps> dev;
  if (device != nullptr) {
    QUANTD_ASSIGN_OR_RETURN(dev, device->NewBackwardOps());
  }
  if (dev == nullptr) {
    s.ops_ = std::make_unique<CpuBackwardOps>();
  } else {
    s.ops_ = std::make_unique<WithCpuFallback>(std::move(dev));
  }
  return s;
}

}  // namespace quantd::model
