#include "engine/spec/quant_spec.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace quantd::runner {

absl::StatusOr<quant::QuantSpec> QuantSpecFromProto(const quantd::v1::QuantSpec& p) {
  quant::QuantSpec spec;
  QUANTD_ASSIGN_OR_RETURN(spec.method, quant::ParseMethod(p.method()));
  QUANTD_ASSIGN_OR_RETURN(spec.grid, quant::ParseGridTarget(p.grid()));
  const quant::GridShape shape = quant::GridShapeOf(spec.grid);
  spec.bits = p.bits() == 0 && shape.bits != 0 ? shape.bits : p.bits();
  spec.seed = p.seed();
  spec.group_size = p.group_size() == 0 ? shape.group_size : p.group_size();
  spec.mse_clip = p.mse_clip();
  spec.act_order = p.act_order();
  spec.greedy_passes = p.has_greedy_passes()                      ? p.greedy_passes()
                       : quant::TraitsOf(spec.method).greedy_passes ? kDefaultGreedyPasses
                                                                  : 0;
  spec.codebook_scale = p.codebook_scale();
  spec.damp = p.damp() == 0 ? 0.01 : p.damp();
  spec.baseline_guard = !p.no_baseline_guard();
  if (!p.trellis_code().empty()) {
    QUANTD_ASSIGN_OR_RETURN(spec.trellis_code, quant::ParseTrellisCode(p.trellis_code()));
  }
  if (p.trellis_l() != 0) spec.trellis_l = p.trellis_l();
  if ((!p.trellis_code().empty() || p.trellis_l() != 0) && !quant::TraitsOf(spec.method).trellis) {
    return absl::InvalidArgumentError(
        absl::StrCat("trellis_code / trellis_l apply to method qtip only, not ", p.method()));
  }
  QUANTD_RETURN_IF_ERROR(quant::ValidateSpec(spec));
  return spec;
}

const quant::MethodTraits& MethodOf(const quantd::v1::QuantSpec& p) {
  auto t = quant::FindMethod(p.method());
  return t.ok() ? **t : quant::TraitsOf(static_cast<quant::Method>(0));
}

}  // namespace quantd::runner
