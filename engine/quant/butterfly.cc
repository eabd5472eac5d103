#include "engine/quant/butterfly.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/quant/rtn.h"

namespace quantd::quant {
namespace {

constexpr double kUniformKurtosis = 9.0 / 5.0;
constexpr int kMaxN = 1 << 24;

int Log2(int s) {
  int k = 0;
  while ((1 << k) < s) ++k;
  return k;
}

}  // namespace

int64_t Butterfly::NumAngles(int n) {
  int64_t total = 0;
  for (int bit = 30; bit >= 0; --bit) {
    const int s = 1 << bit;
    if (n & s) total += static_cast<int64_t>(s / 2) * bit;
  }
  return total;
}

absl::StatusOr<Butterfly> Butterfly::Make(int n) {
  if (n < 1 || n > kMaxN) {
    return absl::InvalidArgumentError(absl::StrCat("butterfly size ", n, " is outside [1, 2^24]"));
  }
  Butterfly b;
  b.n_ = n;
  int offset = 0;
  int64_t next_angle = 0;
  for (int bit = 30; bit >= 0; --bit) {
    const int s = 1 << bit;
    if ((n & s) == 0) continue;
    for (int l = 0; l < Log2(s); ++l) {
      Stage st;
      st.angle0 = next_angle;
      for (int i = 0; i < s; ++i) {
        if (i & (1 << l)) continue;
        st.i.push_back(offset + i);
        st.j.push_back(offset + i + (1 << l));
      }
      next_angle += static_cast<int64_t>(st.i.size());
      b.stages_.push_back(std::move(st));
    }
    offset += s;
  }
  b.angles_.assign(static_cast<size_t>(next_angle), 0.0);
  return b;
}

void Butterfly::Rotate(const Stage& s, bool inverse, MatrixD* x) const {
  // Row-major storage: sweep each row once over all pairs of the stage (contiguous), not each
  // pair down all rows (a stride of n doubles per access).
  const size_t np = s.i.size();
  std::vector<double> c(np), sn(np);
  for (size_t p = 0; p < np; ++p) {
    const double th = angles_[s.angle0 + p];
    c[p] = std::cos(th);
    sn[p] = inverse ? -std::sin(th) : std::sin(th);
  }
  for (Eigen::Index r = 0; r < x->rows(); ++r) {
    double* row = x->row(r).data();
    for (size_t p = 0; p < np; ++p) {
      const int i = s.i[p], j = s.j[p];
      const double a = row[i], b = row[j];
      row[i] = a * c[p] - b * sn[p];
      row[j] = a * sn[p] + b * c[p];
    }
  }
}

void Butterfly::ApplyRows(MatrixD* rows) const {
  if (rows->cols() != n_) return;
  for (const Stage& s : stages_) Rotate(s, false, rows);
}

void Butterfly::InverseRows(MatrixD* rows) const {
  if (rows->cols() != n_) return;
  for (auto it = stages_.rbegin(); it != stages_.rend(); ++it) Rotate(*it, true, rows);
}

MatrixD Butterfly::Matrix() const {
  MatrixD g = MatrixD::Identity(n_, n_);
  ApplyRows(&g);
  return g;
}

std::vector<double> Butterfly::Backward(const MatrixD& dl_dg) const {
  std::vector<double> grad(angles_.size(), 0.0);
  if (dl_dg.rows() != n_ || dl_dg.cols() != n_) return grad;
  // P_k = P_{k−1}·L_k. With P_k and Γ_k = ∂L/∂P_k: ∂P_k[:,i]/∂θ = −P_k[:,j] and
  // ∂P_k[:,j]/∂θ = P_k[:,i]; then Γ_{k−1} = Γ_k·L_kᵀ and P_{k−1} = P_k·L_kᵀ.
  MatrixD p = Matrix();
  MatrixD gamma = dl_dg;
  for (auto it = stages_.rbegin(); it != stages_.rend(); ++it) {
    const Stage& s = *it;
    // grad[q] = Γ[:,j]·P[:,i] − Γ[:,i]·P[:,j], accumulated row by row (row-major storage).
    double* g = grad.data() + s.angle0;
    for (Eigen::Index r = 0; r < p.rows(); ++r) {
      const double* pr = p.row(r).data();
      const double* gr = gamma.row(r).data();
      for (size_t q = 0; q < s.i.size(); ++q) {
        const int i = s.i[q], j = s.j[q];
        g[q] += gr[j] * pr[i] - gr[i] * pr[j];
      }
    }
    Rotate(s, true, &p);
    Rotate(s, true, &gamma);
  }
  return grad;
}

MatrixD ButterflyRoundingError(const Butterfly& b, const MatrixD& w, int bits) {
  MatrixD y = w;
  b.ApplyRows(&y);
  const double rms = y.size() ? std::sqrt(y.squaredNorm() / static_cast<double>(y.size())) : 0.0;
  const ScalarGrid g = QuipGrid(rms, bits);
  MatrixD delta(y.rows(), y.cols());
  for (Eigen::Index k = 0; k < y.size(); ++k) {
    delta.data()[k] = static_cast<double>(g.Round(y.data()[k])) - y.data()[k];
  }
  return delta;
}

namespace {

// tr(W H Wᵀ), the surrogate's normalizer; constant while the angles are learned.
absl::StatusOr<double> SurrogateNorm(Device& dev, const MatrixD& w, const MatrixD& h) {
  MatrixD wh;
  QUANTD_RETURN_IF_ERROR(dev.Gemm(w, h, &wh));
  return std::max(wh.cwiseProduct(w).sum(), std::numeric_limits<double>::min());
}

// The surrogate with its normalizer z given. With P = δ·Gᵀ [m×n], tr(δ Gᵀ H G δᵀ) = Σ (P H) ∘ P
// and ∂/∂G of it is 2·H·G·δᵀδ = 2·(P H)ᵀ·δ (H symmetric): five m·n² products per step, against
// 3n³ + 4m·n² + m²·n for the n×n form (down_proj of SmolLM2-135M: 2.5× fewer flops).
absl::StatusOr<double> Surrogate(Device& dev, const Butterfly& b, const MatrixD& w,
                                 const MatrixD& h, const MatrixD& delta, double lambda, double z,
                                 std::vector<double>* grad) {
  const MatrixD g = b.Matrix();
  MatrixD pt, ph, y;
  QUANTD_RETURN_IF_ERROR(dev.Gemm(delta, MatrixD(g.transpose()), &pt));  // P = δ Gᵀ
  QUANTD_RETURN_IF_ERROR(dev.Gemm(pt, h, &ph));                          // P H
  const double proxy = ph.cwiseProduct(pt).sum() / z;
  QUANTD_RETURN_IF_ERROR(dev.Gemm(w, g, &y));
  const double count = static_cast<double>(y.size());
  const double m2 = y.squaredNorm() / count;
  const double m4 = y.array().pow(4).sum() / count;
  const double kappa = m2 > 0 ? m4 / (m2 * m2) : kUniformKurtosis;
  const double f = proxy + lambda * (kappa - kUniformKurtosis) * (kappa - kUniformKurtosis);
  if (grad != nullptr) {
    MatrixD dg;
    QUANTD_RETURN_IF_ERROR(dev.Gemm(MatrixD(ph.transpose()), delta, &dg));
    dg *= 2.0 / z;
    if (m2 > 0 && lambda != 0) {
      // m2 is invariant under orthogonal G, so only m4 moves κ.
      const double coef = 2.0 * lambda * (kappa - kUniformKurtosis) * 4.0 / (count * m2 * m2);
      MatrixD du;
      QUANTD_RETURN_IF_ERROR(
          dev.Gemm(MatrixD(w.transpose()), MatrixD((coef * y.array().cube()).matrix()), &du));
      dg += du;
    }
    *grad = b.Backward(dg);
  }
  return f;
}

}  // namespace

absl::StatusOr<double> ButterflySurrogate(Device& dev, const Butterfly& b, const MatrixD& w,
                                          const MatrixD& h, const MatrixD& delta, double lambda,
                                          std::vector<double>* grad) {
  QUANTD_ASSIGN_OR_RETURN(const double z, SurrogateNorm(dev, w, h));
  return Surrogate(dev, b, w, h, delta, lambda, z, grad);
}

absl::StatusOr<Butterfly> LearnButterflyImpl(Device& dev, const MatrixD& w, const MatrixD& h,
                                             const ButterflyParams& p,
                                             double (*score)(const Butterfly&, void*), void* ctx) {
  const int n = static_cast<int>(w.cols());
  if (h.rows() != n || h.cols() != n) {
    return absl::InvalidArgumentError(absl::StrCat("butterfly: Hessian is [", h.rows(), ",",
                                                   h.cols(), "], weight has ", n, " columns"));
  }
  if (p.bits < 2 || p.bits > 8 || p.steps < 0 || !(p.lr > 0) || !(p.uniformity >= 0) ||
      p.check_every < 1) {
    return absl::InvalidArgumentError(absl::StrCat("butterfly params: bits ", p.bits, ", steps ",
                                                   p.steps, ", lr ", p.lr, ", uniformity ",
                                                   p.uniformity, ", check_every ", p.check_every));
  }
  absl::StatusOr<Butterfly> made = Butterfly::Make(n);
  if (!made.ok()) return made.status();
  Butterfly b = std::move(*made);
  Butterfly best = b;
  double best_score = score(b, ctx);
  const size_t na = b.angles().size();
  std::vector<double> m1(na, 0.0), m2(na, 0.0), grad;
  QUANTD_ASSIGN_OR_RETURN(const double z, SurrogateNorm(dev, w, h));
  constexpr double kBeta1 = 0.9, kBeta2 = 0.999, kEps = 1e-8;
  for (int step = 1; step <= p.steps && na > 0; ++step) {
    const MatrixD delta = ButterflyRoundingError(b, w, p.bits);
    QUANTD_RETURN_IF_ERROR(Surrogate(dev, b, w, h, delta, p.uniformity, z, &grad).status());
    const double c1 = 1.0 - std::pow(kBeta1, step), c2 = 1.0 - std::pow(kBeta2, step);
    std::vector<double>& th = b.mutable_angles();
    for (size_t k = 0; k < na; ++k) {
      m1[k] = kBeta1 * m1[k] + (1 - kBeta1) * grad[k];
      m2[k] = kBeta2 * m2[k] + (1 - kBeta2) * grad[k] * grad[k];
      th[k] -= p.lr * (m1[k] / c1) / (std::sqrt(m2[k] / c2) + kEps);
    }
    if (step % p.check_every == 0 || step == p.steps) {
      const double s = score(b, ctx);
      if (s < best_score) {
        best_score = s;
        best = b;
      }
    }
  }
  return best;
}

}  // namespace quantd::quant
