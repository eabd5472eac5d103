// compressed-tensors `pack-quantized` export of a native artifact (docs/formats/exports.md):
// a Hugging Face directory that vLLM (and transformers with compressed-tensors) loads, the
// quantized linears as weight_packed / weight_scale / weight_zero_point / weight_shape made from
// the artifact's own integer codes (never requantized), everything else fp16.
// Thread-safety: may run concurrently for different output directories.
#ifndef QUANTD_ENGINE_ARTIFACT_EXPORT_COMPRESSED_H_
#define QUANTD_ENGINE_ARTIFACT_EXPORT_COMPRESSED_H_

#include <string>

#include "absl/status/statusor.h"

namespace quantd::artifact {

struct CompressedExportSummary {
  int quantized = 0;  // linears written packed
  int ignored = 0;    // quantized linears whose in_features is not a multiple of the group size:
                      // written dense (fp16 of the exact dequantized values) and listed in
                      // quantization_config "ignore"
};

// Writes `out_dir` (model.safetensors, config.json last, tokenizer files, quantd_manifest.json)
// from `native_dir`. FAILED_PRECONDITION when the version (manifest "spec") or a packed matrix
// does not fit 4/8-bit pack-quantized; DATA_LOSS for corrupt packed tensors; INVALID_ARGUMENT for
// an fp16 overflow.
absl::StatusOr<CompressedExportSummary> ExportCompressedTensors(const std::string& native_dir,
                                                                const std::string& out_dir);

}  // namespace quantd::artifact

#endif  // QUANTD_ENGINE_ARTIFACT_EXPORT_COMPRESSED_H_
