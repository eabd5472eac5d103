// What each quantization method is, in one table (ggml's type_traits is the model): its wire
// name, the bit widths and options it takes, whether it needs Hessians, whether it transforms the
// whole model, whether the baseline guard applies, and how its packed matrices decode to engine
// formats. Validation (ValidateSpec), the coordinator's job graph and manifest, the exports and
// the bench read these fields instead of comparing method names; a new method adds a row here
// plus its quantize/decode code in quantize.cc.
// Thread-safety: immutable data.
#ifndef QUANTD_ENGINE_QUANT_METHOD_TABLE_H_
#define QUANTD_ENGINE_QUANT_METHOD_TABLE_H_

#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace quantd::quant {

// kQuarot is a model-level method (engine/model/quarot.h): the job rotates the model and each
// matrix, already in the rotated basis, is quantized with GPTQ (stored as a gptq packed matrix).
// kButterfly: RHT on the output side, RHT then a learned butterfly (butterfly.h) on the input
// side, QuIP scalar grid, LDLQ. The values are stored in packed matrices: never renumber.
enum class Method : uint8_t {
  kRtn = 1, kGptq = 2, kQuip = 3, kQuipSharp = 4, kQtip = 5, kQuarot = 6, kButterfly = 7
};

struct MethodTraits {
  Method method;
  std::string_view name;       // the wire name (QuantSpec.method, manifests, CLI)
  uint32_t bits_mask;          // bit b set: `bits = b` is accepted
  // Scalar min-max grids (group_size, mse_clip; quarot quantizes its rotated weights with them).
  bool scalar_grid;
  bool export_grid;            // QuantSpec.grid (a grid an engine format holds exactly)
  bool act_order;              // GPTQ's act order
  bool greedy_passes;          // quip-sharp's greedy block-coordinate passes
  bool codebook_scale;         // quip-sharp's codebook scale, qtip's trellis input scale
  bool trellis;                // qtip's trellis code and state bits
  bool uses_hessian;           // false: rtn (no Hessian phase use, no sequential mode)
  // The job transforms the whole model (QuaRot's rotations): its Hessian tasks capture through
  // the rotated model, its assembly writes the rotated model, its fingerprint carries the
  // transform's version.
  bool transforms_model;
  // Rotated methods whose result the unrotated gptq baseline may replace (QuantSpec.baseline_guard).
  bool baseline_guard;
  // Packed matrices hold integer codes on a per-row scalar grid that engine formats (GPTQ,
  // compressed-tensors, GGUF) store exactly (docs/formats/exports.md).
  bool engine_exportable;
};

// Every method, in enum order.
absl::Span<const MethodTraits> AllMethods();
// The row of `m`; a value outside the enum gets a row named "unknown" with nothing allowed.
const MethodTraits& TraitsOf(Method m);
// The row named `name`; INVALID_ARGUMENT listing every name otherwise.
absl::StatusOr<const MethodTraits*> FindMethod(std::string_view name);

inline bool BitsAllowed(const MethodTraits& t, int bits) {
  return bits >= 0 && bits < 32 && ((t.bits_mask >> bits) & 1u) != 0;
}

}  // namespace quantd::quant

#endif  // QUANTD_ENGINE_QUANT_METHOD_TABLE_H_
