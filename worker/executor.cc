#include "worker/executor.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string_view>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/artifact/artifact.h"
#include "engine/format/checkpoint.h"
#include "engine/model/config.h"
#include "engine/model/forward.h"
#include "engine/model/forward_device.h"
#include "engine/model/hessian_capture.h"
#include "engine/model/hessian_shard.h"
#include "engine/model/perplexity.h"
#include "engine/model/quarot.h"
#include "engine/model/streamed_forward.h"
#include "engine/model/weight_source.h"
#include "engine/format/safetensors.h"
#include "engine/tokenizer/tokens.h"
#include "engine/model/weights.h"
#include "engine/quant/quantize.h"
#include "engine/spec/job_files.h"
#include "engine/spec/quant_spec.h"
#include "worker/finetune_task.h"

namespace quantd::runner {
namespace {

using quantd::v1::Task;

// Directory holding the resolved inputs under `prefix` (jobfiles::kModelPrefix, kStagingPrefix).
absl::StatusOr<std::string> ModelDir(const Task& task, const BlobResolver& blobs,
                                     std::string_view prefix) {
  std::string dir;
  for (const auto& in : task.inputs()) {
    if (in.name().rfind(prefix, 0) != 0) continue;
    QUANTD_ASSIGN_OR_RETURN(std::string p, blobs(in.name()));
    dir = std::filesystem::path(p).parent_path().string();
  }
  if (dir.empty()) return absl::InvalidArgumentError(absl::StrCat("task has no ", std::string(prefix), " inputs"));
  return dir;
}

absl::StatusOr<std::string> InputPath(const Task& task, const BlobResolver& blobs,
                                      std::string_view name_prefix) {
  for (const auto& in : task.inputs()) {
    if (in.name().rfind(name_prefix, 0) == 0) return blobs(in.name());
  }
  return absl::InvalidArgumentError(absl::StrCat("task has no input ", std::string(name_prefix)));
}

// The tensors of a Hessian shard for layers [first, last), in the order the layer-streamed
// forward produces them: per layer and group (kAllGroups order) L<l>.<group>.upper (F64
// [n(n+1)/2], the packed upper triangle of the sum: hessian_shard.h) then L<l>.<group>.tokens
// (I64 [1]).
std::vector<model::TensorDecl> ShardDecls(const model::LlamaConfig& cfg, int first, int last) {
  std::vector<model::TensorDecl> out;
  for (int l = first; l < last; ++l) {
    for (model::LinearGroup g : model::kAllGroups) {
      const std::string key = absl::StrCat("L", l, ".", std::string(model::GroupName(g)));
      const int n = model::GroupInputDim(cfg, g);
      out.push_back({key + ".upper", model::DType::kF64, {model::PackedUpperSize(n)}});
      out.push_back({key + ".tokens", model::DType::kI64, {1}});
    }
  }
  return out;
}

// A sequential job's Hessian task for layer `layer` sees every layer before it with its linears
// replaced by their quantized matrices ("quantized/<tensor>" inputs, dequantized in the basis
// the quantize task saw: the rotated one for quarot), one layer at a time. Each of those
// linears must be given once.
class QuantizedPrefixSource : public model::WeightSource {
 public:
  QuantizedPrefixSource(const model::LlamaConfig& cfg, model::WeightSource& base, int layer)
      : cfg_(cfg), base_(base), layer_(layer) {}

