// Block LDLQ (QuIP#): adaptive rounding of g-column blocks with a g-dimensional vector codebook.
// Form (docs/algorithms.md "Block LDLQ"): Cholesky H = L Lᵀ; with the g×g diagonal blocks DL_i,
// L ← L·blockdiag(DL_i⁻¹) is unit block-lower and H = L D Lᵀ. Blocks are quantized from last to
// first: x_k = W_k + (W_{>k} − Ŵ_{>k}) L_{>k,k}; Ŵ_k = Q(x_k) row by row (each row of a block is
// one g-vector). Feedback from later batches is applied with one GEMM per 128-column batch.
// Optional greedy block-coordinate passes: Ŵ_k ← Q(Ŵ_k + (W − Ŵ) H_{:,k} H_kk⁻¹).
// Thread-safety: stateless; the codebook is shared read-only.
#ifndef QUANTD_ENGINE_QUANT_BLOCK_LDLQ_H_
#define QUANTD_ENGINE_QUANT_BLOCK_LDLQ_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "common/matrix.h"
#include "engine/quant/codebook.h"
#include "engine/quant/device.h"

namespace quantd::quant {

struct BlockLdlqParams {
  int greedy_passes = 0;  // Default: 0
};

struct BlockLdlqResult {
  MatrixD what;                 // [m×n] quantized weight, codebook values
  std::vector<uint16_t> codes;  // row-major: row r, block b → codes_per_vector() codes
};

// w [m×n], n a multiple of cb.dim(); h the damped PD Hessian with Cholesky factor `lower`.
// INVALID_ARGUMENT on shapes; FAILED_PRECONDITION if a diagonal block is singular.
absl::StatusOr<BlockLdlqResult> BlockLdlq(Device& dev, const MatrixD& w, const MatrixD& h,
                                          const MatrixD& lower, const VectorCodebook& cb,
                                          const BlockLdlqParams& params);

// The same algorithm with any quantizer of whole column blocks: quantize(x, b, &q) must write
// q [m×g], the quantized value of the feedback-corrected block x [m×g] (columns b·g .. b·g+g−1),
// and remember whatever codes it produced (the last call for a block wins). QTIP uses it with
// g = 16 and 16×16 trellis tiles. Returns Ŵ [m×n].
using BlockQuantizeFn = std::function<void(const MatrixD& x, int block, MatrixD* q)>;
absl::StatusOr<MatrixD> BlockLdlqWith(Device& dev, const MatrixD& w, const MatrixD& h,
                                      const MatrixD& lower, int g, int greedy_passes,
                                      const BlockQuantizeFn& quantize);

// Plain nearest rounding of every row g-vector (the no-feedback baseline).
BlockLdlqResult RoundToCodebook(const MatrixD& w, const VectorCodebook& cb);

}  // namespace quantd::quant

#endif  // QUANTD_ENGINE_QUANT_BLOCK_LDLQ_H_
