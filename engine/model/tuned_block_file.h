// The file a fine-tuning task stores one tuned decoder block in (the service's
// results/finetune_<id>.safetensors, engine/spec/job_files.h): a safetensors file of F32
// tensors "attn_norm" and "ffn_norm" [hidden] and, per linear (q_proj ... down_proj),
// "<linear>.out_scale" [out] and "<linear>.in_scale" [in] (model::TunedBlock). The bytes are a
// function of the values only (WriteSafetensors sorts the header), so a retried task stores the
// same sha256.
// Thread-safety: stateless functions.
#ifndef QUANTD_ENGINE_MODEL_TUNED_BLOCK_FILE_H_
#define QUANTD_ENGINE_MODEL_TUNED_BLOCK_FILE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/config.h"
#include "engine/model/finetune.h"

namespace quantd::model {

// Writes `t` to `path` (atomic). INVALID_ARGUMENT when a vector is empty.
absl::Status WriteTunedBlock(const std::string& path, const TunedBlock& t);

// Reads the tuned block of layer `layer` of `cfg` from `path`. DATA_LOSS naming the tensor when
// one is missing, not F32, of the wrong length or not finite.
absl::StatusOr<TunedBlock> ReadTunedBlock(const std::string& path, const LlamaConfig& cfg,
                                          int layer);

// The KL stage's result (FINETUNE_E2E task, finetune_e2e.h): every block's tuned parameters,
// the final norm and, when the head was tuned, the head.
struct TunedModel {
  std::vector<TunedBlock> blocks;
  VectorF final_norm;
  MatrixF head;  // [vocab x hidden]; empty: not tuned
};

// Its file: the tensors of WriteTunedBlock per block under "layers.<l>.", "final_norm" and
// (optional) "lm_head" [vocab, hidden], all F32. INVALID_ARGUMENT when a vector is empty.
absl::Status WriteTunedModel(const std::string& path, const TunedModel& t);
// DATA_LOSS as ReadTunedBlock, and for a block count or head shape that does not match `cfg`.
absl::StatusOr<TunedModel> ReadTunedModel(const std::string& path, const LlamaConfig& cfg);

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_MODEL_TUNED_BLOCK_FILE_H_
