// Which engine formats a published version can be exported to (docs/formats/exports.md), decided
// from the job's settings alone: the coordinator records the list in the manifest
// ("export_formats") and `quantctl fetch --format` refuses what is not on it.
// Thread-safety: stateless functions.
#ifndef QUANTD_ENGINE_ARTIFACT_EXPORT_FORMATS_H_
#define QUANTD_ENGINE_ARTIFACT_EXPORT_FORMATS_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/format/gguf.h"
#include "engine/quant/grid_target.h"

namespace quantd::artifact {

enum class ExportFormat { kGptq, kCompressedTensors, kGguf };

// "gptq", "compressed-tensors", "gguf"; INVALID_ARGUMENT otherwise.
absl::StatusOr<ExportFormat> ParseExportFormat(std::string_view name);
std::string_view ExportFormatName(ExportFormat f);

// The settings of a job that decide its export formats (manifest "spec").
struct ExportSpec {
  std::string method;  // "rtn", "gptq", ...
  int bits = 0;
  int group_size = 0;  // 0 = per output channel
  bool act_order = false;
  quant::GridTarget grid = quant::GridTarget::kDefault;
};

// From the manifest JSON text's "spec" object (a missing "grid" is the default grid).
// DATA_LOSS when the manifest is not JSON or lacks spec.method / spec.bits.
absl::StatusOr<ExportSpec> ExportSpecFromManifest(std::string_view manifest_json);

// Whether the grid of `spec` is symmetric (zero point 2^(bits-1) for every group): q4_0, q5_0,
// q8_0, gptq-sym.
bool IsSymmetricGrid(const ExportSpec& spec);

// The GGUF tensor type the linears of `spec` are stored in: Q4_0 (4 bits, symmetric grid),
// Q4_1 (4 bits, asymmetric), Q5_0 / Q5_1 (the q5 grids), Q8_0 (8 bits, symmetric); groups of 32.
// FAILED_PRECONDITION with the reason otherwise.
absl::StatusOr<model::GgmlType> GgufTypeFor(const ExportSpec& spec);

// OK when `spec` can be exported to `f`; FAILED_PRECONDITION saying why not and naming the
// formats it can be exported to.
absl::Status CheckExportable(const ExportSpec& spec, ExportFormat f);

// Whether `quantctl fetch` can write `f` (all three formats are written now; kept so a format
// can be specified and refused with its reasons before its writer exists).
bool ExportImplemented(ExportFormat f);

// The names for the manifest, implemented formats only: "gptq", "compressed-tensors", "gguf-q4_0" (GGUF with its type).
std::vector<std::string> ExportFormatsFor(const ExportSpec& spec);

}  // namespace quantd::artifact

#endif  // QUANTD_ENGINE_ARTIFACT_EXPORT_FORMATS_H_
