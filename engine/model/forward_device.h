// The forward's ops on the CPU (quant::ForwardOps, engine/quant/device.h) and the helpers a
// layer-streamed forward uses to run on any ForwardOps:
//  - CpuForwardOps: host matrices, each op exactly the code of forward_ops.cc /
//    AddWeightedXtX / the chunked NLL of streamed_forward.cc, so the CPU results are bit for bit
//    the ones before the Device seam existed.
//  - OnHost: runs host code on a device's matrices (download, run, upload back) — the fallback
//    for an op a device declines (UNIMPLEMENTED) and for the model variants no device kernel
//    covers (biases, q/k norms, post norms, GeGLU, QuaRot's online rotations).
//  - ForwardOpsSession: the ops of a quant::Device for one forward (the device's own, or the
//    CPU's when it has none).
// Thread-safety: a CpuForwardOps is used by one forward at a time; it runs OpenMP inside.
#ifndef QUANTD_ENGINE_MODEL_FORWARD_DEVICE_H_
#define QUANTD_ENGINE_MODEL_FORWARD_DEVICE_H_

#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/matrix.h"
#include "engine/quant/device.h"

namespace quantd::model {

class CpuForwardOps : public quant::ForwardOps {
 public:
  std::string name() const override { return "cpu"; }
  MatrixF* HostMatrix(quant::DeviceMatrix& m) override;
  const MatrixD* HostGram(const quant::DeviceGram& g) override;
  std::unique_ptr<quant::DeviceMatrix> NewMatrix() override;
  absl::Status Upload(const MatrixF& host, quant::DeviceMatrix* dst) override;
  absl::Status Download(const quant::DeviceMatrix& src, MatrixF* host) override;
  absl::StatusOr<std::unique_ptr<quant::DeviceMatrix>> BindWeight(
      const MatrixF& w, quant::WeightDtype stored) override;
  absl::Status MatMulT(const quant::DeviceMatrix& x, const quant::DeviceMatrix& w,
                       quant::DeviceMatrix* out, bool accumulate) override;
  absl::Status RmsNorm(const quant::DeviceMatrix& x, const VectorF& weight, float eps,
                       float offset, quant::DeviceMatrix* out) override;
  absl::Status ApplyRope(const quant::DeviceMatrix& cos, const quant::DeviceMatrix& sin,
                         int heads, int hd, int64_t row0, int64_t rows,
                         quant::DeviceMatrix* m) override;
  absl::Status Scale(float s, quant::DeviceMatrix* m) override;
  absl::Status Add(const quant::DeviceMatrix& y, quant::DeviceMatrix* x) override;
  absl::Status Attention(const quant::DeviceMatrix& q, const quant::DeviceMatrix& k,
                         const quant::DeviceMatrix& v, absl::Span<const int64_t> offsets,
                         int heads, int kv_heads, int hd, int window, float softcap,
                         quant::DeviceMatrix* out) override;
  absl::Status SiluMul(const quant::DeviceMatrix& u, quant::DeviceMatrix* g) override;
  absl::Status Softcap(float cap, quant::DeviceMatrix* m) override;
  absl::StatusOr<std::unique_ptr<quant::DeviceGram>> NewGram(int64_t n) override;
  absl::Status AccumulateGram(const quant::DeviceMatrix& x, absl::Span<const double> row_weights,
                              quant::DeviceGram* g) override;
  absl::Status ReadGram(const quant::DeviceGram& g, MatrixD* out) override;
  absl::Status NllChunk(const quant::DeviceMatrix& logits, int col_begin,
                        absl::Span<const int32_t> targets, quant::NllState* st) override;
};

// The host implementations CpuForwardOps runs (and OnHost fallbacks call): host matrices.
namespace host {
// Causal GQA attention of every (sequence, head) (quant::ForwardOps::Attention), one OpenMP job
// per pair, each calling ops::AttentionHead. out is resized to q's shape when it differs.
void Attention(const MatrixF& q, const MatrixF& k, const MatrixF& v,
               absl::Span<const int64_t> offsets, int heads, int kv_heads, int hd, int window,
               float softcap, MatrixF* out);
// quant::ForwardOps::NllChunk on a host logits chunk.
void NllChunk(const MatrixF& logits, int col_begin, absl::Span<const int32_t> targets,
              quant::NllState* st);
}  // namespace host

// Runs fn on host matrices for `inputs` (read only) and `outputs` (read and written): with host
// ops the ops' own matrices (no copy), otherwise downloaded copies, and the outputs are uploaded
// back after fn succeeds.
absl::Status OnHost(quant::ForwardOps& ops, std::vector<const quant::DeviceMatrix*> inputs,
                    std::vector<quant::DeviceMatrix*> outputs,
                    const std::function<absl::Status(absl::Span<const MatrixF* const> in,
                                                     absl::Span<MatrixF* const> out)>& fn);

// Whether `s` is a device declining an op (UNIMPLEMENTED): the caller then runs it OnHost.
inline bool Declined(const absl::Status& s) { return absl::IsUnimplemented(s); }

// The ops one forward runs on: `device`'s (Device::NewForwardOps) or, when it has none (the CPU
// device) or device is null, a CpuForwardOps. Errors as NewForwardOps.
class ForwardOpsSession {
 public:
  static absl::StatusOr<ForwardOpsSession> Open(quant::Device* device);
  quant::ForwardOps& ops() { return *ops_; }
  bool on_host() const { return on_host_; }

 private:
  std::unique_ptr<quant::ForwardOps> ops_;
  bool on_host_ = true;
};

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_MODEL_FORWARD_DEVICE_H_
