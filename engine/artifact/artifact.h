// The native quantized model: one safetensors file in which every quantized linear weight
// "<prefix>.weight" is replaced by a U8 tensor "<prefix>.qweight" holding the packed matrix
// (docs/formats/packed_matrix.md); all other tensors are copied unchanged. The layout is
// specified in docs/formats/artifact.md.
// Thread-safety: stateless functions.
#ifndef QUANTD_ENGINE_ARTIFACT_ARTIFACT_H_
#define QUANTD_ENGINE_ARTIFACT_ARTIFACT_H_

#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "engine/format/checkpoint.h"
#include "engine/model/config.h"
#include "engine/model/weight_source.h"
#include "engine/model/weights.h"

namespace quantd::artifact {

// "model.layers.0.mlp.down_proj.weight" -> "model.layers.0.mlp.down_proj.qweight".
std::string QuantizedTensorName(std::string_view weight_name);

// Whether `name` is a quantd_format 2 scale tensor ("<p>.qweight_out_scale" / "_in_scale").
bool IsScaleTensor(std::string_view name);

// Writes `out_path`: every tensor of `src`, with those named in `packed` (weight name -> packed
// matrix bytes) replaced by their .qweight tensors. Atomic. INVALID_ARGUMENT if `packed` names a
// tensor that `src` lacks.
absl::Status WriteArtifactModel(const model::Checkpoint& src,
                                const std::map<std::string, std::string>& packed,
                                const std::string& out_path);

// The same file from packed matrices stored in files (weight name -> path), read one at a
// time: the writer holds one packed matrix, not the model (the coordinator's assembly).
// DATA_LOSS when a file changes size while being read.
absl::Status WriteArtifactModelFromFiles(const model::Checkpoint& src,
                                         const std::map<std::string, std::string>& packed_files,
                                         const std::string& out_path);

// The artifact of the model `src` hands out (QuaRot's layer-streamed rotation), with the
// linears named in `packed_files` (weight name -> file of packed bytes) replaced by their
// .qweight tensors; `cfg` is that model's config (its tensors' shapes). The tensors are those
// WriteArtifactFromWeights lists (it is this writer over a MemoryWeightSource), written holding
// one layer, one packed matrix and a block of embedding/head rows at a time. Atomic.
// INVALID_ARGUMENT if `packed_files` names a tensor the model lacks; DATA_LOSS when a file
// changes size while being read.
absl::Status WriteArtifactModelFromSource(const model::LlamaConfig& cfg, model::WeightSource& src,
                                          const std::map<std::string, std::string>& packed_files,
                                          const std::string& out_path);

// The tensor recording QuaRot's online down_proj rotation: I64 [2] = {size, seed (bits)}.
inline constexpr char kOnlineDownTensor[] = "quantd.online_hadamard_down";
// QuaRot's online rotation across heads before o_proj: I64 [2] = {size = num_heads, seed}.
inline constexpr char kOnlineOTensor[] = "quantd.online_hadamard_o";

// Fine-tuned real scales of one packed linear (quantd_format 2, model::kOutScaleSuffix):
// the weight is diag(out)·Dequantize(qweight)·diag(in). out [rows], in [cols].
struct RealScales {
  VectorF out, in;
};

// Writes `out_path` from in-memory (e.g. QuaRot-rotated) weights (WriteArtifactModelFromSource's
// enumeration, over a MemoryWeightSource of `w`): every tensor under its HF name
// in F32, lm_head.weight when cfg is untied, the linears named in `packed` as .qweight, and
// kOnlineDownTensor / kOnlineOTensor when w.online_down / w.online_o is set, and for every weight
// name in `scales` (which must also be in `packed`) its two F32 scale tensors; the file says
// quantd_format 2 when there are scales, else 1. Atomic. INVALID_ARGUMENT if `packed` names a
// tensor the weights lack, or `scales` a weight that is not packed or scales of the wrong size.
absl::Status WriteArtifactFromWeights(const model::LlamaConfig& cfg, const model::LlamaWeights& w,
                                      const std::map<std::string, std::string>& packed,
                                      const std::string& out_path,
                                      const std::map<std::string, RealScales>& scales = {});

// Loads a native artifact directory (config.json + model.safetensors) into fp32 weights,
// dequantizing every .qweight (and applying its quantd_format 2 scales) and setting online_down / online_o from kOnlineDownTensor /
// kOnlineOTensor (absent: none).
// DATA_LOSS for corrupt packed or online-rotation tensors.
absl::StatusOr<model::LlamaWeights> LoadArtifactWeights(const std::string& dir,
                                                        model::LlamaConfig* config);

// The same directory as a layer-streamed WeightSource: each layer read (and each .qweight
// dequantized) when the forward reaches it, the online rotations from kOnlineDownTensor /
// kOnlineOTensor. Also opens a plain HF checkpoint directory (no .qweight, no rotation).
// DATA_LOSS for corrupt online-rotation tensors (corrupt packed tensors surface from Layer()).
absl::StatusOr<std::unique_ptr<model::CheckpointWeightSource>> OpenArtifactSource(
    const std::string& dir, model::LlamaConfig* config);

// Copies every regular file of `native_dir` but the weights and config.json (tokenizer files)
// into `out_dir`, manifest.json as quantd_manifest.json (provenance). Atomic per file.
absl::Status CopySideFiles(const std::string& native_dir, const std::string& out_dir);

// Sets the storage dtype of a config.json object in its own layout: "dtype" and/or "torch_dtype"
// where present, else "torch_dtype" (docs/formats/config.md).
void SetConfigDtype(nlohmann::json* config, const char* dtype_name);

// Output precision of ExportHfModel's floating-point tensors.
enum class HfDType { kF16, kBF16, kF32 };

// Writes a Hugging Face checkpoint directory `out_dir` (created if missing) from the native
// artifact directory `native_dir`: model.safetensors with every .qweight dequantized back to its
// "<prefix>.weight" name and every floating-point tensor converted to `dtype` (integer tensors
// are copied), config.json as the artifact has it (the user's layout: rope_parameters or
// rope_theta/rope_scaling) with its "dtype" or "torch_dtype" set to match, every other file of
// the artifact (tokenizer files) copied unchanged, and manifest.json kept as
// quantd_manifest.json for provenance. Files are written atomically; config.json is written
// last. INVALID_ARGUMENT when a value does not fit fp16 (use kBF16 or kF32) or the artifact
// carries an online rotation (QuaRot: a dense HF checkpoint cannot express it), DATA_LOSS for
// corrupt packed tensors.
absl::Status ExportHfModel(const std::string& native_dir, const std::string& out_dir,
                           HfDType dtype = HfDType::kF16);

}  // namespace quantd::artifact

#endif  // QUANTD_ENGINE_ARTIFACT_ARTIFACT_H_
