#include "engine/quant/grid_target.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace quantd::quant {
namespace {

constexpr int kGgufBlock = 32;  // ggml's QK4_0 = QK4_1 = QK5_0 = QK5_1 = QK8_0

}  // namespace

absl::StatusOr<GridTarget> ParseGridTarget(std::string_view name) {
  if (name.empty() || name == "default") return GridTarget::kDefault;
  for (GridTarget g : {GridTarget::kQ4_0, GridTarget::kQ4_1, GridTarget::kQ5_0, GridTarget::kQ5_1,
                       GridTarget::kQ8_0, GridTarget::kGptqSym, GridTarget::kGptqAsym}) {
    if (name == GridTargetName(g)) return g;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown grid \"", std::string(name),
                   "\" (want q4_0, q4_1, q5_0, q5_1, q8_0, gptq-sym or gptq-asym)"));
}

std::string_view GridTargetName(GridTarget g) {
  switch (g) {
    case GridTarget::kDefault: return "";
    case GridTarget::kQ4_0: return "q4_0";
    case GridTarget::kQ4_1: return "q4_1";
    case GridTarget::kQ5_0: return "q5_0";
    case GridTarget::kQ5_1: return "q5_1";
    case GridTarget::kQ8_0: return "q8_0";
    case GridTarget::kGptqSym: return "gptq-sym";
    case GridTarget::kGptqAsym: return "gptq-asym";
  }
  return "";
}

GridShape GridShapeOf(GridTarget g) {
  switch (g) {
    case GridTarget::kDefault: return {};
    case GridTarget::kQ4_0: return {4, kGgufBlock, GridForm::kSignedMax, true};
    case GridTarget::kQ4_1: return {4, kGgufBlock, GridForm::kMinOffset, true};
    case GridTarget::kQ5_0: return {5, kGgufBlock, GridForm::kSignedMax, true};
    case GridTarget::kQ5_1: return {5, kGgufBlock, GridForm::kMinOffset, true};
    case GridTarget::kQ8_0: return {8, kGgufBlock, GridForm::kSignedMax, true};
    case GridTarget::kGptqSym: return {0, 0, GridForm::kSymmetric, true};
    case GridTarget::kGptqAsym: return {0, 0, GridForm::kAsymmetric, true};
  }
  return {};
}

}  // namespace quantd::quant
