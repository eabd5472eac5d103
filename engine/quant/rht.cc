#include "engine/quant/rht.h"

#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"

namespace quantd::quant {
namespace {

constexpr uint64_t kFallbackSeedMix = 0x9E3779B97F4A7C15ull;

// Standard normal samples from mt19937_64 bits by Box–Muller (no std::*_distribution, whose
// output is implementation-defined).
class Gaussian {
 public:
  explicit Gaussian(uint64_t seed) : eng_(seed) {}
  double Next() {
    if (have_spare_) {
      have_spare_ = false;
      return spare_;
    }
    const double u1 = (static_cast<double>(eng_() >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
    const double u2 = static_cast<double>(eng_() >> 11) * 0x1.0p-53;          // [0, 1)
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double t = 2.0 * M_PI * u2;
    spare_ = r * std::sin(t);
    have_spare_ = true;
    return r * std::cos(t);
  }

 private:
  std::mt19937_64 eng_;
  bool have_spare_ = false;
  double spare_ = 0;
};

// A random k×k orthogonal matrix: Gaussian rows orthonormalized by modified Gram–Schmidt, twice.
MatrixD RandomOrthogonal(int k, Gaussian* g) {
  MatrixD a(k, k);
  for (int64_t i = 0; i < a.size(); ++i) a.data()[i] = g->Next();
  for (int pass = 0; pass < 2; ++pass) {
    for (int i = 0; i < k; ++i) {
      for (int j = 0; j < i; ++j) a.row(i) -= a.row(i).dot(a.row(j)) * a.row(j);
      a.row(i) /= a.row(i).norm();
    }
  }
  return a;
}

}  // namespace

absl::StatusOr<Rht> MakeRht(int n, uint64_t seed) {
  if (n <= 0 || n > (1 << 24)) {
    return absl::InvalidArgumentError(absl::StrCat("RHT dimension ", n, " out of range"));
  }
  Rht r;
  r.n_ = n;
  r.seed_ = seed;
  std::mt19937_64 eng(seed);
  r.signs_.resize(n);
  for (int i = 0; i < n; ++i) r.signs_[i] = (eng() >> 63) ? -1 : 1;
  absl::StatusOr<HadamardTransform> h = HadamardTransform::Make(n);
  if (h.ok()) {
    r.hadamard_ = *std::move(h);
    return r;
  }
  int a = 1;
  for (int d = 1; static_cast<int64_t>(d) * d <= n; ++d) {
    if (n % d == 0) a = d;
  }
  Gaussian g(seed ^ kFallbackSeedMix);
  r.fa_ = RandomOrthogonal(a, &g);
  r.fb_ = RandomOrthogonal(n / a, &g);
  return r;
}

// x ← V x (transpose = false) or Vᵀ x; scratch holds n doubles.
void Rht::ApplyOne(double* x, double* scratch, bool transpose) const {
  if (hadamard_) {
    if (transpose) hadamard_->ApplyTranspose(x, scratch);
    else hadamard_->Apply(x, scratch);
    return;
  }
  // X (a×b row-major) → A X Bᵀ, or Aᵀ X B.
  const int a = static_cast<int>(fa_.rows()), b = static_cast<int>(fb_.rows());
  Eigen::Map<MatrixD> xm(x, a, b);
  Eigen::Map<MatrixD> tmp(scratch, a, b);
  if (transpose) {
    tmp.noalias() = fa_.transpose() * xm;
    xm.noalias() = tmp * fb_;
  } else {
    tmp.noalias() = fa_ * xm;
    xm.noalias() = tmp * fb_.transpose();
  }
}

void Rht::Run(MatrixD* rows, bool inverse) const {
  if (rows->cols() != n_) return;
  const int64_t r = rows->rows();
#pragma omp parallel if (r * n_ >= (int64_t{1} << 16))
  {
    std::vector<double> scratch(n_);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < r; ++i) {
      double* x = rows->data() + i * n_;
      if (!inverse) {
        for (int j = 0; j < n_; ++j) x[j] *= signs_[j];
        ApplyOne(x, scratch.data(), false);
      } else {
        ApplyOne(x, scratch.data(), true);
        for (int j = 0; j < n_; ++j) x[j] *= signs_[j];
      }
    }
  }
}

void Rht::ApplyRows(MatrixF* rows) const {
  MatrixD d = rows->cast<double>();
  ApplyRows(&d);
  *rows = d.cast<float>();
}

void Rht::InverseRows(MatrixF* rows) const {
  MatrixD d = rows->cast<double>();
  InverseRows(&d);
  *rows = d.cast<float>();
}

void RhtWeight(const Rht& out, const Rht& in, MatrixD* w) {
  in.ApplyRows(w);
  MatrixD t = w->transpose();
  out.ApplyRows(&t);
  *w = t.transpose();
}

void InverseRhtWeight(const Rht& out, const Rht& in, MatrixD* w) {
  in.InverseRows(w);
  MatrixD t = w->transpose();
  out.InverseRows(&t);
  *w = t.transpose();
}

void RhtHessian(const Rht& in, MatrixD* h) {
  in.ApplyRows(h);
  MatrixD t = h->transpose();
  in.ApplyRows(&t);
  *h = 0.5 * (t + t.transpose());
}

}  // namespace quantd::quant
