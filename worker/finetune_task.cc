#include "worker/finetune_task.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
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
#include "engine/model/finetune_e2e.h"
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
  if (task.kind() == quantd::v1::TASK_KIND_FINETUNE_E2E) {
    return absl::InvalidArgumentError(
        absl::StrCat("end-to-end fine-tuning task: ", std::string(what)));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("fine-tuning task for block ", task.finetune().block(), ": ", std::string(what)));
}

// A fine-tuning task's inputs by kind: the model snapshot, the calibration tokens, quantized
// matrices and tuned blocks.
struct Inputs {
  std::string model_dir, calib_path;
  std::map<std::string, std::string> quantized;  // tensor -> path
  std::map<int, std::string> tuned_paths;        // block -> path
};

absl::StatusOr<Inputs> ResolveInputs(const Task& task, const BlobResolver& blobs) {
  Inputs in;
  const std::string_view qprefix = jobfiles::kQuantizedPrefix, fprefix = jobfiles::kFinetunedPrefix;
  for (const auto& i : task.inputs()) {
    const std::string& n = i.name();
    if (n.rfind(jobfiles::kModelPrefix, 0) == 0) {
      QUANTD_ASSIGN_OR_RETURN(std::string p, blobs(n));
      in.model_dir = std::filesystem::path(p).parent_path().string();
    } else if (n.rfind(jobfiles::kCalibPrefix, 0) == 0) {
      QUANTD_ASSIGN_OR_RETURN(in.calib_path, blobs(n));
    } else if (n.rfind(qprefix, 0) == 0) {
      QUANTD_ASSIGN_OR_RETURN(in.quantized[n.substr(qprefix.size())], blobs(n));
    } else if (n.rfind(fprefix, 0) == 0) {
      int b = -1;
      if (!absl::SimpleAtoi(n.substr(fprefix.size()), &b) || b < 0) {
        return Bad(task, absl::StrCat("bad input ", n));
      }
      QUANTD_ASSIGN_OR_RETURN(in.tuned_paths[b], blobs(n));
    } else {
      return Bad(task, absl::StrCat("unexpected input ", n));
    }
  }
  if (in.model_dir.empty() || in.calib_path.empty()) {
    return Bad(task, "no model or calibration input");
  }
  return in;
}

// Layer l of the quantized model: `fp_layer` with its stored linears replaced by the
// dequantized matrices.
absl::StatusOr<model::LayerWeights> QuantizedLayer(const Task& task, const model::LlamaConfig& cfg,
                                                   const Inputs& in, int l,
                                                   const model::LayerWeights& fp_layer) {
  model::LayerWeights q_layer = fp_layer;
  for (const model::StoredLinear& sl : model::StoredLinears(cfg)) {
    const std::string tensor = model::StoredTensorName(l, sl);
    auto it = in.quantized.find(tensor);
    if (it == in.quantized.end()) return Bad(task, absl::StrCat("lacks the quantized ", tensor));
    QUANTD_ASSIGN_OR_RETURN(std::string packed, ReadFile(it->second));
    QUANTD_ASSIGN_OR_RETURN(MatrixF q, quant::DequantizeMatrix(packed));
    QUANTD_RETURN_IF_ERROR(model::ScatterStored(cfg, sl, std::move(q), &q_layer,
                                                absl::StrCat("quantized ", tensor)));
  }
  return q_layer;
}

// `write` writes the result file at the path it is given; its bytes become r->data. The file
// lies in a private directory under `scratch_dir`, removed afterwards.
absl::Status ResultBytes(const std::string& scratch_dir,
                         const std::function<absl::Status(const std::string&)>& write,
                         TaskResult* r) {
  std::string tmpl = JoinPath(scratch_dir, absl::StrCat("quantd_finetune_", ::getpid(), "_XXXXXX"));
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp ", tmpl, ": ", std::strerror(errno)));
  }
  const std::string dir(buf.data());
  const std::string path = JoinPath(dir, "result.safetensors");
  absl::Status s = write(path);
  if (s.ok()) {
    auto bytes = ReadFile(path);
    s = bytes.status();
    if (bytes.ok()) r->data = std::move(*bytes);
  }
  RemoveAll(dir).IgnoreError();
  return s;
}

}  // namespace

absl::StatusOr<TaskResult> RunFinetuneTask(const Task& task, const BlobResolver& blobs,
                                           quant::Device& device,
                                           const std::atomic<bool>& cancelled,
                                           const std::string& scratch_dir) {
  // Inputs by kind: the model snapshot, the calibration tokens, the quantized matrices of
  // blocks 0..block and the tuned parameters of blocks 0..block-1.
  QUANTD_ASSIGN_OR_RETURN(Inputs in, ResolveInputs(task, blobs));
  const std::string& model_dir = in.model_dir;
  const std::map<std::string, std::string>& quantized = in.quantized;
  const std::map<int, std::string>& tuned_paths = in.tuned_paths;
  QUANTD_ASSIGN_OR_RETURN(model::LlamaConfig cfg, model::LoadLlamaConfig(model_dir));
  const int block = task.finetune().block();
  if (block < 0 || block >= cfg.num_layers) {
    return Bad(task, absl::StrCat("the model has ", cfg.num_layers, " blocks"));
  }
  QUANTD_ASSIGN_OR_RETURN(model::FinetuneOptions opts,
                          FinetuneOptionsFromProto(task.spec().finetune(), task.finetune().seq_len()));
  QUANTD_ASSIGN_OR_RETURN(auto ckpt, model::Checkpoint::Open(model_dir));
  model::CheckpointWeightSource fp(cfg, *ckpt);
  QUANTD_ASSIGN_OR_RETURN(std::vector<int32_t> tokens, model::LoadTokenFile(in.calib_path));
  // The embedding is not quantized: both paths start from the fp one.
  QUANTD_ASSIGN_OR_RETURN(model::BlockFinetuner tuner,
                          model::BlockFinetuner::Start(cfg, fp, fp, tokens, opts, &device));
  const std::vector<model::StoredLinear> stored = model::StoredLinears(cfg);
  TaskResult r;
  for (int l = 0; l <= block; ++l) {
    if (cancelled.load()) return absl::CancelledError("task cancelled");
    QUANTD_ASSIGN_OR_RETURN(const model::LayerWeights* base, fp.Layer(l));
    const model::LayerWeights fp_layer = *base;
    QUANTD_ASSIGN_OR_RETURN(const model::LayerWeights q_layer,
                            QuantizedLayer(task, cfg, in, l, fp_layer));
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
    QUANTD_RETURN_IF_ERROR(ResultBytes(
        scratch_dir, [&](const std::string& path) { return model::WriteTunedBlock(path, t); }, &r));
  }
  if (tuned_paths.size() != static_cast<size_t>(block) ||
      quantized.size() != stored.size() * static_cast<size_t>(block + 1)) {
    return Bad(task, absl::StrCat("has ", tuned_paths.size(), " tuned and ", quantized.size(),
                                  " quantized inputs; want ", block, " and ",
                                  stored.size() * (block + 1)));
  }
  return r;
}

