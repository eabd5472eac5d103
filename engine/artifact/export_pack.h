// What the Hugging Face directory exports share (export_compressed.cc, export_gptq.cc): opening
// and checking the native artifact, fp16 bytes of fp32 values, dense little-endian bit packing
// into int32 words, and writing the directory.
// Thread-safety: stateless functions.
#ifndef QUANTD_ENGINE_ARTIFACT_EXPORT_PACK_H_
#define QUANTD_ENGINE_ARTIFACT_EXPORT_PACK_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/artifact/export_formats.h"
#include "engine/format/checkpoint.h"
#include "engine/format/safetensors.h"
#include "engine/quant/rtn.h"
#include "nlohmann/json.hpp"

namespace quantd::artifact {

// A native artifact opened for an export to `format`.
struct ExportSource {
  ExportSpec spec;                             // the manifest's, checked exportable to format
  nlohmann::json config;                       // config.json (an object)
  std::unique_ptr<model::Checkpoint> ckpt;     // model.safetensors
};

// Reads manifest.json (CheckExportable: FAILED_PRECONDITION naming the reason and the formats),
// config.json (INVALID_ARGUMENT when not an object) and the checkpoint of `native_dir`;
// FAILED_PRECONDITION when the artifact rotates activations online (QuaRot) or carries
// fine-tuned real scales (quantd_format 2; docs/formats/artifact.md).
absl::StatusOr<ExportSource> OpenExportSource(const std::string& native_dir, ExportFormat format);

// Writes `out_dir`: model.safetensors from `tensors`, the side files of `native_dir`
// (CopySideFiles: tokenizer, quantd_manifest.json), then config.json (with torch_dtype/dtype
// float16) last, and syncs the directory.
absl::Status WriteHfExportDir(const std::string& native_dir, const std::string& out_dir,
                              const std::vector<model::TensorToWrite>& tensors,
                              nlohmann::json config);

// OK when grid `g` of tensor `name` (row `row`, group `group`) has an integer zero point in
// [0, maxq], and with a symmetric grid (`sym`) exactly 2^(bits−1); else FAILED_PRECONDITION
// naming them and the format's rule: "; <sym_rule> 2^(bits−1)" or "; <int_rule> [0, maxq]".
absl::Status CheckIntegerZero(const quant::ScalarGrid& g, bool sym, int bits,
                              const std::string& name, int64_t row, int64_t group,
                              const char* sym_rule, const char* int_rule);

// Appends tensor `name` of `ckpt` (not a .qweight) as fp16 under its own name and shape.
absl::Status AppendF16Tensor(const model::Checkpoint& ckpt, const std::string& name,
                             std::vector<model::TensorToWrite>* out);

// Appends the packed matrix `qweight_name` ("<prefix>.qweight") dequantized, as fp16
// "<prefix>.weight" (a linear an export format cannot pack). DATA_LOSS for a corrupt matrix.
absl::Status AppendDenseLinear(const model::Checkpoint& ckpt, const std::string& qweight_name,
                               std::vector<model::TensorToWrite>* out);

// n fp32 values as little-endian IEEE fp16 bytes. INVALID_ARGUMENT naming `name` when a finite
// value exceeds fp16's range (65504).
absl::StatusOr<std::string> F16Bytes(const float* v, int64_t n, const std::string& name);

// ORs value i of v[0..count) (each < 2^bits) into `words` at bit i·bits of the little-endian
// word sequence, low bits first; a value may straddle two words (GPTQ's 3-bit layout is exactly
// this: 32 values in 3 words). `words` must hold ceil(count·bits/32) entries.
void PackBits(const uint32_t* v, size_t count, int bits, uint32_t* words);

// The words' little-endian bytes (an I32 tensor's data).
std::string WordBytes(const std::vector<uint32_t>& words);

}  // namespace quantd::artifact

#endif  // QUANTD_ENGINE_ARTIFACT_EXPORT_PACK_H_
