// Converts a llama-architecture GGUF file into a Hugging Face model directory (config.json,
// model.safetensors, tokenizer.json, tokenizer_config.json) that Checkpoint/LoadLlamaConfig
// and other HF tools read. Tensors are dequantized to fp32, renamed to HF names, the Q/K row
// permutation llama.cpp applies is undone, and the result is stored as F16/BF16/F32.
// docs/formats/gguf.md describes the mapping.
// Thread-safety: ConvertGgufToHf may run concurrently for different output directories.
#ifndef QUANTD_ENGINE_MODEL_GGUF_CONVERT_H_
#define QUANTD_ENGINE_MODEL_GGUF_CONVERT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/config.h"
#include "engine/format/gguf.h"
#include "engine/format/safetensors.h"

namespace quantd::model {

struct GgufConvertOptions {
  // Storage type of model.safetensors: kF16, kBF16 or kF32. Default: kF16.
  DType dtype = DType::kF16;
};

struct GgufConvertSummary {
  LlamaConfig config;
  int tensors = 0;         // tensors written
  int64_t parameters = 0;  // elements written
};

// config.json text for the llama.* metadata of `f` (validated with ParseLlamaConfig);
// torch_dtype names `dtype`.
// INVALID_ARGUMENT naming the key for a missing or out-of-range value, or when
// general.architecture is not "llama" (the message names the supported architectures).
absl::StatusOr<std::string> GgufToHfConfigJson(const GgufFile& f, DType dtype = DType::kF16);

// HF name of a GGUF tensor name ("blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight");
// NOT_FOUND for names outside the llama mapping.
absl::StatusOr<std::string> HfTensorName(const std::string& gguf_name);

// GGUF name of an HF llama tensor name (the inverse of HfTensorName); NOT_FOUND otherwise.
absl::StatusOr<std::string> GgufTensorName(const std::string& hf_name);

// llama.cpp's Q/K row permutation (convert_hf_to_gguf.py LlamaModel.permute): GGUF row
// h*D + 2i + s is HF row h*D + s*D/2 + i (D = rows / n_head). Returns, for each GGUF row, the HF
// row it holds. INVALID_ARGUMENT unless rows is a multiple of 2 * n_head.
absl::StatusOr<std::vector<int64_t>> QkPermutation(int64_t rows, int n_head);

// Inverse of llama.cpp's Q/K permutation on a row-major [rows][cols] fp32 matrix in place:
// GGUF row h*D + 2i + s holds HF row h*D + s*D/2 + i (D = rows / n_head).
// INVALID_ARGUMENT unless rows is a multiple of 2 * n_head.
absl::Status UnpermuteQk(float* data, int64_t rows, int64_t cols, int n_head);

// Reads `gguf_path` and writes the HF directory `out_dir` (created if missing; existing files
// of the same names are replaced atomically). Every tensor must map to an HF name and have the
// shape the config implies; INVALID_ARGUMENT names the offending tensor otherwise.
absl::StatusOr<GgufConvertSummary> ConvertGgufToHf(const std::string& gguf_path,
                                                   const std::string& out_dir,
                                                   const GgufConvertOptions& opts = {});

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_MODEL_GGUF_CONVERT_H_