namespace {

// The report's held-out KL fields (done: the task's result; else progress so far).
quantd::v1::FinetuneE2eStatus E2eStatus(const model::E2eReport& rep, bool done) {
  quantd::v1::FinetuneE2eStatus st;
  st.set_heldout_before(rep.heldout_before);
  for (double h : rep.heldout_curve) st.add_heldout_curve(h);
  st.set_heldout_best(rep.heldout_best);
  st.set_epochs_run(rep.epochs_run);
  st.set_seconds(rep.seconds);
  st.set_train_first(rep.train_first);
  st.set_train_last(rep.train_last);
  st.set_done(done);
  return st;
}

}  // namespace

absl::StatusOr<TaskResult> RunFinetuneE2eTask(const Task& task, const BlobResolver& blobs,
                                              quant::Device& device,
                                              const std::atomic<bool>& cancelled,
                                              const std::string& scratch_dir,
                                              const TaskProgress& progress) {
  QUANTD_ASSIGN_OR_RETURN(Inputs in, ResolveInputs(task, blobs));
  QUANTD_ASSIGN_OR_RETURN(model::LlamaConfig cfg, model::LoadLlamaConfig(in.model_dir));
  QUANTD_ASSIGN_OR_RETURN(
      model::E2eOptions opts,
      E2eOptionsFromProto(task.spec().finetune(), task.finetune_e2e().seq_len()));
  const size_t nstored = model::StoredLinears(cfg).size();
  if (in.tuned_paths.size() != static_cast<size_t>(cfg.num_layers) ||
      in.quantized.size() != nstored * cfg.num_layers) {
    return Bad(task, absl::StrCat("has ", in.tuned_paths.size(), " tuned and ",
                                  in.quantized.size(), " quantized inputs; want ", cfg.num_layers,
                                  " and ", nstored * cfg.num_layers));
  }
  QUANTD_ASSIGN_OR_RETURN(auto ckpt, model::Checkpoint::Open(in.model_dir));
  QUANTD_ASSIGN_OR_RETURN(const model::LlamaWeights fp, model::LoadLlamaWeights(*ckpt, cfg));
  ckpt.reset();
  QUANTD_ASSIGN_OR_RETURN(std::vector<int32_t> tokens, model::LoadTokenFile(in.calib_path));
  // The block-tuned quantized model, as FinetuneBlocks leaves it: each layer's dequantized
  // linears scaled by its tuned scales, its tuned norms; the scales so far per layer.
  model::LlamaWeights q = fp;
  std::vector<model::LayerScales> scales(cfg.num_layers);
  for (int l = 0; l < cfg.num_layers; ++l) {
    if (cancelled.load()) return absl::CancelledError("task cancelled");
    QUANTD_ASSIGN_OR_RETURN(q.layers[l], QuantizedLayer(task, cfg, in, l, fp.layers[l]));
    auto it = in.tuned_paths.find(l);
    if (it == in.tuned_paths.end()) return Bad(task, absl::StrCat("lacks tuned block ", l));
    QUANTD_ASSIGN_OR_RETURN(model::TunedBlock t, model::ReadTunedBlock(it->second, cfg, l));
    QUANTD_RETURN_IF_ERROR(model::ApplyTunedBlock(t, &q.layers[l]));
    scales[l] = std::move(t.scales);
  }
  QUANTD_ASSIGN_OR_RETURN(
      model::E2eReport rep,
      model::FinetuneEndToEnd(cfg, fp, &q, tokens, opts, &scales,
                              [&](const model::E2eReport& r) {
                                if (progress) progress(E2eStatus(r, false));
                              },
                              &device, &cancelled));
  model::TunedModel tm;
  for (int l = 0; l < cfg.num_layers; ++l) {
    tm.blocks.push_back({q.layers[l].attn_norm, q.layers[l].ffn_norm, std::move(scales[l])});
  }
  tm.final_norm = q.final_norm;
  if (opts.tune_head) tm.head = std::move(q.lm_head);
  TaskResult r;
  *r.header.mutable_finetune_e2e() = E2eStatus(rep, true);
  QUANTD_RETURN_IF_ERROR(ResultBytes(
      scratch_dir, [&](const std::string& path) { return model::WriteTunedModel(path, tm); }, &r));
  return r;
}

}  // namespace quantd::runner
