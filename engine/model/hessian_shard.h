// The storage of Hessian sums between workers and coordinator: a symmetric n x n fp64 sum is
// kept as its upper triangle in LAPACK's packed column-major order ('U' packed: element (i, j),
// i <= j, at i + j(j + 1)/2), n(n + 1)/2 values, half the bytes of the full matrix. Shards
// (`L<l>.<group>.upper`) and merged Hessians (`upper`) hold this layout
// (docs/ARCHITECTURE.md "Hessian data at real size"). Packing a matrix whose triangles are equal
// (HessianCapture / LayerHessianStream fill both) and unpacking it gives the same bits back.
#ifndef QUANTD_ENGINE_MODEL_HESSIAN_SHARD_H_
#define QUANTD_ENGINE_MODEL_HESSIAN_SHARD_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/matrix.h"

namespace quantd::model {

inline int64_t PackedUpperSize(int64_t n) { return n * (n + 1) / 2; }

// The upper triangle of square `sym`, packed column by column.
std::vector<double> PackUpper(const MatrixD& sym);

// The symmetric n x n matrix whose upper triangle is `packed` (both triangles filled).
// INVALID_ARGUMENT when packed.size() != n(n + 1)/2.
absl::StatusOr<MatrixD> UnpackUpper(absl::Span<const double> packed, int64_t n);

// n with n(n + 1)/2 == size; INVALID_ARGUMENT when there is none.
absl::StatusOr<int64_t> PackedUpperDim(int64_t size);

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_MODEL_HESSIAN_SHARD_H_
