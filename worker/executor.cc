#include "worker/executor.h"

#include <filesystem>
#include <map>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/artifact/artifact.h"
#include "engine/format/checkpoint.h"
#include "engine/model/config.h"
#include "engine/model/forward.h"
#include "engine/model/hessian_capture.h"
#include "engine/model/perplexity.h"
#include "engine/model/quarot.h"
#include "engine/format/safetensors.h"
#include "engine/tokenizer/tokens.h"
#include "engine/model/weights.h"
#include "engine/quant/quantize.h"
#include "engine/spec/quant_spec.h"

namespace quantd::runner {
namespace {

using quantd::v1::Task;

// Directory holding the resolved model inputs ("inputs/model/...").
absl::StatusOr<std::string> ModelDir(const Task& task, const BlobResolver& blobs,
                                     const std::string& prefix) {
  std::string dir;
  for (const auto& in : task.inputs()) {
    if (in.name().rfind(prefix, 0) != 0) continue;
    QUANTD_ASSIGN_OR_RETURN(std::string p, blobs(in.name()));
    dir = std::filesystem::path(p).parent_path().string();
  }
  if (dir.empty()) return absl::InvalidArgumentError(absl::StrCat("task has no ", prefix, " inputs"));
  return dir;
}

absl::StatusOr<std::string> InputPath(const Task& task, const BlobResolver& blobs,
                                      std::string_view name_prefix) {
  for (const auto& in : task.inputs()) {
    if (in.name().rfind(name_prefix, 0) == 0) return blobs(in.name());
  }
  return absl::InvalidArgumentError(absl::StrCat("task has no input ", std::string(name_prefix)));
}

// Serializes the captured Hessians of layers [first, last) as one safetensors blob:
// L<l>.<group>.sum (F64 [n,n]) and L<l>.<group>.tokens (I64 [1]).
absl::StatusOr<std::string> SerializeCapture(const model::HessianCapture& cap, int first,
                                             int last) {
  std::vector<model::TensorToWrite> out;
  for (int l = first; l < last; ++l) {
    for (model::LinearGroup g : {model::LinearGroup::kQkv, model::LinearGroup::kO,
                                 model::LinearGroup::kGateUp, model::LinearGroup::kDown}) {
      const std::string key = absl::StrCat("L", l, ".", std::string(model::GroupName(g)));
      const MatrixD& h = cap.Sum(l, g);
      model::TensorToWrite s;
      s.name = key + ".sum";
      s.dtype = model::DType::kF64;
      s.shape = {h.rows(), h.cols()};
      s.data.assign(reinterpret_cast<const char*>(h.data()), h.size() * sizeof(double));
      model::TensorToWrite t;
      t.name = key + ".tokens";
      t.dtype = model::DType::kI64;
      t.shape = {1};
      int64_t n = cap.Tokens(l, g);
      t.data.assign(reinterpret_cast<const char*>(&n), 8);
      out.push_back(std::move(s));
      out.push_back(std::move(t));
    }
  }
  char tmpl[] = "/tmp/quantd_shard_XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return absl::InternalError("mkdtemp failed");
  const std::string path = JoinPath(tmpl, "shard.safetensors");
  absl::Status s = model::WriteSafetensors(path, out);
  absl::StatusOr<std::string> bytes = s.ok() ? ReadFile(path) : absl::StatusOr<std::string>(s);
  RemoveAll(tmpl).IgnoreError();
  return bytes;
}

// A sequential job's Hessian task for layer `layer`: replaces the linears of every layer before
// it with their quantized matrices ("quantized/<tensor>" inputs, dequantized in the basis the
// quantize task saw: the rotated one for quarot). Each of those linears must be given once.
absl::Status LoadQuantizedPrefix(const Task& task, const BlobResolver& blobs, int layer,
                                 model::LlamaWeights* w) {
  constexpr std::string_view kPrefix = "quantized/";  // server: kQuantizedInputPrefix
  std::map<std::string, std::pair<int, model::Linear>> want;
  for (int l = 0; l < layer; ++l) {
    for (model::Linear lin : model::kAllLinears) want[model::LinearTensorName(l, lin)] = {l, lin};
  }
  size_t found = 0;
  for (const auto& in : task.inputs()) {
    if (in.name().rfind(kPrefix, 0) != 0) continue;
    const std::string tensor = in.name().substr(kPrefix.size());
    auto it = want.find(tensor);
    if (it == want.end()) {
      return absl::InvalidArgumentError(absl::StrCat("sequential Hessian task for layer ", layer,
                                                     ": unexpected input ", in.name()));
    }
    const auto [l, lin] = it->second;
    want.erase(it);
    QUANTD_ASSIGN_OR_RETURN(std::string path, blobs(in.name()));
    QUANTD_ASSIGN_OR_RETURN(std::string packed, ReadFile(path));
    QUANTD_ASSIGN_OR_RETURN(MatrixF q, quant::DequantizeMatrix(packed));
    MatrixF& dst = model::MutableLinear(*w, l, lin);
    if (q.rows() != dst.rows() || q.cols() != dst.cols()) {
      return absl::InvalidArgumentError(absl::StrCat("quantized ", tensor, " is [", q.rows(), ",",
                                                     q.cols(), "], the model's is [", dst.rows(),
                                                     ",", dst.cols(), "]"));
    }
    dst = std::move(q);
    ++found;
  }
  if (!want.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequential Hessian task for layer ", layer, " lacks the quantized ", want.begin()->first,
        " (", want.size(), " of ", found + want.size(), " missing)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<TaskResult> RunHessian(const Task& task, const BlobResolver& blobs,
                                      const std::atomic<bool>& cancelled) {
  QUANTD_ASSIGN_OR_RETURN(std::string dir, ModelDir(task, blobs, "inputs/model/"));
  QUANTD_ASSIGN_OR_RETURN(model::LlamaConfig cfg, model::LoadLlamaConfig(dir));
  QUANTD_ASSIGN_OR_RETURN(auto ckpt, model::Checkpoint::Open(dir));
  QUANTD_ASSIGN_OR_RETURN(model::LlamaWeights w, model::LoadLlamaWeights(*ckpt, cfg));
  // QuaRot quantizes the rotated model: capture the Hessians of its linears' real inputs.
  if (task.spec().method() == "quarot") {
    QUANTD_RETURN_IF_ERROR(model::ApplyQuarot(&cfg, &w, task.spec().seed()));
  }
  QUANTD_ASSIGN_OR_RETURN(std::string calib_path, InputPath(task, blobs, "inputs/calib"));
  QUANTD_ASSIGN_OR_RETURN(std::vector<int32_t> tokens, model::LoadTokenFile(calib_path));
  const int64_t begin = task.token_begin(), end = task.token_end(), len = task.seq_len();
  if (begin < 0 || end > static_cast<int64_t>(tokens.size()) || begin >= end || len <= 0 ||
      (end - begin) % len != 0) {
    return absl::InvalidArgumentError(absl::StrCat("bad token range [", begin, ", ", end,
                                                   ") for ", tokens.size(), " tokens"));
  }
  // A sequential job captures one layer through its quantized predecessors; otherwise every
  // layer of the fp (or rotated fp) model.
  const bool sequential = task.spec().sequential();
  const int layer = sequential ? task.layer() : -1;
  if (sequential) {
    if (layer < 0 || layer >= cfg.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("sequential Hessian task for layer ", layer,
                                                     " of a ", cfg.num_layers, "-layer model"));
    }
    QUANTD_RETURN_IF_ERROR(LoadQuantizedPrefix(task, blobs, layer, &w));
  }
  model::HessianCapture capture(cfg, layer);
  const int64_t nseq = (end - begin) / len;
  // Sequences run one after another so the fp64 sums are added in a fixed order: a retried
  // task produces the same bytes on any worker (Forward itself may use threads).
  for (int64_t s = 0; s < nseq && !cancelled.load(); ++s) {
    absl::Span<const int32_t> seq(tokens.data() + begin + s * len, static_cast<size_t>(len));
    QUANTD_RETURN_IF_ERROR(model::Forward(cfg, w, seq, &capture).status());
  }
  if (cancelled.load()) return absl::CancelledError("task cancelled");
  TaskResult r;
  QUANTD_ASSIGN_OR_RETURN(r.data, sequential ? SerializeCapture(capture, layer, layer + 1)
                                             : SerializeCapture(capture, 0, cfg.num_layers));
  r.header.set_tokens(end - begin);
  return r;
}

absl::StatusOr<TaskResult> RunQuantize(const Task& task, const BlobResolver& blobs,
                                       quant::Device& device) {
  QUANTD_ASSIGN_OR_RETURN(std::string dir, ModelDir(task, blobs, "inputs/model/"));
  QUANTD_ASSIGN_OR_RETURN(auto ckpt, model::Checkpoint::Open(dir));
  QUANTD_ASSIGN_OR_RETURN(MatrixF w, ckpt->ReadMatrix(task.tensor_name()));
  if (task.spec().method() == "quarot") {
    // The same transform the Hessian tasks and the assembly apply, for this one matrix.
    QUANTD_ASSIGN_OR_RETURN(model::LlamaConfig cfg, model::LoadLlamaConfig(dir));
    model::Linear lin = model::Linear::kQ;
    bool found = false;
    for (model::Linear l : model::kAllLinears) {
      if (model::LinearTensorName(task.layer(), l) == task.tensor_name()) {
        lin = l;
        found = true;
      }
    }
    if (!found) {
      return absl::InvalidArgumentError(absl::StrCat("quarot: ", task.tensor_name(),
                                                     " is not a linear of layer ", task.layer()));
    }
    VectorF norm;
    if (lin != model::Linear::kO && lin != model::Linear::kDown) {
      const std::string norm_name =
          absl::StrCat("model.layers.", task.layer(), ".",
                       model::GroupOf(lin) == model::LinearGroup::kGateUp
                           ? "post_attention_layernorm.weight"
                           : "input_layernorm.weight");
      QUANTD_ASSIGN_OR_RETURN(MatrixF nm, ckpt->ReadMatrix(norm_name));
      norm = Eigen::Map<const VectorF>(nm.data(), nm.size());
    }
    QUANTD_ASSIGN_OR_RETURN(w, model::QuarotLinear(cfg, lin, w, norm, task.spec().seed()));
  }
  QUANTD_ASSIGN_OR_RETURN(std::string hpath, InputPath(task, blobs, "hessians/"));
  QUANTD_ASSIGN_OR_RETURN(auto hfile, model::SafetensorsFile::Open(hpath));
  QUANTD_ASSIGN_OR_RETURN(model::TensorView sum, hfile->Get("sum"));
  QUANTD_ASSIGN_OR_RETURN(model::TensorView tok, hfile->Get("tokens"));
  if (sum.dtype != model::DType::kF64 || sum.shape.size() != 2 || sum.shape[0] != sum.shape[1] ||
      sum.shape[1] != w.cols() || tok.dtype != model::DType::kI64 || tok.data.size() != 8) {
    return absl::InvalidArgumentError(absl::StrCat("Hessian for ", task.tensor_name(),
                                                   " does not match the weight's ", w.cols(),
                                                   " input features"));
  }
  int64_t ntok;
  memcpy(&ntok, tok.data.data(), 8);
  if (ntok <= 0) return absl::FailedPreconditionError("Hessian was built from zero tokens");
  const int64_t n = sum.shape[0];
  MatrixD h = Eigen::Map<const MatrixD>(reinterpret_cast<const double*>(sum.data.data()), n, n);
  h /= static_cast<double>(ntok);
  QUANTD_ASSIGN_OR_RETURN(quant::QuantSpec spec, QuantSpecFromProto(task.spec()));
  spec.seed = task.seed();  // this matrix's seed, derived by the coordinator from the job's
  QUANTD_ASSIGN_OR_RETURN(quant::QuantizedMatrix q,
                          quant::QuantizeMatrix(device, w, h, spec, task.tensor_name()));
  TaskResult r;
  r.data = std::move(q.packed);
  r.header.set_proxy_loss(q.proxy_loss);
  r.header.set_note(q.note);
  r.header.set_stored_method(std::string(quant::MethodName(q.stored_method)));
  r.header.set_rotated_proxy_loss(q.rotated_proxy_loss);
  return r;
}

absl::StatusOr<TaskResult> RunEval(const Task& task, const BlobResolver& blobs) {
  model::LlamaConfig cfg;
  model::LlamaWeights w;
  if (task.eval_target() == "fp") {
    QUANTD_ASSIGN_OR_RETURN(std::string dir, ModelDir(task, blobs, "inputs/model/"));
    QUANTD_ASSIGN_OR_RETURN(cfg, model::LoadLlamaConfig(dir));
    QUANTD_ASSIGN_OR_RETURN(auto ckpt, model::Checkpoint::Open(dir));
    QUANTD_ASSIGN_OR_RETURN(w, model::LoadLlamaWeights(*ckpt, cfg));
  } else if (task.eval_target() == "quantized") {
    QUANTD_ASSIGN_OR_RETURN(std::string dir, ModelDir(task, blobs, "staging/"));
    QUANTD_ASSIGN_OR_RETURN(w, artifact::LoadArtifactWeights(dir, &cfg));
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown eval target '", task.eval_target(), "'"));
  }
  QUANTD_ASSIGN_OR_RETURN(std::string eval_path, InputPath(task, blobs, "inputs/eval"));
  QUANTD_ASSIGN_OR_RETURN(std::vector<int32_t> tokens, model::LoadTokenFile(eval_path));
  model::PerplexityOptions opts;
  opts.context = task.eval_context() > 0 ? task.eval_context() : 512;
  QUANTD_ASSIGN_OR_RETURN(model::PerplexityResult p, model::Perplexity(cfg, w, tokens, opts));
  TaskResult r;
  r.header.set_ppl(p.ppl);
  r.header.set_mean_nll(p.mean_nll);
  r.header.set_targets(p.targets);
  return r;
}

}  // namespace

absl::StatusOr<TaskResult> ExecuteTask(const Task& task, const BlobResolver& blobs,
                                       quant::Device& device, const std::atomic<bool>& cancelled) {
  const absl::Time start = absl::Now();
  absl::StatusOr<TaskResult> r;
  switch (task.kind()) {
    case quantd::v1::TASK_KIND_HESSIAN: r = RunHessian(task, blobs, cancelled); break;
    case quantd::v1::TASK_KIND_QUANTIZE: r = RunQuantize(task, blobs, device); break;
    case quantd::v1::TASK_KIND_EVAL: r = RunEval(task, blobs); break;
    default:
      return absl::UnimplementedError(absl::StrCat("task kind ", task.kind(), " is not supported"));
  }
  if (r.ok()) r->header.set_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  return r;
}

}  // namespace quantd::runner
