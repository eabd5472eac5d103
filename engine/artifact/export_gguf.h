// GGUF export of a native artifact (docs/formats/exports.md, "GGUF"): one .gguf file that
// llama.cpp loads, in its llama, qwen2, qwen3, gemma2 or gemma3 architecture, with that
// architecture's hyper-parameters, the tokenizer (tokenizer.ggml.*), the quantized linears as
// Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 blocks built from the artifact's own integer codes and scales (never
// requantized), llama.cpp's Q/K row permutation (llama only), norms and biases in F32 (Gemma's
// norms as 1 + w) and the embedding (and an untied lm_head) in F16.
// Thread-safety: ExportGguf may run concurrently for different output files.
#ifndef QUANTD_ENGINE_ARTIFACT_EXPORT_GGUF_H_
#define QUANTD_ENGINE_ARTIFACT_EXPORT_GGUF_H_

#include <string>

#include "absl/status/statusor.h"
#include "engine/format/gguf.h"

namespace quantd::artifact {

struct GgufExportSummary {
  model::GgmlType type = model::GgmlType::kF16;  // type of the quantized linears
  int quantized = 0;       // linears written as blocks
  int fallback_f32 = 0;    // quantized linears whose rows are not a multiple of 32 weights:
                           // written as their dequantized F32 values (exact, larger)
  uint64_t bytes = 0;      // file size
};

// Writes `out_file` (atomically) from the native artifact directory `native_dir` (config.json,
// model.safetensors, manifest.json, tokenizer files). FAILED_PRECONDITION when the version's
// settings (manifest "spec") or a packed matrix do not fit a GGUF block type, naming the formats
// it supports; FAILED_PRECONDITION for a tokenizer GGUF cannot express; DATA_LOSS for corrupt
// packed tensors; INVALID_ARGUMENT for a config quantd cannot parse; FAILED_PRECONDITION naming
// the setting for a model llama.cpp's graph for its family would not compute (Phi-3, sliding
// windows outside Gemma, Gemma's query_pre_attn_scalar other than llama.cpp's, RoPE other than
// default / dynamic / linear, ...).
absl::StatusOr<GgufExportSummary> ExportGguf(const std::string& native_dir,
                                             const std::string& out_file);

}  // namespace quantd::artifact

#endif  // QUANTD_ENGINE_ARTIFACT_EXPORT_GGUF_H_
