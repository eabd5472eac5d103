#include "engine/model/backward_ops.h"

#include <cmath>

namespace quantd::model::grad {
namespace {

template <typename M>
void ZeroLike(Eigen::Index rows, Eigen::Index cols, M* m) {
  if (m->rows() != rows || m->cols() != cols) m->setZero(rows, cols);
}

}  // namespace

template <typename T>
void RmsNormForward(const Mat<T>& x, const Vec<T>& w, T eps, Mat<T>* y, Vec<T>* inv_rms) {
  y->resize(x.rows(), x.cols());
  inv_rms->resize(x.rows());
  const T n = static_cast<T>(x.cols());
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    const T inv = T(1) / std::sqrt(x.row(t).squaredNorm() / n + eps);
    (*inv_rms)(t) = inv;
    y->row(t) = (x.row(t) * inv).cwiseProduct(w.transpose());
  }
}

// With r = inv_rms and x̂ = x·r: y = x̂ ⊙ w, so ∂L/∂w = Σ_t dy ⊙ x̂ and, with g = dy ⊙ w,
// ∂L/∂x = r·(g − x̂·mean(g ⊙ x̂)) (the derivative of r is −r³·x/n).
template <typename T>
void RmsNormBackward(const Mat<T>& x, const Vec<T>& w, const Vec<T>& inv_rms, const Mat<T>& dy,
                     Mat<T>* dx, Vec<T>* dw) {
  ZeroLike(x.rows(), x.cols(), dx);
  if (dw->size() != w.size()) dw->setZero(w.size());
  const T n = static_cast<T>(x.cols());
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    const T r = inv_rms(t);
    const auto xh = (x.row(t) * r).eval();
    dw->transpose() += dy.row(t).cwiseProduct(xh);
    const auto g = dy.row(t).cwiseProduct(w.transpose()).eval();
    const T mean = g.dot(xh) / n;
    dx->row(t) += r * (g - xh * mean);
  }
}

template <typename T>
void Rope(const Mat<T>& cos, const Mat<T>& sin, int heads, int hd, bool inverse, Mat<T>* m) {
  const int half = hd / 2;
  const Eigen::Index period = cos.rows();
  const T sign = inverse ? T(-1) : T(1);
  for (Eigen::Index t = 0; t < m->rows(); ++t) {
    T* row = m->row(t).data();
    const T* c = cos.row(t % period).data();
    const T* s = sin.row(t % period).data();
    for (int h = 0; h < heads; ++h) {
      T* v = row + h * hd;
      for (int i = 0; i < half; ++i) {
        const T a = v[i], b = v[i + half], si = sign * s[i];
        v[i] = a * c[i] - b * si;
        v[i + half] = b * c[i] + a * si;
      }
    }
  }
}

template <typename T>
void AttentionForward(const Eigen::Ref<const Mat<T>>& q, const Eigen::Ref<const Mat<T>>& k,
                      const Eigen::Ref<const Mat<T>>& v, Eigen::Ref<Mat<T>> out, Mat<T>* p) {
  const Eigen::Index n = q.rows();
  p->noalias() = q * k.transpose();
  for (Eigen::Index t = 0; t < n; ++t) {
    auto live = p->row(t).head(t + 1).array();
    live = (live - live.maxCoeff()).exp();
    live *= T(1) / live.sum();
    p->row(t).tail(n - t - 1).setZero();
  }
  out.noalias() = *p * v;
}

// S = Q·Kᵀ, P = softmax(S) row-wise over the causal part, O = P·V:
// dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P)) (zero where P is masked),
// dQ = dS·K, dK = dSᵀ·Q.
template <typename T>
void AttentionBackward(const Eigen::Ref<const Mat<T>>& q, const Eigen::Ref<const Mat<T>>& k,
                       const Eigen::Ref<const Mat<T>>& v, const Mat<T>& p,
                       const Eigen::Ref<const Mat<T>>& dout, Eigen::Ref<Mat<T>> dq,
                       Eigen::Ref<Mat<T>> dk, Eigen::Ref<Mat<T>> dv) {
  dv.noalias() += p.transpose() * dout;
  Mat<T> ds = dout * v.transpose();
  for (Eigen::Index t = 0; t < ds.rows(); ++t) {
    const T dot = ds.row(t).head(t + 1).dot(p.row(t).head(t + 1));
    ds.row(t).array() = p.row(t).array() * (ds.row(t).array() - dot);
  }
  dq.noalias() += ds * k;
  dk.noalias() += ds.transpose() * q;
}

template <typename T>
void AttentionBackwardHeads(const Mat<T>& q, const Mat<T>& k, const Mat<T>& v, const Mat<T>* p,
                            const Mat<T>& dout, int heads, int kv_heads, int hd, Mat<T>* dq,
                            Mat<T>* dk, Mat<T>* dv) {
  const int group = heads / kv_heads;
  ZeroLike(q.rows(), q.cols(), dq);
  ZeroLike(k.rows(), k.cols(), dk);
  ZeroLike(v.rows(), v.cols(), dv);
  for (int h = 0; h < heads; ++h) {
    const int kvh = h / group;
    AttentionBackward<T>(q.middleCols(h * hd, hd), k.middleCols(kvh * hd, hd),
                         v.middleCols(kvh * hd, hd), p[h], dout.middleCols(h * hd, hd),
                         dq->middleCols(h * hd, hd), dk->middleCols(kvh * hd, hd),
                         dv->middleCols(kvh * hd, hd));
  }
}

