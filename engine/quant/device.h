// Device: the heavy linear-algebra operations of quantization behind one interface, so that the
// algorithms (Hessian accumulation, damping, LDLQ) run unchanged on the CPU (Eigen, always built)
// or on an accelerator (a CUDA device is a separate component registered elsewhere; nothing here
// depends on CUDA). The CPU device is the numerical oracle other devices are compared against.
// Thread-safety: a Device may be used by one thread at a time (it may own scratch buffers and
// thread pools); use one Device per worker thread.
#ifndef QUANTD_ENGINE_QUANT_DEVICE_H_
#define QUANTD_ENGINE_QUANT_DEVICE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/matrix.h"

namespace quantd::quant {

struct MemoryInfo {
  int64_t total_bytes = 0;      // physical memory of the device
  int64_t available_bytes = 0;  // what a new allocation can still use
};

// ---- The forward's ops (issue 21) ----
// The layer-streamed, batched forward (model/streamed_forward.h) runs its ops through a
// ForwardOps: the CPU's (model/forward_device.h, exactly forward_ops.cc's code) or a device's
// (Device::NewForwardOps). Activations are DeviceMatrix objects that live where the ops compute
// (host RAM for the CPU, GPU memory for a GPU), so a layer's activations stay on the device
// between ops; only the embedding rows go up and the final hidden states, the Hessian sums and
// per-row NLL statistics come down.
//
// Declining: an op a device cannot do for these arguments returns UNIMPLEMENTED, and the caller
// runs the CPU code on host copies instead (model::OnHost). No other error is a fallback.

// The dtype a linear's weights are stored in (checkpoint). A device may compute the GEMM with
// the weights in that dtype (bf16/fp16 inputs, fp32 accumulation); the weights handed to
// BindWeight are fp32 and exactly representable in `stored` when it is not kF32.
enum class WeightDtype { kF32, kBF16, kF16 };

// An fp32 row-major matrix in a ForwardOps' memory. Created empty by ForwardOps::NewMatrix; ops
// resize their outputs.
class DeviceMatrix {
 public:
  virtual ~DeviceMatrix() = default;
  virtual int64_t rows() const = 0;
  virtual int64_t cols() const = 0;
};

// An fp64 n×n sum Σ w_r x_rᵀx_r in a ForwardOps' memory (one linear group's Hessian sum).
class DeviceGram {
 public:
  virtual ~DeviceGram() = default;
  virtual int64_t n() const = 0;
};

// Running per-row state of the chunked log-softmax NLL: max logit so far (fp32), Σ exp(l − max)
// (fp64) and the target's logit. Rows with target < 0 are not touched.
struct NllState {
  std::vector<float> max;
  std::vector<double> sum;
  std::vector<float> target_logit;
  void Reset(int64_t rows);
};

class ForwardOps {
 public:
  virtual ~ForwardOps() = default;
  virtual std::string name() const = 0;

  // The host matrix behind `m` when these ops compute in host RAM (no copy), else nullptr.
  virtual MatrixF* HostMatrix(DeviceMatrix& m) = 0;
  const MatrixF* HostMatrix(const DeviceMatrix& m) {
    return HostMatrix(const_cast<DeviceMatrix&>(m));
  }
  // Host-side view of a Gram sum (the CPU: no copy), else nullptr.
  virtual const MatrixD* HostGram(const DeviceGram& g) = 0;

  virtual std::unique_ptr<DeviceMatrix> NewMatrix() = 0;
  // dst ← host (resized). RESOURCE_EXHAUSTED when device memory runs out.
  virtual absl::Status Upload(const MatrixF& host, DeviceMatrix* dst) = 0;
  // host ← src (resized).
  virtual absl::Status Download(const DeviceMatrix& src, MatrixF* host) = 0;
  // A linear's weight [out × in] for MatMulT. The host ops keep a reference to `w` (it must
  // outlive the handle); a GPU copies it in `stored`'s dtype.
  virtual absl::StatusOr<std::unique_ptr<DeviceMatrix>> BindWeight(const MatrixF& w,
                                                                    WeightDtype stored) = 0;

