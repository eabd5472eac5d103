#include "engine/quant/hadamard.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/quant/hadamard_data.h"

namespace quantd::quant {
namespace {

// Quadratic character χ(a) over the prime field GF(p): 0, +1 (square) or −1.
int Chi(int a, int p) {
  a %= p;
  if (a < 0) a += p;
  if (a == 0) return 0;
  for (int x = 1; x < p; ++x) {
    if ((x * x) % p == a) return 1;
  }
  return -1;
}

// Paley I: prime p ≡ 3 (mod 4), order p+1. H = I + S with S = [[0, 1ᵀ], [−1, Q]], Q_ij = χ(j−i).
std::vector<int8_t> PaleyI(int p) {
  const int q = p + 1;
  std::vector<int8_t> h(q * q);
  for (int i = 0; i < q; ++i) {
    for (int j = 0; j < q; ++j) {
      int s;
      if (i == 0 && j == 0) s = 0;
      else if (i == 0) s = 1;
      else if (j == 0) s = -1;
      else s = Chi(j - i, p);
      h[i * q + j] = static_cast<int8_t>(s + (i == j ? 1 : 0));
    }
  }
  return h;
}

// Paley II: prime p ≡ 1 (mod 4), order 2(p+1). C = [[0, 1ᵀ], [1, Q]] (symmetric conference
// matrix); each 0 becomes [[1,−1],[−1,−1]] and each ±1 becomes ±[[1,1],[1,−1]].
std::vector<int8_t> PaleyII(int p) {
  const int c = p + 1, q = 2 * c;
  std::vector<int8_t> h(q * q);
  for (int i = 0; i < c; ++i) {
    for (int j = 0; j < c; ++j) {
      int e;
      if (i == 0 && j == 0) e = 0;
      else if (i == 0 || j == 0) e = 1;
      else e = Chi(j - i, p);
      const int blk[2][2] = {{e == 0 ? 1 : e, e == 0 ? -1 : e}, {e == 0 ? -1 : e, e == 0 ? -1 : -e}};
      for (int a = 0; a < 2; ++a) {
        for (int b = 0; b < 2; ++b) h[(2 * i + a) * q + 2 * j + b] = static_cast<int8_t>(blk[a][b]);
      }
    }
  }
  return h;
}

}  // namespace

const std::vector<int>& HadamardBaseOrders() {
  static const std::vector<int> orders = {1, 12, 20, 28, 36, 52, 60, 108, 116, 124, 140, 156, 172};
  return orders;
}

absl::StatusOr<std::vector<int8_t>> HadamardBase(int q) {
  switch (q) {
    case 1: return std::vector<int8_t>{1};
    case 12: return PaleyI(11);
    case 20: return PaleyI(19);
    case 28: return PaleyII(13);
    case 36: return PaleyII(17);
    case 60: return PaleyI(59);
    case 108: return PaleyI(107);
    case 124: return PaleyII(61);
    case 140: return PaleyI(139);
    default: break;
  }
  const char* const* rows = HadamardDataRows(q);
  if (rows == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("no Hadamard base matrix of order ", q));
  }
  std::vector<int8_t> h(static_cast<size_t>(q) * q);
  for (int i = 0; i < q; ++i) {
    for (int j = 0; j < q; ++j) h[i * q + j] = rows[i][j] == '+' ? 1 : -1;
  }
  return h;
}

std::optional<HadamardFactors> FactorHadamard(int n) {
  if (n <= 0) return std::nullopt;
  for (int q : HadamardBaseOrders()) {
    if (n % q != 0) continue;
    const int p = n / q;
    if ((p & (p - 1)) == 0) return HadamardFactors{p, q};
  }
  return std::nullopt;
}

void Fwht(double* x, int64_t len) {
  for (int64_t h = 1; h < len; h <<= 1) {
    for (int64_t i = 0; i < len; i += 2 * h) {
      for (int64_t j = i; j < i + h; ++j) {
        const double a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
}

absl::StatusOr<HadamardTransform> HadamardTransform::Make(int n) {
  std::optional<HadamardFactors> f = FactorHadamard(n);
  if (!f) {
    return absl::InvalidArgumentError(
        absl::StrCat("dimension ", n, " is not 2^k times a known Hadamard order"));
  }
  absl::StatusOr<std::vector<int8_t>> hq = HadamardBase(f->q);
  if (!hq.ok()) return hq.status();
  return HadamardTransform(f->p, f->q, *std::move(hq));
}

// x viewed as a p×q row-major matrix X: V x = vec(H_p X H_qᵀ)/√n.
void HadamardTransform::Run(double* x, double* scratch, bool transpose) const {
  const int p = p_, q = q_;
  if (q > 1) {
    for (int a = 0; a < p; ++a) {
      double* row = x + static_cast<int64_t>(a) * q;
      for (int i = 0; i < q; ++i) {
        double s = 0;
        if (transpose) {
          for (int j = 0; j < q; ++j) s += hq_[j * q + i] * row[j];
        } else {
          const int8_t* hr = &hq_[i * q];
          for (int j = 0; j < q; ++j) s += hr[j] * row[j];
        }
        scratch[i] = s;
      }
      for (int i = 0; i < q; ++i) row[i] = scratch[i];
    }
  }
  // H_p is symmetric (Sylvester), so the transpose is the same butterfly over rows of X.
  for (int64_t h = 1; h < p; h <<= 1) {
    for (int64_t i = 0; i < p; i += 2 * h) {
      for (int64_t a = i; a < i + h; ++a) {
        double* r0 = x + a * q;
        double* r1 = x + (a + h) * q;
        for (int b = 0; b < q; ++b) {
          const double u = r0[b], v = r1[b];
          r0[b] = u + v;
          r1[b] = u - v;
        }
      }
    }
  }
  const double norm = 1.0 / std::sqrt(static_cast<double>(p) * q);
  const int64_t n = static_cast<int64_t>(p) * q;
  for (int64_t i = 0; i < n; ++i) x[i] *= norm;
}

}  // namespace quantd::quant