  absl::Status Init(const Task& task, const BlobResolver& blobs) {
    constexpr std::string_view kPrefix = jobfiles::kQuantizedPrefix;
    const model::LlamaConfig& cfg = cfg_;
    std::map<std::string, std::pair<int, size_t>> want;  // tensor -> (layer, StoredLinears index)
    const std::vector<model::StoredLinear> stored = model::StoredLinears(cfg);
    for (int l = 0; l < layer_; ++l) {
      for (size_t i = 0; i < stored.size(); ++i) want[model::StoredTensorName(l, stored[i])] = {l, i};
    }
    size_t found = 0;
    for (const auto& in : task.inputs()) {
      if (in.name().rfind(kPrefix, 0) != 0) continue;
      const std::string tensor = in.name().substr(kPrefix.size());
      auto it = want.find(tensor);
      if (it == want.end()) {
        return absl::InvalidArgumentError(absl::StrCat("sequential Hessian task for layer ",
                                                       layer_, ": unexpected input ", in.name()));
      }
      const auto [l, lin] = it->second;
      want.erase(it);
      QUANTD_ASSIGN_OR_RETURN(std::string path, blobs(in.name()));
      paths_[{l, lin}] = path;
      ++found;
    }
    if (!want.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sequential Hessian task for layer ", layer_, " lacks the quantized ",
          want.begin()->first, " (", want.size(), " of ", found + want.size(), " missing)"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<const model::LayerWeights*> Layer(int l) override {
    QUANTD_ASSIGN_OR_RETURN(const model::LayerWeights* base, base_.Layer(l));
    quantized_ = l < layer_;
    if (l >= layer_) return base;
    current_ = *base;
    const std::vector<model::StoredLinear> stored = model::StoredLinears(cfg_);
    for (size_t i = 0; i < stored.size(); ++i) {
      QUANTD_ASSIGN_OR_RETURN(std::string packed, ReadFile(paths_.at({l, i})));
      QUANTD_ASSIGN_OR_RETURN(MatrixF q, quant::DequantizeMatrix(packed));
      QUANTD_RETURN_IF_ERROR(model::ScatterStored(
          cfg_, stored[i], std::move(q), &current_,
          absl::StrCat("quantized ", model::StoredTensorName(l, stored[i]))));
    }
    return &current_;
  }
  absl::Status Embed(absl::Span<const int32_t> t, MatrixF* out) override {
    return base_.Embed(t, out);
  }
  absl::StatusOr<VectorF> FinalNorm() override { return base_.FinalNorm(); }
  absl::Status Head(int begin, int count, MatrixF* out) override {
    return base_.Head(begin, count, out);
  }
  // Dequantized layers are fp32; the others are the base's.
  quant::WeightDtype LayerDtype() const override {
    return quantized_ ? quant::WeightDtype::kF32 : base_.LayerDtype();
  }
  quant::WeightDtype HeadDtype() const override { return base_.HeadDtype(); }
  model::OnlineRotation online_down() const override { return base_.online_down(); }
  model::OnlineRotation online_o() const override { return base_.online_o(); }

 private:
  const model::LlamaConfig cfg_;
  model::WeightSource& base_;
  const int layer_;
  bool quantized_ = false;  // the last Layer() was dequantized
  std::map<std::pair<int, size_t>, std::string> paths_;
  model::LayerWeights current_;
};

// Hessian task: every sequence of the task's token range in one layer-streamed, batched
// forward; each layer's sums are appended to the shard file as soon as the layer is done, so a
// worker holds one layer's weights and one layer's accumulators at a time.
constexpr char kShardDirPrefix[] = "quantd_shard_";

absl::StatusOr<TaskResult> RunHessian(const Task& task, const BlobResolver& blobs,
                                      quant::Device& device, const std::atomic<bool>& cancelled,
                                      const std::string& scratch_dir) {
  QUANTD_ASSIGN_OR_RETURN(std::string dir, ModelDir(task, blobs, jobfiles::kModelPrefix));
  QUANTD_ASSIGN_OR_RETURN(model::LlamaConfig cfg, model::LoadLlamaConfig(dir));
  QUANTD_ASSIGN_OR_RETURN(auto ckpt, model::Checkpoint::Open(dir));
  std::unique_ptr<model::WeightSource> fp =
      std::make_unique<model::CheckpointWeightSource>(cfg, *ckpt);
  // QuaRot quantizes the rotated model: capture the Hessians of its linears' real inputs. Each
  // layer is rotated when the forward reaches it (the same bits as rotating the whole model).
  if (runner::MethodOf(task.spec()).transforms_model) {
    QUANTD_ASSIGN_OR_RETURN(auto rotated, model::QuarotWeightSource::Create(
                                              cfg, std::move(fp), task.spec().seed()));
    cfg = rotated->config();
    fp = std::move(rotated);
  }
  QUANTD_ASSIGN_OR_RETURN(std::string calib_path, InputPath(task, blobs, jobfiles::kCalibPrefix));
  QUANTD_ASSIGN_OR_RETURN(std::vector<int32_t> tokens, model::LoadTokenFile(calib_path));
  const quantd::v1::HessianTask& work = task.hessian();
  const int64_t begin = work.token_begin(), end = work.token_end(), len = work.seq_len();
  if (begin < 0 || end > static_cast<int64_t>(tokens.size()) || begin >= end || len <= 0 ||
      (end - begin) % len != 0) {
    return absl::InvalidArgumentError(absl::StrCat("bad token range [", begin, ", ", end,
                                                   ") for ", tokens.size(), " tokens"));
  }
  // A sequential job captures one layer through its quantized predecessors; a job staged in
  // blocks captures layers [layer, layer + layer_count) of the fp (or rotated fp) model;
  // otherwise every layer.
  const bool sequential = task.spec().sequential();
  const int count = work.layer_count() > 0 ? work.layer_count() : sequential ? 1 : 0;
  const int first = count > 0 ? work.layer() : 0;
  const int last = count > 0 ? work.layer() + count : cfg.num_layers;
  if (first < 0 || first >= cfg.num_layers || last > cfg.num_layers || count < 0) {
    return absl::InvalidArgumentError(absl::StrCat("Hessian task for layers [", first, ", ", last,
                                                   ") of a ", cfg.num_layers, "-layer model"));
  }
  model::WeightSource* src = fp.get();
  std::unique_ptr<QuantizedPrefixSource> prefix;
  if (sequential) {
    prefix = std::make_unique<QuantizedPrefixSource>(cfg, *fp, first);
    QUANTD_RETURN_IF_ERROR(prefix->Init(task, blobs));
    src = prefix.get();
  }
  std::vector<absl::Span<const int32_t>> seqs;
  for (int64_t s = begin; s < end; s += len) {
    seqs.emplace_back(tokens.data() + s, static_cast<size_t>(len));
  }
  // Each sequence's first token (the attention sink), and with "sink+massive" each layer's
  // massive-activation tokens, weighted as the spec says (issue 24).
  QUANTD_ASSIGN_OR_RETURN(model::TokenWeighting weighting, TokenWeightingFromProto(task.spec()));
  const std::vector<int64_t> seq_lengths(seqs.size(), len);
  std::vector<double> row_weights = model::RowWeights(seq_lengths, weighting);

  // Named after this process, so a later worker can tell a dead one's leftovers
  // (RemoveStaleShards).
  std::string tmpl_str =
      JoinPath(scratch_dir, absl::StrCat(kShardDirPrefix, ::getpid(), "_XXXXXX"));
  std::vector<char> tmpl_buf(tmpl_str.begin(), tmpl_str.end());
  tmpl_buf.push_back('\0');
  if (::mkdtemp(tmpl_buf.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp ", tmpl_str, ": ", std::strerror(errno)));
  }
  const std::string tmpl(tmpl_buf.data());
  TaskResult r;
  r.data_path = JoinPath(tmpl, "shard.safetensors");
  absl::Status status = [&]() -> absl::Status {
    QUANTD_ASSIGN_OR_RETURN(auto writer, model::SafetensorsWriter::Create(
                                             r.data_path, ShardDecls(cfg, first, last)));
    // On the worker's device: a GPU's forward ops, or the CPU's (model/forward_device.h).
    // Declared before the stream, whose sums live in the ops' memory.
    QUANTD_ASSIGN_OR_RETURN(model::ForwardOpsSession ops, model::ForwardOpsSession::Open(&device));
    // The layer's sums are added in one fixed order (all rows of the batch at once), so a
    // retried task produces the same bytes on any worker (of the same device kind).
    model::LayerHessianStream stream(
        cfg, first, last,
        [&](int layer, model::LinearGroup g, const MatrixD& sum, int64_t n) -> absl::Status {
          if (cancelled.load()) return absl::CancelledError("task cancelled");
          const std::string key = absl::StrCat("L", layer, ".", std::string(model::GroupName(g)));
          const std::vector<double> upper = model::PackUpper(sum);
          QUANTD_RETURN_IF_ERROR(writer->Append(
              key + ".upper", std::string_view(reinterpret_cast<const char*>(upper.data()),
                                               upper.size() * sizeof(double))));
          return writer->Append(key + ".tokens",
                                std::string_view(reinterpret_cast<const char*>(&n), 8));
        },
        std::move(row_weights));
    // "sink+massive": each layer's massive-activation rows weighted too, from its residual.
    stream.WeightMassiveRows(seq_lengths, weighting);
    QUANTD_RETURN_IF_ERROR(model::ForwardBatch(cfg, *src, seqs, &stream, &ops.ops()).status());
    return writer->Finish();
  }();
  if (!status.ok()) {
    RemoveAll(tmpl).IgnoreError();
    return status;
  }
  r.header.set_tokens(end - begin);
  return r;
}

// A quantize task's result: the packed bytes and the numbers the manifest reports.
TaskResult QuantizeResult(quant::QuantizedMatrix q, int64_t weights) {
  TaskResult r;
  r.data = std::move(q.packed);
  r.header.set_proxy_loss(q.proxy_loss);
  r.header.set_note(q.note);
  r.header.set_stored_method(std::string(quant::MethodName(q.stored_method)));
  r.header.set_rotated_proxy_loss(q.rotated_proxy_loss);
  r.header.set_weight_energy(q.weight_energy);
  r.header.set_weights(weights);
  return r;
}

absl::StatusOr<TaskResult> RunQuantize(const Task& task, const BlobResolver& blobs,
                                       quant::Device& device) {
  const quantd::v1::QuantizeTask& work = task.quantize();
  QUANTD_ASSIGN_OR_RETURN(std::string dir, ModelDir(task, blobs, jobfiles::kModelPrefix));
  QUANTD_ASSIGN_OR_RETURN(auto ckpt, model::Checkpoint::Open(dir));
  QUANTD_ASSIGN_OR_RETURN(MatrixF w, ckpt->ReadMatrix(work.tensor_name()));
  if (runner::MethodOf(task.spec()).transforms_model) {
    // The same transform the Hessian tasks and the assembly apply, for this one matrix.
    QUANTD_ASSIGN_OR_RETURN(model::LlamaConfig cfg, model::LoadLlamaConfig(dir));
    absl::StatusOr<model::StoredLinear> sl =
        model::FindStoredLinear(cfg, work.layer(), work.tensor_name());
    if (!sl.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("quarot: ", sl.status().message()));
    }
    VectorF norm;
    if (sl->group == model::LinearGroup::kQkv || sl->group == model::LinearGroup::kGateUp) {
      const std::string norm_name =
          absl::StrCat("model.layers.", work.layer(), ".",
                       sl->group == model::LinearGroup::kGateUp ? "post_attention_layernorm.weight"
                                                                : "input_layernorm.weight");
      QUANTD_ASSIGN_OR_RETURN(MatrixF nm, ckpt->ReadMatrix(norm_name));
      norm = Eigen::Map<const VectorF>(nm.data(), nm.size());
    }
    QUANTD_ASSIGN_OR_RETURN(w, model::QuarotStored(cfg, *sl, w, norm, task.spec().seed()));
  }
  QUANTD_ASSIGN_OR_RETURN(quant::QuantSpec spec, QuantSpecFromProto(task.spec()));
  spec.seed = work.seed();  // this matrix's seed, derived by the coordinator from the job's
  bool has_hessian = false;
  for (const auto& in : task.inputs()) has_hessian |= in.name().rfind(jobfiles::kHessiansPrefix, 0) == 0;
  if (!has_hessian) {
    // An rtn job without calibration data: nothing but the proxy loss needs a Hessian, which
    // is then taken as the identity (the relative Frobenius error of the weight).
    if (spec.method != quant::Method::kRtn) {
      return absl::InvalidArgumentError(absl::StrCat("quantize task for ", work.tensor_name(),
                                                     " has no Hessian input; only rtn runs without"));
    }
    QUANTD_ASSIGN_OR_RETURN(quant::QuantizedMatrix q,
                            quant::QuantizeMatrixNoHessian(w, spec, work.tensor_name()));
    return QuantizeResult(std::move(q), static_cast<int64_t>(w.rows()) * w.cols());
  }
  QUANTD_ASSIGN_OR_RETURN(std::string hpath, InputPath(task, blobs, jobfiles::kHessiansPrefix));
  QUANTD_ASSIGN_OR_RETURN(auto hfile, model::SafetensorsFile::Open(hpath));
  QUANTD_ASSIGN_OR_RETURN(model::TensorView sum, hfile->Get("upper"));
  QUANTD_ASSIGN_OR_RETURN(model::TensorView tok, hfile->Get("tokens"));
  const int64_t n = w.cols();
  if (sum.dtype != model::DType::kF64 || sum.shape.size() != 1 ||
      sum.shape[0] != model::PackedUpperSize(n) || tok.dtype != model::DType::kI64 ||
      tok.data.size() != 8) {
    return absl::InvalidArgumentError(absl::StrCat("Hessian for ", work.tensor_name(),
                                                   " does not match the weight's ", w.cols(),
                                                   " input features"));
  }
  int64_t ntok;
  memcpy(&ntok, tok.data.data(), 8);
  if (ntok <= 0) return absl::FailedPreconditionError("Hessian was built from zero tokens");
  QUANTD_ASSIGN_OR_RETURN(
      MatrixD h, model::UnpackUpper(absl::MakeConstSpan(reinterpret_cast<const double*>(
                                                            sum.data.data()),
                                                        static_cast<size_t>(sum.shape[0])),
                                    n));
  h /= static_cast<double>(ntok);
  QUANTD_ASSIGN_OR_RETURN(quant::QuantizedMatrix q,
                          quant::QuantizeMatrix(device, w, h, spec, work.tensor_name()));
  return QuantizeResult(std::move(q), static_cast<int64_t>(w.rows()) * w.cols());
}

// Evaluation: the fp checkpoint or the quantized artifact (dequantized one layer at a time),
// every window batched into layer-streamed passes.
absl::StatusOr<TaskResult> RunEval(const Task& task, const BlobResolver& blobs,
                                   quant::Device& device) {
  const quantd::v1::EvalTask& work = task.eval();
  std::string dir;
  if (work.target() == jobfiles::kEvalTargetFp) {
    QUANTD_ASSIGN_OR_RETURN(dir, ModelDir(task, blobs, jobfiles::kModelPrefix));
  } else if (work.target() == jobfiles::kEvalTargetQuantized) {
    QUANTD_ASSIGN_OR_RETURN(dir, ModelDir(task, blobs, jobfiles::kStagingPrefix));
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown eval target '", work.target(), "'"));
  }
  model::LlamaConfig cfg;
  QUANTD_ASSIGN_OR_RETURN(auto src, artifact::OpenArtifactSource(dir, &cfg));
  QUANTD_ASSIGN_OR_RETURN(std::string eval_path, InputPath(task, blobs, jobfiles::kEvalPrefix));
  QUANTD_ASSIGN_OR_RETURN(std::vector<int32_t> tokens, model::LoadTokenFile(eval_path));
  model::PerplexityOptions opts;
  opts.context = work.context() > 0 ? work.context() : 512;
  if (work.has_start_token_id()) {
    if (work.start_token_id() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("eval start token ", work.start_token_id(), " is negative"));
    }
    opts.start_token = work.start_token_id();
  }
  QUANTD_ASSIGN_OR_RETURN(model::ForwardOpsSession ops, model::ForwardOpsSession::Open(&device));
  opts.ops = &ops.ops();
  QUANTD_ASSIGN_OR_RETURN(model::PerplexityResult p, model::Perplexity(cfg, *src, tokens, opts));
  TaskResult r;
  r.header.set_ppl(p.ppl);
  r.header.set_mean_nll(p.mean_nll);
  r.header.set_targets(p.targets);
  return r;
}

}  // namespace

int RemoveStaleShards(const std::string& scratch_dir) {
  int removed = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(scratch_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(kShardDirPrefix, 0) != 0) continue;
    const std::string rest = name.substr(sizeof(kShardDirPrefix) - 1);
    const size_t us = rest.find('_');
    long pid = 0;
    if (us == std::string::npos || !absl::SimpleAtoi(rest.substr(0, us), &pid) || pid <= 0) continue;
    // Alive (or not ours to judge: EPERM) means in use, unless it is our own pid reused.
    if (pid != ::getpid() && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM)) continue;
    if (RemoveAll(e.path().string()).ok()) ++removed;
  }
  return removed;
}

