// Every name in a job's blob space, in one place (leveldb's filename.h is the model).
//
// The coordinator and the workers name the files of a job by these relative names: the
// coordinator writes and resolves them (server/job_builder.cc, job_steps.cc, coordinator.cc), a
// worker asks for them by name and recognizes its inputs by prefix (worker/executor.cc). A new
// kind of file gets its name here, never as a literal on one side of the wire.
//
// Layout of a job directory on the coordinator (docs/ARCHITECTURE.md, "Job directory"):
//   inputs/model/<file>        snapshot of the submitted checkpoint (config, safetensors, tokenizer)
//   inputs/calib.u32           calibration tokens
//   inputs/eval.u32            evaluation tokens (when the job evaluates)
//   results/hessian_<id>.safetensors   a Hessian task's shard
//   results/quant_<id>.qpm     a quantize task's packed matrix
//   results/finetune_<id>.safetensors  a fine-tuning task's tuned block (model/tuned_block_file.h)
//   hessians/L<l>.<g>.safetensors      merged Hessian of layer l, linear group g
//   staging/<file>             the artifact being assembled (lives in the registry's staging dir)
// and two names that are not files:
//   quantized/<tensor>         a sequential job's reference to the finished matrix <tensor>
//   finetuned/<block>          a fine-tuning task's reference to the tuned block <block>
//   eval targets "fp" and "quantized" (Task.eval.target)

#ifndef QUANTD_ENGINE_SPEC_JOB_FILES_H_
#define QUANTD_ENGINE_SPEC_JOB_FILES_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"

namespace quantd::jobfiles {

// (char arrays, not std::string_view: Debian's Abseil does not take std::string_view in StrCat.)
// Prefixes (each ends with '/'): a worker finds its inputs by them, the coordinator routes a
// blob request by them.
inline constexpr char kInputsPrefix[] = "inputs/";
inline constexpr char kModelPrefix[] = "inputs/model/";
inline constexpr char kHessiansPrefix[] = "hessians/";
inline constexpr char kResultsPrefix[] = "results/";
inline constexpr char kStagingPrefix[] = "staging/";
inline constexpr char kQuantizedPrefix[] = "quantized/";
inline constexpr char kFinetunedPrefix[] = "finetuned/";
// A worker accepts token files of any kind the loader reads (.u16/.u32/.npy) under these; the
// coordinator always writes the .u32 names below.
inline constexpr char kCalibPrefix[] = "inputs/calib.";
inline constexpr char kEvalPrefix[] = "inputs/eval.";

// Directories relative to the job directory.
inline constexpr char kModelDir[] = "inputs/model";
inline constexpr char kHessiansDir[] = "hessians";
inline constexpr char kResultsDir[] = "results";

// Fixed files.
inline constexpr char kCalibTokens[] = "inputs/calib.u32";
inline constexpr char kEvalTokens[] = "inputs/eval.u32";
inline constexpr char kStagedConfig[] = "staging/config.json";
inline constexpr char kStagedModel[] = "staging/model.safetensors";

// Task.eval.target values.
inline constexpr char kEvalTargetFp[] = "fp";
inline constexpr char kEvalTargetQuantized[] = "quantized";

inline std::string ModelFile(std::string_view file) {
  return absl::StrCat(kModelPrefix, std::string(file));
}
inline std::string HessianShardResult(int64_t task_id) {
  return absl::StrCat(kResultsPrefix, "hessian_", task_id, ".safetensors");
}
inline std::string MergedHessianBlob(int layer, std::string_view group) {
  return absl::StrCat(kHessiansPrefix, "L", layer, ".", std::string(group), ".safetensors");
}
inline std::string QuantizedResult(int64_t task_id) {
  return absl::StrCat(kResultsPrefix, "quant_", task_id, ".qpm");
}
// What a sequential job's Hessian task names the finished quantized matrix `tensor` by; the
// coordinator resolves it to that matrix's QuantizedResult.
inline std::string QuantizedInput(std::string_view tensor) {
  return absl::StrCat(kQuantizedPrefix, std::string(tensor));
}

inline std::string FinetuneResult(int64_t task_id) {
  return absl::StrCat(kResultsPrefix, "finetune_", task_id, ".safetensors");
}
// What a fine-tuning task names the tuned parameters of block `block` by; the coordinator
// resolves it to that block's FinetuneResult.
inline std::string FinetunedInput(int block) { return absl::StrCat(kFinetunedPrefix, block); }

}  // namespace quantd::jobfiles

#endif  // QUANTD_ENGINE_SPEC_JOB_FILES_H_
