// HessianAccumulator: the proxy Hessian H = E[x xᵀ] of one linear layer's input, accumulated as
// the fp64 sum Σ xᵀx over calibration tokens, mergeable across shards and serializable
// (docs/formats/hessian.md).
// Thread-safety: not thread-safe; one accumulator per shard, merged afterwards.
#ifndef QUANTD_ENGINE_QUANT_HESSIAN_H_
#define QUANTD_ENGINE_QUANT_HESSIAN_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/matrix.h"
#include "engine/quant/device.h"

namespace quantd::quant {

class HessianAccumulator {
 public:
  // n: input dimension of the layer (> 0); starts at zero tokens.
  explicit HessianAccumulator(int n);

  // sum += xᵀx, tokens += T for x [T×n] fp32 row-major. INVALID_ARGUMENT when x has the wrong
  // column count or holds NaN/Inf (the accumulator is then unchanged).
  absl::Status Add(Device& dev, const MatrixF& x);

  int n() const { return n_; }
  int64_t tokens() const { return tokens_; }
  // Σ xᵀx, n×n fp64.
  const MatrixD& sum() const { return sum_; }

  // sum += other.sum, tokens += other.tokens. Exact in the sense that the result depends only on
  // the sequence of merges: fp64 addition is not associative, so callers merge shards in
  // shard-index order to get bit-identical results. INVALID_ARGUMENT on an n mismatch.
  absl::Status Merge(const HessianAccumulator& other);

  // sum / tokens (the zero matrix when tokens == 0).
  MatrixD Mean() const;

  // Versioned, checksummed bytes (docs/formats/hessian.md).
  std::string Serialize() const;
  // INVALID_ARGUMENT for a wrong magic or unsupported version, DATA_LOSS for truncated or
  // corrupted bytes.
  static absl::StatusOr<HessianAccumulator> Parse(std::string_view bytes);

 private:
  int n_;
  int64_t tokens_ = 0;
  MatrixD sum_;
};

}  // namespace quantd::quant

#endif  // QUANTD_ENGINE_QUANT_HESSIAN_H_
