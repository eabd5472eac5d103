#include "worker/runner/quant_spec.h"

#include "common/status_macros.h"

namespace quantd::runner {

absl::StatusOr<quant::QuantSpec> QuantSpecFromProto(const quantd::v1::QuantSpec& p) {
  quant::QuantSpec spec;
  QUANTD_ASSIGN_OR_RETURN(spec.method, quant::ParseMethod(p.method()));
  spec.bits = p.bits();
  spec.seed = p.seed();
  spec.group_size = p.group_size();
  spec.mse_clip = p.mse_clip();
  spec.greedy_passes = p.has_greedy_passes()                      ? p.greedy_passes()
                       : spec.method == quant::Method::kQuipSharp ? kDefaultGreedyPasses
                                                                  : 0;
  spec.codebook_scale = p.codebook_scale();
  spec.damp = p.damp() == 0 ? 0.01 : p.damp();
  spec.baseline_guard = !p.no_baseline_guard();
  QUANTD_RETURN_IF_ERROR(quant::ValidateSpec(spec));
  return spec;
}

}  // namespace quantd::runner
