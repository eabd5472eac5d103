// Grids chosen at submit for an export format (docs/formats/exports.md): `--grid q4_0` makes rtn
// and gptq quantize directly onto llama.cpp's Q4_0 block grid (symmetric, 32 weights, fp16
// scale), so the GGUF export stores the very codes the error feedback chose and never
// requantizes them. kDefault is GPTQ's min-max grid with fp32 scales.
// Thread-safety: stateless functions.
#ifndef QUANTD_ENGINE_QUANT_GRID_TARGET_H_
#define QUANTD_ENGINE_QUANT_GRID_TARGET_H_

#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/quant/rtn.h"

namespace quantd::quant {

enum class GridTarget : uint8_t {
  kDefault = 0,
  kQ4_0 = 1,      // GGUF Q4_0: 4 bits, groups of 32, kSignedMax, fp16 d
  kQ4_1 = 2,      // GGUF Q4_1: 4 bits, groups of 32, kMinOffset (fp16 d and m)
  kQ5_0 = 3,      // GGUF Q5_0: 5 bits, groups of 32, kSignedMax
  kQ5_1 = 4,      // GGUF Q5_1: 5 bits, groups of 32, kMinOffset
  kQ8_0 = 5,      // GGUF Q8_0: 8 bits, groups of 32, kSignedMax
  kGptqSym = 6,   // GPTQ sym=True with fp16 scales: any rtn/gptq bits and group size
  kGptqAsym = 7,  // GPTQ sym=False with fp16 scales (integer zero points)
};

// "" or "default", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "gptq-sym", "gptq-asym";
// INVALID_ARGUMENT naming the value otherwise.
absl::StatusOr<GridTarget> ParseGridTarget(std::string_view name);
std::string_view GridTargetName(GridTarget g);  // "" for kDefault

struct GridShape {
  int bits = 0;        // required bits; 0 = any the method allows
  int group_size = 0;  // required group size; 0 = any
  GridForm form = GridForm::kAsymmetric;
  bool fp16_scale = false;
};
GridShape GridShapeOf(GridTarget g);

}  // namespace quantd::quant

#endif  // QUANTD_ENGINE_QUANT_GRID_TARGET_H_