absl::StatusOr<TaskResult> ExecuteTask(const Task& task, const BlobResolver& blobs,
                                       quant::Device& device, const std::atomic<bool>& cancelled,
                                       const std::string& scratch_dir, const TaskProgress& progress) {
  const absl::Time start = absl::Now();
  absl::StatusOr<TaskResult> r;
  // The kind's own message must be the one the task carries: a task without it would run on
  // default values.
  auto missing = [&task](const char* field) {
    return absl::InvalidArgumentError(absl::StrCat("task ", task.task_id(), " of kind ",
                                                   quantd::v1::TaskKind_Name(task.kind()),
                                                   " carries no '", field, "' message"));
  };
  switch (task.kind()) {
    case quantd::v1::TASK_KIND_HESSIAN:
      if (!task.has_hessian()) return missing("hessian");
      r = RunHessian(task, blobs, device, cancelled, scratch_dir);
      break;
    case quantd::v1::TASK_KIND_QUANTIZE:
      if (!task.has_quantize()) return missing("quantize");
      r = RunQuantize(task, blobs, device);
      break;
    case quantd::v1::TASK_KIND_EVAL:
      if (!task.has_eval()) return missing("eval");
      r = RunEval(task, blobs, device);
      break;
    case quantd::v1::TASK_KIND_FINETUNE:
      if (!task.has_finetune()) return missing("finetune");
      r = RunFinetuneTask(task, blobs, device, cancelled, scratch_dir);
      break;
    case quantd::v1::TASK_KIND_FINETUNE_E2E:
      if (!task.has_finetune_e2e()) return missing("finetune_e2e");
      r = RunFinetuneE2eTask(task, blobs, device, cancelled, scratch_dir, progress);
      break;
    default:
      return absl::UnimplementedError(absl::StrCat("task kind ", task.kind(), " is not supported"));
  }
  if (r.ok()) r->header.set_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  return r;
}

}  // namespace quantd::runner
