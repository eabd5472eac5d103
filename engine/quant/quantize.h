// The entry point the worker calls: quantize one linear layer's weight with one of four methods
// (RTN, GPTQ, QuIP, QuIP#) given its proxy Hessian, and turn the self-describing packed bytes
// (docs/formats/packed_matrix.md) back into weights.
// Thread-safety: all functions are thread-safe as long as each concurrent call uses its own
// Device (see device.h).
#ifndef QUANTD_ENGINE_QUANT_QUANTIZE_H_
#define QUANTD_ENGINE_QUANT_QUANTIZE_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/matrix.h"
#include "engine/quant/device.h"
#include "engine/quant/grid_target.h"
#include "engine/quant/method_table.h"
#include "engine/quant/trellis.h"

namespace quantd::quant {

// Method and what each one is: method_table.h.
// A name of the method table; INVALID_ARGUMENT listing the names otherwise.
absl::StatusOr<Method> ParseMethod(std::string_view name);
std::string_view MethodName(Method m);

struct QuantSpec {
  Method method = Method::kQuipSharp;  // Default: quip-sharp
  int bits = 2;              // Default: 2. rtn/gptq: 2,3,4,8; quip, quarot, butterfly: 2,3,4; quip-sharp: 2 (e8p), 3 (rvq3), 4 (rvq4); qtip: 2,3,4 (= k)
  uint64_t seed = 0;         // Default: 0. Seeds RHT signs.
  int group_size = 0;        // Default: 0 = per output channel (rtn, gptq, quarot only)
  bool mse_clip = false;     // Default: false (rtn, gptq, quarot)
  // Default: false (gptq, quarot). GPTQ's "act order": columns are quantized in decreasing order
  // of H_ii, so the inputs that carry the most energy are rounded first, while the most columns
  // are left to absorb their error. With groups the grids are static (AutoGPTQ static_groups):
  // fit on the original weights of each group before the sweep.
  bool act_order = false;
  // Default: false (rtn, gptq, quarot). Choose each grid (scale; zero for asymmetric forms) by
  // the error weighted with the Hessian diagonal, sum_i H_ii (w_i - ŵ_i)^2, over shrunk/widened
  // ranges and least-squares scales (rtn.h FitWeightedGrid), as llama.cpp's importance matrix
  // does; gptq's error feedback then rounds onto that grid. Replaces mse_clip's search.
  bool hessian_scale = false;
  int greedy_passes = 0;     // Default: 0 (quip-sharp)
  double codebook_scale = 0; // Default: 0 = codebook default (quip-sharp; qtip: trellis input scale)
  TrellisCode trellis_code = TrellisCode::k1Mad;  // Default: 1mad (qtip)
  int trellis_l = 16;                              // Default: 16 state bits (qtip; 8..20)
  double damp = 0.01;        // Default: 0.01 (relative)
  // Default: true. Rotated methods (quip, quip-sharp, qtip) also run the unrotated LDLQ baseline
  // (gptq, same bits, per channel) and keep it for a matrix where its proxy loss is lower, so a
  // matrix is never stored worse than the baseline (e.g. q/k layers whose energy sits on a few
  // outlier input channels, which the rotation spreads out). QuantizedMatrix says which was kept.
  bool baseline_guard = true;
  // Default: kDefault (GPTQ min-max, fp32 scales). rtn and gptq only: quantize onto a grid an
  // export format holds exactly (grid_target.h); bits and group_size must match its shape
  // (5 bits only with q5_0/q5_1).
  GridTarget grid = GridTarget::kDefault;
};

// The RtnParams rtn and gptq quantize `spec` with (bits, group size, clip, grid form).
RtnParams RtnParamsFor(const QuantSpec& spec);

// INVALID_ARGUMENT with the bad value (bits for the method, a grid with a method other than
// rtn/gptq or with bits/group size it does not hold, negative group size, group size or
// mse_clip with a method that ignores them, act_order outside gptq/quarot, greedy passes outside 0..100, non-finite or
// negative codebook scale, damp outside (0, 10]).
absl::Status ValidateSpec(const QuantSpec& spec);

struct QuantizedMatrix {
  std::string packed;      // self-describing, docs/formats/packed_matrix.md
  double proxy_loss = 0;   // relative, measured in the ORIGINAL basis against the undamped H
  std::string note;        // e.g. "damping raised to 0.1 after failed Cholesky"; empty normally
  Method stored_method = Method::kRtn;  // the method of `packed`: spec.method, or kGptq when the
                                        // baseline guard kept the baseline
  double rotated_proxy_loss = 0;        // guard used: the rotated method's own loss; else = proxy_loss
  // tr(W H Wᵀ) against the undamped H: proxy_loss · weight_energy = tr(E H Eᵀ), the output-error
  // energy per calibration token (what a bit budget with budget_weight "abs" minimizes).
  double weight_energy = 0;
};

// w: [m×n] fp32 row-major (out×in); h: [n×n] fp64 = E[x xᵀ] (undamped). layer_name is used in
// errors. INVALID_ARGUMENT for a bad spec, mismatched shapes or NaN/Inf in w or h;
// FAILED_PRECONDITION when h cannot be damped into positive definite. The same inputs and seed
// give the same bytes.
absl::StatusOr<QuantizedMatrix> QuantizeMatrix(Device& dev, const MatrixF& w, const MatrixD& h,
                                               const QuantSpec& spec, std::string_view layer_name);

// rtn without a Hessian (a job without calibration data): the same packed bytes as
// QuantizeMatrix with any H, proxy_loss = ||Ŵ − W||²_F / ||W||²_F (H = I), noted. INVALID_ARGUMENT
// for another method, a bad spec or shape, NaN/Inf in w.
absl::StatusOr<QuantizedMatrix> QuantizeMatrixNoHessian(const MatrixF& w, const QuantSpec& spec,
                                                        std::string_view layer_name);

// Returns the [m×n] fp32 dequantized weight. DATA_LOSS / INVALID_ARGUMENT for truncated or
// corrupt input.
absl::StatusOr<MatrixF> DequantizeMatrix(std::string_view packed);

struct PackedInfo { Method method; int bits; int m; int n; uint64_t seed; };
// Header fields of a packed matrix (the whole input is checksummed first).
absl::StatusOr<PackedInfo> InspectPacked(std::string_view packed);

}  // namespace quantd::quant

#endif  // QUANTD_ENGINE_QUANT_QUANTIZE_H_
