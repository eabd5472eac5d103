// The fine-tuning backward's ops on the CPU (quant::BackwardOps, engine/quant/device.h) and how
// the backward reaches a device's:
//  - CpuBackwardOps: each op exactly backward_ops.cc's float code, so the CPU results are bit
//    for bit the ones before the Device seam existed.
//  - BackwardOpsSession: the ops of a quant::Device for one thread (the device's own, with the
//    CPU's op run instead of any the device declines, or the CPU's when it has none).
//  - grad::OpsOn<T>: what block_grad.cc and finetune_e2e.cc call: a BackwardOps for float, the
//    backward_ops.h code directly for double (the finite-difference and torch checks) or when
//    no ops are given.
// Thread-safety: CpuBackwardOps is stateless (concurrent calls on disjoint outputs are safe); a
// session holding a device's ops is used by one thread at a time.
#ifndef QUANTD_ENGINE_MODEL_BACKWARD_DEVICE_H_
#define QUANTD_ENGINE_MODEL_BACKWARD_DEVICE_H_

#include <memory>
#include <type_traits>

#include "absl/status/statusor.h"
#include "engine/model/backward_ops.h"
#include "engine/quant/device.h"

namespace quantd::model {

class CpuBackwardOps : public quant::BackwardOps {
 public:
  std::string name() const override { return "cpu"; }
  bool host() const override { return true; }
  absl::Status ScaledLinearBackward(const MatrixF& x, const MatrixF& c, const VectorF& a,
                                    const VectorF& b, const MatrixF& z, const MatrixF& dy,
                                    MatrixF* dx, VectorF* da, VectorF* db) override;
  absl::Status RmsNormBackward(const MatrixF& x, const VectorF& w, const VectorF& inv_rms,
                               const MatrixF& dy, MatrixF* dx, VectorF* dw) override;
  absl::Status RopeBackward(const MatrixF& cos, const MatrixF& sin, int heads, int hd,
                            MatrixF* m) override;
  absl::Status AttentionBackward(const MatrixF& q, const MatrixF& k, const MatrixF& v,
                                 absl::Span<const MatrixF> p, const MatrixF& dout, int heads,
                                 int kv_heads, int hd, MatrixF* dq, MatrixF* dk,
                                 MatrixF* dv) override;
  absl::Status SiluMulBackward(const MatrixF& g, const MatrixF& u, const MatrixF& dout,
                               MatrixF* dg, MatrixF* du) override;
};

// The backward ops one thread runs on: `device`'s (Device::NewBackwardOps), an op it declines
// (UNIMPLEMENTED) running the CPU's instead, or, when it has none (the CPU device) or device is
// null, a CpuBackwardOps. Errors as NewBackwardOps.
class BackwardOpsSession {
 public:
  static absl::StatusOr<BackwardOpsSession> Open(quant::Device* device);
  quant::BackwardOps& ops() { return *ops_; }
  // True for the CPU's ops: the callers may then run sequences in parallel on them.
  bool on_host() const { return ops_->host(); }

 private:
  std::unique_ptr<quant::BackwardOps> ops_;
};

namespace grad {

// The five backward ops for scalar T: on `ops` when T is float and ops is non-null, else
// backward_ops.h's code (which never fails).
template <typename T>
class OpsOn {
 public:
  explicit OpsOn(quant::BackwardOps* ops) : ops_(std::is_same_v<T, float> ? ops : nullptr) {}

  absl::Status Linear(const Mat<T>& x, const Mat<T>& c, const Vec<T>& a, const Vec<T>& b,
                      const Mat<T>& z, const Mat<T>& dy, Mat<T>* dx, Vec<T>* da, Vec<T>* db) {
    if constexpr (std::is_same_v<T, float>) {
      if (ops_ != nullptr) return ops_->ScaledLinearBackward(x, c, a, b, z, dy, dx, da, db);
    }
    ScaledLinearBackward<T>(x, c, a, b, z, dy, dx, da, db);
    return absl::OkStatus();
  }
  absl::Status RmsNorm(const Mat<T>& x, const Vec<T>& w, const Vec<T>& inv_rms, const Mat<T>& dy,
                       Mat<T>* dx, Vec<T>* dw) {
    if constexpr (std::is_same_v<T, float>) {
      if (ops_ != nullptr) return ops_->RmsNormBackward(x, w, inv_rms, dy, dx, dw);
    }
    RmsNormBackward<T>(x, w, inv_rms, dy, dx, dw);
    return absl::OkStatus();
  }
  absl::Status Rope(const Mat<T>& cos, const Mat<T>& sin, int heads, int hd, Mat<T>* m) {
    if constexpr (std::is_same_v<T, float>) {
      if (ops_ != nullptr) return ops_->RopeBackward(cos, sin, heads, hd, m);
    }
    grad::Rope<T>(cos, sin, heads, hd, true, m);
    return absl::OkStatus();
  }
  absl::Status Attention(const Mat<T>& q, const Mat<T>& k, const Mat<T>& v,
                         const std::vector<Mat<T>>& p, const Mat<T>& dout, int heads,
                         int kv_heads, int hd, Mat<T>* dq, Mat<T>* dk, Mat<T>* dv) {
    if constexpr (std::is_same_v<T, float>) {
      if (ops_ != nullptr) {
        return ops_->AttentionBackward(q, k, v, p, dout, heads, kv_heads, hd, dq, dk, dv);
      }
    }
    AttentionBackwardHeads<T>(q, k, v, p.data(), dout, heads, kv_heads, hd, dq, dk, dv);
    return absl::OkStatus();
  }
  absl::Status SiluMul(const Mat<T>& g, const Mat<T>& u, const Mat<T>& dout, Mat<T>* dg,
                       Mat<T>* du) {
    if constexpr (std::is_same_v<T, float>) {
      if (ops_ != nullptr) return ops_->SiluMulBackward(g, u, dout, dg, du);
    }
    SiluMulBackward<T>(g, u, dout, dg, du);
    return absl::OkStatus();
  }

 private:
  quant::BackwardOps* ops_;
};

}  // namespace grad
}  // namespace quantd::model

#endif  // QUANTD_ENGINE_MODEL_BACKWARD_DEVICE_H_