template <typename T>
void SiluMulForward(const Mat<T>& g, const Mat<T>& u, Mat<T>* out) {
  *out = (g.array() / (T(1) + (-g.array()).exp()) * u.array()).matrix();
}

// silu(g) = g·σ(g), silu'(g) = σ(g)·(1 + g·(1 − σ(g))).
template <typename T>
void SiluMulBackward(const Mat<T>& g, const Mat<T>& u, const Mat<T>& dout, Mat<T>* dg,
                     Mat<T>* du) {
  const auto sig = (T(1) / (T(1) + (-g.array()).exp())).eval();
  *du = (dout.array() * g.array() * sig).matrix();
  *dg = (dout.array() * u.array() * sig * (T(1) + g.array() * (T(1) - sig))).matrix();
}

template <typename T>
void ScaledLinearForward(const Mat<T>& x, const Mat<T>& c, const Vec<T>& a, const Vec<T>& b,
                         Mat<T>* z, Mat<T>* y) {
  const Mat<T> xb = x * b.asDiagonal();
  z->noalias() = xb * c.transpose();
  *y = *z * a.asDiagonal();
}

// y = z ⊙ a with z = (x ⊙ b)·Cᵀ: ∂L/∂a = Σ_t dy ⊙ z; with e = (dy ⊙ a)·C (N x n),
// ∂L/∂b = Σ_t x ⊙ e and ∂L/∂x = e ⊙ b. No product of the size of W is needed.
template <typename T>
void ScaledLinearBackward(const Mat<T>& x, const Mat<T>& c, const Vec<T>& a, const Vec<T>& b,
                          const Mat<T>& z, const Mat<T>& dy, Mat<T>* dx, Vec<T>* da, Vec<T>* db,
                          Mat<T>* dw) {
  if (da->size() != a.size()) da->setZero(a.size());
  if (db->size() != b.size()) db->setZero(b.size());
  *da += dy.cwiseProduct(z).colwise().sum().transpose();
  const Mat<T> dya = dy * a.asDiagonal();
  const Mat<T> e = dya * c;
  *db += x.cwiseProduct(e).colwise().sum().transpose();
  if (dx != nullptr) {
    ZeroLike(x.rows(), x.cols(), dx);
    dx->noalias() += e * b.asDiagonal();
  }
  if (dw != nullptr) dw->noalias() = dy.transpose() * x;
}

#define QUANTD_GRAD_INSTANTIATE(T)                                                              \
  template void RmsNormForward<T>(const Mat<T>&, const Vec<T>&, T, Mat<T>*, Vec<T>*);           \
  template void RmsNormBackward<T>(const Mat<T>&, const Vec<T>&, const Vec<T>&, const Mat<T>&,  \
                                   Mat<T>*, Vec<T>*);                                          \
  template void Rope<T>(const Mat<T>&, const Mat<T>&, int, int, bool, Mat<T>*);                 \
  template void AttentionForward<T>(const Eigen::Ref<const Mat<T>>&,                            \
                                    const Eigen::Ref<const Mat<T>>&,                            \
                                    const Eigen::Ref<const Mat<T>>&, Eigen::Ref<Mat<T>>,        \
                                    Mat<T>*);                                                   \
  template void AttentionBackward<T>(                                                           \
      const Eigen::Ref<const Mat<T>>&, const Eigen::Ref<const Mat<T>>&,                         \
      const Eigen::Ref<const Mat<T>>&, const Mat<T>&, const Eigen::Ref<const Mat<T>>&,          \
      Eigen::Ref<Mat<T>>, Eigen::Ref<Mat<T>>, Eigen::Ref<Mat<T>>);                              \
  template void AttentionBackwardHeads<T>(const Mat<T>&, const Mat<T>&, const Mat<T>&,          \
                                          const Mat<T>*, const Mat<T>&, int, int, int, Mat<T>*, \
                                          Mat<T>*, Mat<T>*);                                    \
  template void SiluMulForward<T>(const Mat<T>&, const Mat<T>&, Mat<T>*);                       \
  template void SiluMulBackward<T>(const Mat<T>&, const Mat<T>&, const Mat<T>&, Mat<T>*,        \
                                   Mat<T>*);                                                    \
  template void ScaledLinearForward<T>(const Mat<T>&, const Mat<T>&, const Vec<T>&,             \
                                       const Vec<T>&, Mat<T>*, Mat<T>*);                        \
  template void ScaledLinearBackward<T>(const Mat<T>&, const Mat<T>&, const Vec<T>&,            \
                                        const Vec<T>&, const Mat<T>&, const Mat<T>&, Mat<T>*,   \
                                        Vec<T>*, Vec<T>*, Mat<T>*);

QUANTD_GRAD_INSTANTIATE(float)
QUANTD_GRAD_INSTANTIATE(double)
#undef QUANTD_GRAD_INSTANTIATE

}  // namespace quantd::model::grad
