// Manual backward passes of the Llama decoder ops (forward_ops.h), for fine-tuning a quantized
// model (finetune.h). Each op has a forward that keeps what its backward needs and a backward
// that, given the gradient of a scalar loss with respect to the op's output, returns (or adds)
// the gradients with respect to its inputs and parameters. Templated on the scalar: float for
// the fine-tuning itself, double for the finite-difference tests (backward_ops_test.cc).
// Matrices are row-major, one token per row, as in forward_ops.h.
//
// The quantized linear is y = x·Wᵀ with W = diag(a)·C·diag(b): C the fixed decoded matrix, a
// (out) and b (in) real scales. For the QuIP#/QTIP artifacts C = V_mᵀ W̃ V_n (the decoded
// Hadamard-domain weight rotated back), and a, b are the sign vectors S_m (SV) and S_n (SU)
// relaxed to reals; finetune.h keeps the signs folded into C and starts a = b = 1, which
// differs from tuning SU/SV directly only by the fixed ±1 factor (Adam is invariant to it).
// Thread-safety: stateless functions; calls on disjoint outputs may run concurrently.
#ifndef QUANTD_ENGINE_MODEL_BACKWARD_OPS_H_
#define QUANTD_ENGINE_MODEL_BACKWARD_OPS_H_

#include "common/matrix.h"

namespace quantd::model::grad {

template <typename T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;

// ---- RMSNorm: y = x / sqrt(mean(x²) + eps) ⊙ w, row-wise. ----
// inv_rms [rows] receives 1/sqrt(mean(x²)+eps) of each row.
template <typename T>
void RmsNormForward(const Mat<T>& x, const Vec<T>& w, T eps, Mat<T>* y, Vec<T>* inv_rms);
// dx ← dx + ∂L/∂x (dx is resized and zeroed when its shape differs from x's);
// dw ← dw + ∂L/∂w (same rule).
template <typename T>
void RmsNormBackward(const Mat<T>& x, const Vec<T>& w, const Vec<T>& inv_rms, const Mat<T>& dy,
                     Mat<T>* dx, Vec<T>* dw);

// ---- RoPE (rotate_half convention, as ops::ApplyRope) over `heads` heads of size hd. ----
// In place on m [rows x heads*hd]; row t uses row (t mod period) of cos/sin [period x hd/2]
// (period = the sequence length when rows hold several sequences back to back).
// inverse = true applies the transposed rotation, which is the backward pass (the rotation is
// orthogonal and linear: ∂L/∂x = Rᵀ ∂L/∂y).
template <typename T>
void Rope(const Mat<T>& cos, const Mat<T>& sin, int heads, int hd, bool inverse, Mat<T>* m);

// ---- Causal attention of one head of one sequence: O = softmax(causal(Q·Kᵀ))·V. ----
// q is already scaled. p [T x T] receives the probabilities (zero above the diagonal).
template <typename T>
void AttentionForward(const Eigen::Ref<const Mat<T>>& q, const Eigen::Ref<const Mat<T>>& k,
                      const Eigen::Ref<const Mat<T>>& v, Eigen::Ref<Mat<T>> out, Mat<T>* p);
// Adds ∂L/∂q, ∂L/∂k, ∂L/∂v (GQA: the heads of one KV group add into the same dk/dv).
template <typename T>
void AttentionBackward(const Eigen::Ref<const Mat<T>>& q, const Eigen::Ref<const Mat<T>>& k,
                       const Eigen::Ref<const Mat<T>>& v, const Mat<T>& p,
                       const Eigen::Ref<const Mat<T>>& dout, Eigen::Ref<Mat<T>> dq,
                       Eigen::Ref<Mat<T>> dk, Eigen::Ref<Mat<T>> dv);

// AttentionBackward of every head of one sequence: q [T x heads*hd], k, v [T x kv_heads*hd],
// p[h] head h's probabilities, dout [T x heads*hd]; dq, dk, dv ← + their gradients (each resized
// and zeroed when its shape differs). Head h reads KV head h / (heads / kv_heads).
template <typename T>
void AttentionBackwardHeads(const Mat<T>& q, const Mat<T>& k, const Mat<T>& v,
                            const Mat<T>* p, const Mat<T>& dout, int heads, int kv_heads, int hd,
                            Mat<T>* dq, Mat<T>* dk, Mat<T>* dv);

// ---- SwiGLU: out = silu(g) ⊙ u. ----
template <typename T>
void SiluMulForward(const Mat<T>& g, const Mat<T>& u, Mat<T>* out);
// dg, du are overwritten.
template <typename T>
void SiluMulBackward(const Mat<T>& g, const Mat<T>& u, const Mat<T>& dout, Mat<T>* dg,
                     Mat<T>* du);

// ---- Linear with real scales: y = ((x ⊙ b) Cᵀ) ⊙ a, i.e. W = diag(a)·C·diag(b). ----
// x [N x n], c [m x n], a [m], b [n]. z [N x m] receives (x ⊙ b)·Cᵀ (kept for the backward).
template <typename T>
void ScaledLinearForward(const Mat<T>& x, const Mat<T>& c, const Vec<T>& a, const Vec<T>& b,
                         Mat<T>* z, Mat<T>* y);
// dx ← dx + ∂L/∂x (resized and zeroed when its shape differs from x's); da, db ← + their
// gradients (same rule); dw (optional, nullptr to skip: it costs a GEMM) ← ∂L/∂W = dyᵀ·x for
// W = diag(a)·C·diag(b), overwritten; dx may be nullptr (first layer).
template <typename T>
void ScaledLinearBackward(const Mat<T>& x, const Mat<T>& c, const Vec<T>& a, const Vec<T>& b,
                          const Mat<T>& z, const Mat<T>& dy, Mat<T>* dx, Vec<T>* da, Vec<T>* db,
                          Mat<T>* dw = nullptr);

}  // namespace quantd::model::grad

#endif  // QUANTD_ENGINE_MODEL_BACKWARD_OPS_H_
