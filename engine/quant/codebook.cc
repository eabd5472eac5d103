// MakeCodebook(): the factory over the codebooks quantd ships.
#include <cmath>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/quant/codebook.h"
#include "engine/quant/e8p.h"
#include "engine/quant/rvq.h"
#include "engine/quant/scalar_codebook.h"

namespace quantd::quant {

absl::StatusOr<std::unique_ptr<VectorCodebook>> MakeCodebook(std::string_view name,
                                                             double scale) {
  // Debian's abseil has its own absl::string_view, so StrCat takes a std::string copy.
  const std::string n(name);
  if (!std::isfinite(scale) || scale < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("codebook \"", n, "\": scale must be finite and >= 0 (0 = default), got ",
                     scale));
  }
  const bool use_default = scale == 0.0;
  const float scale_f = static_cast<float>(scale);
  if (!use_default && (scale_f == 0.0f || std::isinf(scale_f))) {
    return absl::InvalidArgumentError(
        absl::StrCat("codebook \"", n, "\": scale ", scale, " is outside float range"));
  }
  if (name == "e8p") {
    return std::make_unique<E8PCodebook>(use_default ? kE8PDefaultScale : scale);
  }
  if (name == "rvq4") {
    return std::make_unique<RvqCodebook>(RvqCodebook::Stage2::kE8P,
                                         use_default ? kRvq4DefaultScale : scale,
                                         kRvq4ResidualScale);
  }
  if (name == "rvq3") {
    return std::make_unique<RvqCodebook>(RvqCodebook::Stage2::kE8OneBit,
                                         use_default ? kRvq3DefaultScale : scale,
                                         kRvq3ResidualScale);
  }
  if (name == "scalar2") {
    return std::make_unique<Scalar2Codebook>(use_default ? kScalar2DefaultScale : scale);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown codebook \"", n, "\"; known: e8p, rvq3, rvq4, scalar2"));
}

}  // namespace quantd::quant
