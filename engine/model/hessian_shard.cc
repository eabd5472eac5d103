#include "engine/model/hessian_shard.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace quantd::model {

std::vector<double> PackUpper(const MatrixD& sym) {
  const int64_t n = sym.cols();
  std::vector<double> out(static_cast<size_t>(PackedUpperSize(n)));
  double* dst = out.data();
  for (int64_t j = 0; j < n; ++j) {
    const double* col = sym.data() + j * sym.rows();  // column-major: rows 0..j are contiguous
    dst = std::copy(col, col + j + 1, dst);
  }
  return out;
}

absl::StatusOr<MatrixD> UnpackUpper(absl::Span<const double> packed, int64_t n) {
  if (n < 0 || static_cast<int64_t>(packed.size()) != PackedUpperSize(n)) {
    return absl::InvalidArgumentError(absl::StrCat("packed upper triangle has ", packed.size(),
                                                   " values, not n(n+1)/2 for n = ", n));
  }
  MatrixD m(n, n);
  const double* src = packed.data();
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t i = 0; i <= j; ++i) m(i, j) = m(j, i) = src[i];
    src += j + 1;
  }
  return m;
}

absl::StatusOr<int64_t> PackedUpperDim(int64_t size) {
  if (size >= 0) {
    const int64_t n = static_cast<int64_t>(std::llround((std::sqrt(8.0 * size + 1) - 1) / 2));
    if (PackedUpperSize(n) == size) return n;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(size, " values are not the packed upper triangle of a square matrix"));
}

}  // namespace quantd::model