  // out = x·wᵀ (accumulate: out += x·wᵀ); w from BindWeight.
  virtual absl::Status MatMulT(const DeviceMatrix& x, const DeviceMatrix& w, DeviceMatrix* out,
                               bool accumulate) = 0;
  // out = rmsnorm(x)·(offset + weight) row-wise.
  virtual absl::Status RmsNorm(const DeviceMatrix& x, const VectorF& weight, float eps,
                               float offset, DeviceMatrix* out) = 0;
  // Rows [row0, row0 + rows) of m (rows × heads·hd): rotate_half RoPE of every head over its
  // first 2·cos.cols() dims, row row0 + t using row t of the cos/sin tables (one sequence).
  virtual absl::Status ApplyRope(const DeviceMatrix& cos, const DeviceMatrix& sin, int heads,
                                 int hd, int64_t row0, int64_t rows, DeviceMatrix* m) = 0;
  // m ← s·m.
  virtual absl::Status Scale(float s, DeviceMatrix* m) = 0;
  // x ← x + y.
  virtual absl::Status Add(const DeviceMatrix& y, DeviceMatrix* x) = 0;
  // Causal GQA attention of every (sequence, head): sequence s is rows [offsets[s],
  // offsets[s+1]); q is pre-scaled [N × heads·hd], k, v [N × kv_heads·hd], out [N × heads·hd]
  // (resized). window > 0: sliding window; softcap > 0: Gemma 2's score soft-capping.
  virtual absl::Status Attention(const DeviceMatrix& q, const DeviceMatrix& k,
                                 const DeviceMatrix& v, absl::Span<const int64_t> offsets,
                                 int heads, int kv_heads, int hd, int window, float softcap,
                                 DeviceMatrix* out) = 0;
  // g ← silu(g) ⊙ u.
  virtual absl::Status SiluMul(const DeviceMatrix& u, DeviceMatrix* g) = 0;
  // m ← cap·tanh(m / cap).
  virtual absl::Status Softcap(float cap, DeviceMatrix* m) = 0;

  // A zero n×n Gram sum.
  virtual absl::StatusOr<std::unique_ptr<DeviceGram>> NewGram(int64_t n) = 0;
  // g += xᵀ diag(w) x: row r counts w[r] times (r ≥ w.size(): once). The CPU computes it as
  // model::AddWeightedXtX (fp64, bit-identical to the reference capture).
  virtual absl::Status AccumulateGram(const DeviceMatrix& x, absl::Span<const double> row_weights,
                                      DeviceGram* g) = 0;
  // out ← g (n×n, both triangles).
  virtual absl::Status ReadGram(const DeviceGram& g, MatrixD* out) = 0;

  // Folds logits columns [col_begin, col_begin + logits.cols()) of every row into `st` (sized
  // logits.rows()): the chunk's max and fp64 Σ exp(l − max) are merged into the running pair;
  // a target inside the chunk records its logit.
  virtual absl::Status NllChunk(const DeviceMatrix& logits, int col_begin,
                                absl::Span<const int32_t> targets, NllState* st) = 0;
};

// ---- The fine-tuning backward's ops (issue 27) ----
// The manual backward of the decoder block (model/block_grad.h) and of the end-to-end KL loss
// (model/finetune_e2e.h) runs its ops through a BackwardOps: the CPU's (model/backward_device.h,
// exactly model/backward_ops.cc's float code) or a device's (Device::NewBackwardOps). The
// arguments are host matrices (fp32 row-major, one token per row): a device uploads what an op
// reads and downloads what it writes. Forward quantities (z, inv_rms, p) are the ones the
// forward kept (grad::BlockCache).
// Accumulating outputs ("+="): an output whose shape differs from the one the op produces is
// first resized and zeroed; otherwise the op adds into it.
// Declining: an op a device cannot do for these arguments returns UNIMPLEMENTED before writing
// any output, and the caller runs the CPU's op instead (model::BackwardOpsSession does it). No
// other error is a fallback.
class BackwardOps {
 public:
  virtual ~BackwardOps() = default;
  virtual std::string name() const = 0;
  // Whether the ops compute in host RAM and may be called from several threads at once (the
  // CPU's); a device's session is used by one thread at a time.
  virtual bool host() const { return false; }

