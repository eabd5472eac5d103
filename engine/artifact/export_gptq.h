// GPTQ checkpoint export of a native artifact (docs/formats/exports.md, "GPTQ"): a Hugging Face
// directory in the layout transformers (optimum + gptqmodel), gptqmodel itself, vLLM and TGI read
// (checked with transformers + gptqmodel: tests/gptq_export_test.py), each
// quantized linear as qweight / qzeros / scales / g_idx made from the artifact's own integer
// codes (never requantized), everything else fp16.
// Thread-safety: may run concurrently for different output directories.
#ifndef QUANTD_ENGINE_ARTIFACT_EXPORT_GPTQ_H_
#define QUANTD_ENGINE_ARTIFACT_EXPORT_GPTQ_H_

#include <string>

#include "absl/status/statusor.h"

namespace quantd::artifact {

struct GptqExportSummary {
  int quantized = 0;              // linears written packed
  int dense = 0;                  // quantized linears written as fp16 "<prefix>.weight" because a
                                  // dimension does not fill whole int32 words (GptqPackable);
                                  // their module names are left out of
                                  // quantization_config.modules_in_block_to_quantize
  std::string checkpoint_format;  // "gptq" (zero − 1 stored) or "gptq_v2" (zero stored)
};

// Whether an [out × in] linear of `bits` packs into GPTQ's int32 words along both dimensions
// with no padding: 2/4/8 bits need in and out to be multiples of 32/bits, 3 bits multiples of 32
// (32 values per 3 words).
bool GptqPackable(int bits, int out_features, int in_features);

// Writes `out_dir` (model.safetensors, config.json last, tokenizer files, quantd_manifest.json)
// from `native_dir`. FAILED_PRECONDITION when the version (manifest "spec") or a packed matrix
// does not fit GPTQ (method, bits, a fractional or out-of-range zero point, a symmetric export
// whose zero is not 2^(bits−1)); DATA_LOSS for corrupt packed tensors; INVALID_ARGUMENT for an
// fp16 overflow.
absl::StatusOr<GptqExportSummary> ExportGptq(const std::string& native_dir,
                                             const std::string& out_dir);

}  // namespace quantd::artifact

#endif  // QUANTD_ENGINE_ARTIFACT_EXPORT_GPTQ_H_
