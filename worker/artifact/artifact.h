// The native quantized model: one safetensors file in which every quantized linear weight
// "<prefix>.weight" is replaced by a U8 tensor "<prefix>.qweight" holding the packed matrix
// (docs/formats/packed_matrix.md); all other tensors are copied unchanged. The layout is
// specified in docs/formats/artifact.md.
// Thread-safety: stateless functions.
#ifndef QUANTD_WORKER_ARTIFACT_ARTIFACT_H_
#define QUANTD_WORKER_ARTIFACT_ARTIFACT_H_

#include <map>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "worker/model/checkpoint.h"
#include "worker/model/config.h"
#include "worker/model/weights.h"

namespace quantd::artifact {

// "model.layers.0.mlp.down_proj.weight" -> "model.layers.0.mlp.down_proj.qweight".
std::string QuantizedTensorName(std::string_view weight_name);

// Writes `out_path`: every tensor of `src`, with those named in `packed` (weight name -> packed
// matrix bytes) replaced by their .qweight tensors. Atomic. INVALID_ARGUMENT if `packed` names a
// tensor that `src` lacks.
absl::Status WriteArtifactModel(const model::Checkpoint& src,
                                const std::map<std::string, std::string>& packed,
                                const std::string& out_path);

// Loads a native artifact directory (config.json + model.safetensors) into fp32 weights,
// dequantizing every .qweight. DATA_LOSS for corrupt packed tensors.
absl::StatusOr<model::LlamaWeights> LoadArtifactWeights(const std::string& dir,
                                                        model::LlamaConfig* config);

}  // namespace quantd::artifact

#endif  // QUANTD_WORKER_ARTIFACT_ARTIFACT_H_