  // Linear with real scales y = z ⊙ a, z = (x ⊙ b)·Cᵀ: x [N × n], c [m × n], a [m], b [n],
  // z, dy [N × m]. With e = (dy ⊙ a)·C [N × n]: da += Σ_t dy ⊙ z, db += Σ_t x ⊙ e and, when dx
  // is non-null, dx += e ⊙ b.
  virtual absl::Status ScaledLinearBackward(const MatrixF& x, const MatrixF& c, const VectorF& a,
                                            const VectorF& b, const MatrixF& z,
                                            const MatrixF& dy, MatrixF* dx, VectorF* da,
                                            VectorF* db) = 0;
  // RMSNorm y = x·r ⊙ w row-wise, r = inv_rms [rows] (1/sqrt(mean(x²) + eps) from the forward):
  // with x̂ = x·r and g = dy ⊙ w, dx += r·(g − x̂·mean(g ⊙ x̂)), dw += Σ_t dy ⊙ x̂.
  virtual absl::Status RmsNormBackward(const MatrixF& x, const VectorF& w,
                                       const VectorF& inv_rms, const MatrixF& dy, MatrixF* dx,
                                       VectorF* dw) = 0;
  // m ← Rᵀ·m: the transpose of the rotate_half RoPE of `heads` heads of size hd, row t of m
  // [rows × heads·hd] using row (t mod cos.rows()) of cos/sin [period × hd/2].
  virtual absl::Status RopeBackward(const MatrixF& cos, const MatrixF& sin, int heads, int hd,
                                    MatrixF* m) = 0;
  // Causal GQA attention of one sequence O_h = P_h·V_g (head h reads KV head g = h / (heads /
  // kv_heads)): q [T × heads·hd] (pre-scaled), k, v [T × kv_heads·hd], p[h] [T × T] head h's
  // probabilities (zero above the diagonal), dout [T × heads·hd]. With dS = P ⊙ (dP −
  // rowsum(dP ⊙ P)), dP = dO·Vᵀ: dq += dS·K, dk += dSᵀ·Q, dv += Pᵀ·dO (a KV head sums over its
  // query heads).
  virtual absl::Status AttentionBackward(const MatrixF& q, const MatrixF& k, const MatrixF& v,
                                         absl::Span<const MatrixF> p, const MatrixF& dout,
                                         int heads, int kv_heads, int hd, MatrixF* dq,
                                         MatrixF* dk, MatrixF* dv) = 0;
  // out = silu(g) ⊙ u: dg = dout ⊙ u ⊙ silu'(g), du = dout ⊙ silu(g) (both overwritten).
  virtual absl::Status SiluMulBackward(const MatrixF& g, const MatrixF& u, const MatrixF& dout,
                                       MatrixF* dg, MatrixF* du) = 0;
};

class Device {
 public:
  virtual ~Device() = default;

  // e.g. "cpu(threads=2)".
  virtual std::string name() const = 0;

  // h[n×n] += xᵀx for x [T×n] fp32 row-major. The CPU device converts x to fp64 and accumulates
  // in fp64, so the result matches a naive fp64 sum to ~T·2⁻⁵³·Σ|x_i||x_j| (summation order
  // differs). INVALID_ARGUMENT when h is not n×n.
  virtual absl::Status AccumulateGram(const MatrixF& x, MatrixD* h) = 0;

  // c = a·b (fp32 and fp64 variants). INVALID_ARGUMENT on a shape mismatch.
  virtual absl::Status Gemm(const MatrixF& a, const MatrixF& b, MatrixF* c) = 0;
  virtual absl::Status Gemm(const MatrixD& a, const MatrixD& b, MatrixD* c) = 0;

  // Lower Cholesky factor L with a = L Lᵀ (a symmetric, only its lower triangle is read).
  // FAILED_PRECONDITION when a is not numerically positive definite.
  virtual absl::Status Cholesky(const MatrixD& a, MatrixD* lower) = 0;

  // b ← L⁻¹ b (transpose = false) or b ← L⁻ᵀ b (transpose = true), L lower triangular n×n,
  // b n×k. INVALID_ARGUMENT on a shape mismatch.
  virtual absl::Status SolveLower(const MatrixD& lower, bool transpose, MatrixD* b) = 0;

  // Every row x of `rows` (length a power of two) ← H x / √len (normalized FWHT).
  // INVALID_ARGUMENT when the row length is not a power of two.
  virtual absl::Status HadamardRows(MatrixD* rows) = 0;

  virtual MemoryInfo GetMemoryInfo() const = 0;

  // True when the device computes in host RAM (the CPU): a worker then advertises the host's
  // available memory; an accelerator advertises GetMemoryInfo().available_bytes instead.
  virtual bool host_memory() const { return true; }

  // The forward's ops on this device for one forward at a time (each call gives an independent
  // session: its own stream and buffers). nullptr (OK): the device has none and the forward
  // runs the CPU's (model::CpuForwardOps) — the CPU device's case.
  virtual absl::StatusOr<std::unique_ptr<ForwardOps>> NewForwardOps() {
    return std::unique_ptr<ForwardOps>();
  }

  // The fine-tuning backward's ops on this device (one session per thread). nullptr (OK): the
  // device has none and the backward runs the CPU's (model::CpuBackwardOps) — the CPU's case.
  virtual absl::StatusOr<std::unique_ptr<BackwardOps>> NewBackwardOps() {
    return std::unique_ptr<BackwardOps>();
  }
};

// Eigen CPU device; threads = 0 uses all hardware threads (OpenMP inside Eigen's GEMM).
std::unique_ptr<Device> MakeCpuDevice(int threads = 0);

}  // namespace quantd::quant

#endif  // QUANTD_ENGINE_QUANT_DEVICE_H_
