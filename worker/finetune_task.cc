#include "worker/finetune_task.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/format/checkpoint.h"
#include "engine/model/config.h"
#include "engine/model/finetune.h"
#include "engine/model/tuned_block_file.h"
#include "engine/model/weight_source.h"
#include "engine/model/weights.h"
#include "engine/quant/quantize.h"
#include "engine/spec/job_files.h"
#include "engine/spec/quant_spec.h"
#include "engine/tokenizer/tokens.h"

namespace quantd::runner {
namespace {

using quantd::v1::Task;

absl::Status Bad(const Task& task, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("fine-tuning task for block ", task.finetune().block(), ": ", std::string(what)));
}

}  // namespace

absl::StatusOr<TaskResult> RunFinetuneTask(const Task& task, const BlobResolver& blobs,
                                           quant::Device& device,
                                           const std::atomic<bool>& cancelled,
                                           const std::string& scratch_dir) {
  // Inputs by kind: the model snapshot, the calibration tokens, the quantized matrices of
  // blocks 0..block and the tuned parameters of blocks 0..block-1.
  std::string model_dir, calib_path;
  std::map<std::string, std::string> quantized;  // tensor -> path
  std::map<int, std::string> tuned_paths;        // block -> path
  const std::string_view qprefix = jobfiles::kQuantizedPrefix, fprefix = jobfiles::kFinetunedPrefix;
  for (const auto& in : task.inputs()) {
    const std::string& n = in.name();
    if (n.rfind(jobfiles::kModelPrefix, 0) == 0) {
      QUANTD_ASSIGN_OR_RETURN(std::string p, blobs(n));
      model_dir = std::filesystem::path(p).parent_path().string();
    } else if (n.rfind(jobfiles::kCalibPrefix, 0) == 0) {
      QUANTD_ASSIGN_OR_RETURN(calib_path, blobs(n));
    } else if (n.rfind(qprefix, 0) == 0) {
      QUANTD_ASSIGN_OR_RETURN(quantized[n.substr(qprefix.size())], blobs(n));
    } else if (n.rfind(fprefix, 0) == 0) {
      int b = -1;
      if (!absl::SimpleAtoi(n.substr(fprefix.size()), &b) || b < 0) {
        return Bad(task, absl::StrCat("bad input ", n));
      }
      QUANTD_ASSIGN_OR_RETURN(tuned_paths[b], blobs(n));
    } else {
      return Bad(task, absl::StrCat("unexpected input ", n));
    }
  }
  if (model_dir.empty() || calib_path.empty()) return Bad(task, "no model or calibration input");
  QUANTD_ASSIGN_OR_RETURN(model::LlamaConfig cfg, model::LoadLlamaConfig(model_dir));
  const int block = task.finetune().block();
  if (block < 0 || block >= cfg.num_layers) {
    return Bad(task, absl::StrCat("the model has ", cfg.num_layers, " blocks"));
  }
  QUANTD_ASSIGN_OR_RETURN(model::FinetuneOptions opts,
                          FinetuneOptionsFromProto(task.spec().finetune(), task.finetune().seq_len()));
  QUANTD_ASSIGN_OR_RETURN(auto ckpt, model::Checkpoint::Open(model_dir));
  model::CheckpointWeightSource fp(cfg, *ckpt);
  QUANTD_ASSIGN_OR_RETURN(std::vector<int32_t> tokens, model::LoadTokenFile(calib_path));
  // The embedding is not quantized: both paths start from the fp one.
  QUANTD_ASSIGN_OR_RETURN(model::BlockFinetuner tuner,
                          model::BlockFinetuner::Start(cfg, fp, fp, tokens, opts, &device));
  const std::vector<model::StoredLinear> stored = model::StoredLinears(cfg);
  TaskResult r;
  for (int l = 0; l <= block; ++l) {
    if (cancelled.load()) return absl::CancelledError("task cancelled");
    QUANTD_ASSIGN_OR_RETURN(const model::LayerWeights* base, fp.Layer(l));
    const model::LayerWeights fp_layer = *base;
    model::LayerWeights q_layer = fp_layer;
    for (const model::StoredLinear& sl : stored) {
      const std::string tensor = model::StoredTensorName(l, sl);
      auto it = quantized.find(tensor);
      if (it == quantized.end()) return Bad(task, absl::StrCat("lacks the quantized ", tensor));
      QUANTD_ASSIGN_OR_RETURN(std::string packed, ReadFile(it->second));
      QUANTD_ASSIGN_OR_RETURN(MatrixF q, quant::DequantizeMatrix(packed));
      QUANTD_RETURN_IF_ERROR(model::ScatterStored(cfg, sl, std::move(q), &q_layer,
                                                  absl::StrCat("quantized ", tensor)));
    }
    if (l < block) {
      auto it = tuned_paths.find(l);
      if (it == tuned_paths.end()) return Bad(task, absl::StrCat("lacks tuned block ", l));
      QUANTD_ASSIGN_OR_RETURN(model::TunedBlock t, model::ReadTunedBlock(it->second, cfg, l));
      QUANTD_RETURN_IF_ERROR(tuner.ReplayBlock(fp_layer, q_layer, t));
      continue;
    }
    model::TunedBlock t;
    QUANTD_ASSIGN_OR_RETURN(model::BlockTuneReport rep, tuner.TuneBlock(fp_layer, q_layer, &t));
    auto* st = r.header.mutable_finetune();
    st->set_layer(rep.layer);
    st->set_heldout_before(rep.heldout_before);
    for (double h : rep.heldout_curve) st->add_heldout_curve(h);
    st->set_heldout_best(rep.heldout_best);
    st->set_epochs_run(rep.epochs_run);
    st->set_seconds(rep.seconds);
    // The result goes through a private file (WriteSafetensors' bytes) into r.data.
    std::string tmpl = JoinPath(scratch_dir, absl::StrCat("quantd_finetune_", ::getpid(), "_XXXXXX"));
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (::mkdtemp(buf.data()) == nullptr) {
      return absl::InternalError(absl::StrCat("mkdtemp ", tmpl, ": ", std::strerror(errno)));
    }
    const std::string dir(buf.data());
    absl::Status s = model::WriteTunedBlock(JoinPath(dir, "block.safetensors"), t);
    if (s.ok()) {
      auto bytes = ReadFile(JoinPath(dir, "block.safetensors"));
      s = bytes.status();
      if (bytes.ok()) r.data = std::move(*bytes);
    }
    RemoveAll(dir).IgnoreError();
    QUANTD_RETURN_IF_ERROR(s);
  }
  if (tuned_paths.size() != static_cast<size_t>(block) ||
      quantized.size() != stored.size() * static_cast<size_t>(block + 1)) {
    return Bad(task, absl::StrCat("has ", tuned_paths.size(), " tuned and ", quantized.size(),
                                  " quantized inputs; want ", block, " and ",
                                  stored.size() * (block + 1)));
  }
  return r;
}

}  // namespace quantd::runner
