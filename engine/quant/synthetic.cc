#include "engine/quant/synthetic.h"

#include <algorithm>
#include <cmath>

namespace quantd::quant {

double GaussianRng::Next() {
  if (have_spare_) {
    have_spare_ = false;
    return spare_;
  }
  const double u1 = (static_cast<double>(eng_() >> 11) + 1.0) * 0x1.0p-53;
  const double u2 = static_cast<double>(eng_() >> 11) * 0x1.0p-53;
  const double r = std::sqrt(-2.0 * std::log(u1));
  spare_ = r * std::sin(2.0 * M_PI * u2);
  have_spare_ = true;
  return r * std::cos(2.0 * M_PI * u2);
}

MatrixD GaussianMatrix(int rows, int cols, uint64_t seed) {
  GaussianRng g(seed);
  MatrixD a(rows, cols);
  for (int64_t i = 0; i < a.size(); ++i) a.data()[i] = g.Next();
  return a;
}

MatrixF SyntheticWeight(int m, int n, uint64_t seed) {
  GaussianRng g(seed);
  MatrixF w(m, n);
  for (int64_t i = 0; i < w.size(); ++i) {
    const double v = g.Next();
    w.data()[i] = static_cast<float>((g.Bits() % 100 == 0) ? 4 * v : v);
  }
  return w;
}

MatrixD SyntheticHessian(int n, uint64_t seed) {
  const int r = std::max(n / 4, 1);
  MatrixD c = GaussianMatrix(r, n, seed);
  GaussianRng g(seed ^ 0x5851F42D4C957F2Dull);
  for (int j = 0; j < n; ++j) {
    double s = std::exp(0.5 * g.Next());
    if (g.Bits() % 100 == 0) s *= 8;
    c.col(j) *= s;
  }
  MatrixD h = MatrixD::Zero(n, n);
  h.noalias() += c.transpose() * c;
  h /= r;
  h.diagonal().array() += 1e-3 * h.diagonal().mean();
  return h;
}

}  // namespace quantd::quant
