// Scalar uniform grids and round-to-nearest (RTN): the GPTQ min-max grid per output channel
// (optionally per group of input columns, symmetric, or with an MSE clip search) and the QuIP
// scalar grid s = 2.4·RMS(W). Codes are integers q ∈ [0, 2^bits − 1] with ŵ = scale·(q − zero).
// Thread-safety: stateless functions; ScalarGrid is a value type.
#ifndef QUANTD_ENGINE_QUANT_RTN_H_
#define QUANTD_ENGINE_QUANT_RTN_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/matrix.h"

namespace quantd::quant {

// ŵ = scale·(q − zero); zero may be fractional (QuIP grid with odd 2^b − 1).
struct ScalarGrid {
  float scale = 1;
  float zero = 0;
  int maxq = 3;  // 2^bits − 1

  int Code(double w) const;           // clamp(round(w/scale + zero), 0, maxq)
  float Dequant(int q) const { return scale * (static_cast<float>(q) - zero); }
  float Round(double w) const { return Dequant(Code(w)); }
};

// How a grid is fitted to the weights of one (row, group); maxq = 2^bits − 1.
enum class GridForm : uint8_t {
  // GPTQ Quantizer(sym=False): range [min(w,0), max(w,0)], scale = range/maxq, integer zero.
  kAsymmetric = 0,
  // GPTQ Quantizer(sym=True): scale = 2·max|w|/maxq, zero = (maxq+1)/2.
  kSymmetric = 1,
  // llama.cpp Q4_0/Q5_0 (ggml-quants.c quantize_row_q4_0_ref): v = the w of largest |w| (signed),
  // scale = v / −((maxq+1)/2), zero = (maxq+1)/2, so v itself is code 0.
  kSignedMax = 2,
  // llama.cpp Q4_1/Q5_1: ŵ = d·q + m with m = min(w), d = (max(w) − m)/maxq (not widened to 0),
  // stored as scale = d, zero = −m/d (fractional). d and m are always fp16 values.
  kMinOffset = 3,
};

struct RtnParams {
  int bits = 4;            // 2..8
  GridForm form = GridForm::kAsymmetric;  // Default: kAsymmetric
  int group_size = 0;      // Default: 0 = one grid per output channel; else groups of columns
  bool mse_clip = false;   // Default: false; search shrink factors 1 − i/100, i < 80, |err|^2.4
  // Default: false. true: the scale is rounded to the nearest fp16 value BEFORE the zero and the
  // codes are chosen, so a format storing fp16 scales holds the grid exactly (kMinOffset: always).
  bool fp16_scale = false;
};

// The nearest fp16 value of x (ties to even), as a float; clamped to ±65504 and kept nonzero
// (≥ 2^−24 in magnitude) when x is nonzero, so it can serve as a scale.
float RoundToFp16Scale(double x);

// Grid of w[0..len) in the form of `params` (GPTQ's min-max grid widened to include 0 by
// default), with the optional MSE clip search and fp16 scale.
ScalarGrid FitMinMaxGrid(const double* w, int len, const RtnParams& params);

// Importance-weighted grid choice (QuantSpec::hessian_scale): the grid of the form of `params`
// that minimizes sum_i h_i (w_i - round(w_i))^2 over the candidates: the min-max range scaled by
// p = 1 - i/100 for i in [-12, 80), and, for the forms with a fixed zero (kSymmetric,
// kSignedMax), each candidate's least-squares scale for its own codes,
// d = sum h w (q - z) / sum h (q - z)^2 (llama.cpp's make_qx_quants with an importance matrix
// searches the same two ways). h_i >= 0 is the Hessian diagonal E[x_i^2] of the column; all-zero
// h falls back to h_i = 1. Scales are rounded as `params` says (fp16) before they are scored.
// `params.mse_clip` is ignored: this search replaces it.
ScalarGrid FitWeightedGrid(const double* w, const double* h, int len, const RtnParams& params);

// QuIP scalar grid for b bits: s = 2.4·rms; scale = 2s/maxq, zero = maxq/2, so that
// q = clamp(round(((w/s+1)/2)·maxq)) and ŵ = s(2q/maxq − 1).
ScalarGrid QuipGrid(double rms, int bits);

// Number of column groups for n columns (1 when group_size is 0 or ≥ n; the last group may be
// shorter than group_size).
int NumGroups(int n, int group_size);

struct RtnResult {
  MatrixD what;                 // [m×n] dequantized weight
  std::vector<uint8_t> codes;   // m·n codes, row-major
  std::vector<ScalarGrid> grids;  // m·NumGroups grids, row-major [row][group]
};

// Round-to-nearest of w [m×n] with one grid per (row, group). INVALID_ARGUMENT for bits
// outside 2..8 or a negative group size.
// col_weight (n entries, optional): each column's importance (the Hessian diagonal); given, every
// grid is chosen by FitWeightedGrid instead of FitMinMaxGrid.
absl::StatusOr<RtnResult> QuantizeRtn(const MatrixD& w, const RtnParams& params,
                                      const double* col_weight = nullptr);

}  // namespace quantd::quant

#endif  // QUANTD_ENGINE_QUANT_RTN_H_
