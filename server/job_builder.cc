#include "server/job_builder.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "absl/strings/escaping.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "server/job_finetune.h"
#include "server/registry.h"
#include "engine/format/checkpoint.h"
#include "engine/model/calibration.h"
#include "engine/model/config.h"
#include "engine/model/quarot.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/tokens.h"
#include "engine/model/streamed_forward.h"
#include "engine/model/weights.h"
#include "engine/quant/packed_matrix.h"
#include "engine/quant/quantize.h"
#include "engine/spec/quant_spec.h"

namespace quantd::server {
namespace fs = std::filesystem;
using quantd::v1::SubmitJobRequest;

PhaseKind KindOfPhase(int phase, int stages, int finetune) {
  if (phase < 0 || phase > PublishPhase(stages, finetune)) return PhaseKind::kDone;
  if (phase == EvaluatePhase(stages, finetune)) return PhaseKind::kEvaluate;
  if (phase == PublishPhase(stages, finetune)) return PhaseKind::kPublish;
  if (phase >= FinetunePhase(stages, 0)) return PhaseKind::kFinetune;
  return phase % 2 == 0 ? PhaseKind::kHessian : PhaseKind::kQuantize;
}

std::string PhaseName(int phase, int stages, int finetune) {
  switch (KindOfPhase(phase, stages, finetune)) {
    case PhaseKind::kHessian: return "hessian";
    case PhaseKind::kQuantize: return "quantize";
    case PhaseKind::kFinetune: return "finetune";
    case PhaseKind::kEvaluate: return "evaluate";
    case PhaseKind::kPublish: return "publish";
    case PhaseKind::kDone: break;
  }
  return "done";
}

void SetJobPhase(int phase, int stages, quantd::v1::Job* job, int finetune) {
  job->set_phase(PhaseName(phase, stages, finetune));
  const PhaseKind kind = KindOfPhase(phase, stages, finetune);
  job->set_layer_stages(stages > 1 ? stages : 0);
  job->set_layer_stage(stages > 1 && (kind == PhaseKind::kHessian || kind == PhaseKind::kQuantize)
                           ? phase / 2 + 1
                           : 0);
}

int StagesOf(const std::vector<TaskRow>& tasks) {
  int last = 0;
  for (const TaskRow& t : tasks) {
    if (t.task.kind() == quantd::v1::TASK_KIND_QUANTIZE) last = std::max(last, t.phase / 2);
  }
  return last + 1;
}

absl::StatusOr<InputFingerprints> FingerprintJobInputs(const std::string& job_dir) {
  InputFingerprints fps;
  const std::string in_model = JoinPath(job_dir, jobfiles::kModelDir);
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(in_model, ec)) {
    if (e.is_regular_file()) names.push_back(e.path().filename().string());
  }
  if (ec) return absl::NotFoundError(absl::StrCat("model snapshot ", in_model, ": ", ec.message()));
  std::sort(names.begin(), names.end());
  std::string material;
  for (const std::string& n : names) {
    QUANTD_ASSIGN_OR_RETURN(std::string d, Sha256File(JoinPath(in_model, n)));
    absl::StrAppend(&material, n, " ", d, "\n");
  }
  fps.model = Sha256Hex(material);
  const std::string calib = JoinPath(job_dir, jobfiles::kCalibTokens);
  if (fs::exists(calib)) {  // absent for an rtn job submitted without calibration data
    QUANTD_ASSIGN_OR_RETURN(fps.calib, Sha256File(calib));
  }
  const std::string eval = JoinPath(job_dir, jobfiles::kEvalTokens);
  if (fs::exists(eval)) {
    QUANTD_ASSIGN_OR_RETURN(fps.eval, Sha256File(eval));
  }
  return fps;
}

std::string SpecFingerprint(const quantd::v1::QuantSpec& spec) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream raw(&bytes);
    google::protobuf::io::CodedOutputStream out(&raw);
    out.SetSerializationDeterministic(true);
    spec.SerializeToCodedStream(&out);
  }
  // The packed format version and quantd's version stand for "the code that interprets it";
  // quarot's model transform has its own version.
  const std::string quarot =
      runner::MethodOf(spec).transforms_model ? absl::StrCat(" quarot v", model::kQuarotVersion) : "";
  return Sha256Hex(absl::StrCat("quantd ", QUANTD_VERSION, " packed v", quant::kPackedVersion,
                                quarot, "\n", bytes));
}


absl::Status ValidateAndDefault(SubmitJobRequest* req) {
  if (req->request_id().size() > 256) {
    return absl::InvalidArgumentError("request_id is longer than 256 bytes");
  }
  if (!IsValidModelName(req->name())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid model name '", absl::CHexEscape(req->name().substr(0, 200)),
        "': use 1-128 characters [A-Za-z0-9._-], starting with a letter or digit"));
  }
  QUANTD_ASSIGN_OR_RETURN(quant::QuantSpec spec, runner::QuantSpecFromProto(req->spec()));
  if (req->spec().sequential() && !quant::TraitsOf(spec.method).uses_hessian) {
    return absl::InvalidArgumentError(
        "sequential is not supported by rtn: it uses no Hessians, so there is nothing to capture "
        "through the quantized layers");
  }
  // Stored with defaults filled in, so the manifest shows the settings that were used.
  req->mutable_spec()->set_damp(spec.damp);
  if (runner::HasBitBudget(req->spec())) {
    if (req->spec().budget_weight().empty()) req->mutable_spec()->set_budget_weight("rel");
  } else {
    req->mutable_spec()->set_bits(spec.bits);  // a grid's own bits and group size when left 0
  }
  req->mutable_spec()->set_group_size(spec.group_size);
  req->mutable_spec()->set_grid(std::string(quant::GridTargetName(spec.grid)));
  req->mutable_spec()->set_greedy_passes(spec.greedy_passes);
  if (quant::TraitsOf(spec.method).trellis) {
    req->mutable_spec()->set_trellis_code(std::string(quant::TrellisCodeName(spec.trellis_code)));
    req->mutable_spec()->set_trellis_l(spec.trellis_l);
  }
  // Hessian token weighting defaults (engine/spec/quant_spec.h), stored for the manifest and the
  // spec fingerprint.
  QUANTD_RETURN_IF_ERROR(runner::FillTokenWeightingDefaults(req->mutable_spec()));
  if (req->calib_sampling().empty()) {
    req->set_calib_sampling(req->max_calib_seqs() > 0 ? "random" : "first");
  }
  QUANTD_ASSIGN_OR_RETURN(model::CalibSampling sampling,
                          model::ParseCalibSampling(req->calib_sampling()));
  if (sampling == model::CalibSampling::kRandom && req->max_calib_seqs() <= 0) {
    return absl::InvalidArgumentError(
        "calib_sampling \"random\" needs max_calib_seqs > 0 (how many windows to draw)");
  }
  if (req->start_token().empty()) req->set_start_token("auto");
  if (req->start_token() != "auto" && req->start_token() != "none") {
    return absl::InvalidArgumentError(absl::StrCat("unknown start_token \"",
                                                   absl::CHexEscape(req->start_token().substr(0, 64)),
                                                   "\": expected \"auto\" or \"none\""));
  }
  if (req->calib_seq_len() == 0) req->set_calib_seq_len(512);
  if (req->calib_seq_len() < 8 || req->calib_seq_len() > 1 << 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("calib_seq_len ", req->calib_seq_len(), " is outside [8, 65536]"));
  }
  if (req->max_calib_seqs() < 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_calib_seqs ", req->max_calib_seqs(), " < 0"));
  }
  if (req->eval_context() == 0) req->set_eval_context(512);
  if (req->eval_context() < 8 || req->eval_context() > 1 << 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("eval_context ", req->eval_context(), " is outside [8, 65536]"));
  }
  if (req->model_dir().empty()) return absl::InvalidArgumentError("model_dir is empty");
  QUANTD_RETURN_IF_ERROR(ValidateFinetuneRequest(req));
  // rtn needs the Hessians only for its proxy loss: without calibration data the job skips
  // the Hessian capture (docs/ARCHITECTURE.md "A job").
  // hessian_scale reads H's diagonal and a bit budget weighs the widths by proxy loss: both
  // need the Hessians.
  if (req->calib_path().empty() &&
      (spec.method != quant::Method::kRtn || spec.hessian_scale ||
       runner::HasBitBudget(req->spec()))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "calib_path is empty; only rtn runs without calibration data, not ",
        std::string(quant::MethodName(spec.method)),
        spec.hessian_scale ? " with hessian_scale" : "",
        runner::HasBitBudget(req->spec()) ? " with a bit budget" : ""));
  }
  for (const std::string* p : {&req->model_dir(), &req->calib_path(), &req->eval_path()}) {
    if (p->find('\0') != std::string::npos || p->size() > 4096) {
      return absl::InvalidArgumentError("a path contains NUL or is longer than 4096 bytes");
    }
  }
  return absl::OkStatus();
}

namespace {

// Copies (or hard-links) `src` to `dst`.
absl::Status SnapshotFile(const std::string& src, const std::string& dst) {
  if (::link(src.c_str(), dst.c_str()) == 0) return absl::OkStatus();
  std::error_code ec;
  fs::copy_file(src, dst, fs::copy_options::overwrite_existing, ec);
  if (ec) return absl::InternalError(absl::StrCat("copy ", src, " -> ", dst, ": ", ec.message()));
  return absl::OkStatus();
}

// Reads calibration/evaluation data: token files directly, text through the model's tokenizer
// (model::EncodeDocuments: one document per "<|endoftext|>"- or blank-line-separated chunk).
// `path` is what the request named (errors and the format come from it), `real` the resolved
// path inside an input root that is read.
absl::StatusOr<std::vector<int32_t>> ReadTokens(const std::string& path, const std::string& real,
                                                const std::string& what,
                                                const std::string& model_dir, int vocab) {
  if (!fs::exists(real)) return absl::NotFoundError(absl::StrCat(what, " file ", path, " does not exist"));
  std::vector<int32_t> tokens;
  if (absl::EndsWith(path, ".txt")) {
    // tokenizer.json if present, else llama2.c tokenizer.bin / tok512.bin (model/tokenizer.h).
    if (model::FindTokenizerFile(model_dir).empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, " file ", path,
          " is text, but the model directory has no tokenizer.json or tokenizer.bin to encode it"));
    }
    QUANTD_ASSIGN_OR_RETURN(auto tok, model::LoadTokenizerForModel(model_dir));
    QUANTD_ASSIGN_OR_RETURN(std::string text, ReadFile(real, uint64_t{1} << 30));
    QUANTD_ASSIGN_OR_RETURN(tokens, model::EncodeDocuments(*tok, text));
  } else {
    auto loaded = model::LoadTokenFile(real);
    if (!loaded.ok()) {
      return absl::Status(loaded.status().code(),
                          absl::StrCat(what, " file: ", loaded.status().message()));
    }
    tokens = std::move(*loaded);
  }
  absl::Status s = model::ValidateTokens(tokens, vocab);
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(what, " file ", path, ": ", s.message()));
  return tokens;
}

std::string TokensToU32(const std::vector<int32_t>& t) {
  std::string out(t.size() * 4, '\0');
  for (size_t i = 0; i < t.size(); ++i) {
    uint32_t v = static_cast<uint32_t>(t[i]);
    for (int b = 0; b < 4; ++b) out[4 * i + b] = static_cast<char>((v >> (8 * b)) & 0xff);
  }
  return out;
}

// Checks the shape of every tensor a job reads, from the headers only.
absl::Status CheckShapes(const model::Checkpoint& ckpt, const model::LlamaConfig& c) {
  auto check = [&](const std::string& name, std::vector<int64_t> want) -> absl::Status {
    auto t = ckpt.Get(name);
    if (!t.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("model is missing tensor ", name, ": ",
                                                     t.status().message()));
    }
    if (t->shape != want) {
      auto dims = [](const std::vector<int64_t>& v) {
        std::string s = "[";
        for (size_t i = 0; i < v.size(); ++i) absl::StrAppend(&s, i ? "," : "", v[i]);
        return s + "]";
      };
      return absl::InvalidArgumentError(absl::StrCat(name, " has shape ", dims(t->shape),
                                                     ", config.json says ", dims(want)));
    }
    return absl::OkStatus();
  };
  const int64_t h = c.hidden_size;
  QUANTD_RETURN_IF_ERROR(check("model.embed_tokens.weight", {c.vocab_size, h}));
  for (int l = 0; l < c.num_layers; ++l) {
    for (const model::StoredLinear& sl : model::StoredLinears(c)) {
      const auto [out, in] = model::StoredShape(c, sl);
      QUANTD_RETURN_IF_ERROR(check(model::StoredTensorName(l, sl), {out, in}));
    }
    for (const model::LayerVectorSpec& v : model::LayerVectors(c)) {
      QUANTD_RETURN_IF_ERROR(check(absl::StrCat("model.layers.", l, ".", std::string(v.suffix)), {v.size}));
    }
  }
  return absl::OkStatus();
}

uint64_t Fnv1a(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

}  // namespace

absl::StatusOr<JobRow> BuildJob(const SubmitJobRequest& req, const InputRoots& roots,
                                const std::string& job_id, const std::string& job_dir,
                                int max_hessian_shards, uint64_t stage_bytes) {
  // Every file is read through its resolved path inside an input root.
  QUANTD_ASSIGN_OR_RETURN(const std::string model_dir, roots.ResolveModelDir(req.model_dir()));
  if (!fs::is_directory(model_dir)) {
    return absl::NotFoundError(absl::StrCat("model directory ", req.model_dir(), " does not exist"));
  }
  const bool has_calib = !req.calib_path().empty();  // rtn may run without (ValidateAndDefault)
  std::string calib_path;
  if (has_calib) {
    QUANTD_ASSIGN_OR_RETURN(calib_path, roots.Resolve(req.calib_path(), "calibration file"));
  }
  std::string eval_path;
  if (!req.eval_path().empty()) {
    QUANTD_ASSIGN_OR_RETURN(eval_path, roots.Resolve(req.eval_path(), "evaluation file"));
  }
  QUANTD_ASSIGN_OR_RETURN(model::LlamaConfig cfg, model::LoadLlamaConfig(model_dir));
  if (runner::MethodOf(req.spec()).transforms_model) QUANTD_RETURN_IF_ERROR(model::QuarotSupported(cfg));
  QUANTD_ASSIGN_OR_RETURN(auto ckpt, model::Checkpoint::Open(model_dir));
  // Shape check of every tensor we will read, without loading the weights.
  QUANTD_RETURN_IF_ERROR(CheckShapes(*ckpt, cfg));
  std::vector<int32_t> calib;
  if (has_calib) {
    QUANTD_ASSIGN_OR_RETURN(calib, ReadTokens(req.calib_path(), calib_path, "calibration",
                                              model_dir, cfg.vocab_size));
  }
  std::vector<int32_t> eval;
  if (!req.eval_path().empty()) {
    QUANTD_ASSIGN_OR_RETURN(eval, ReadTokens(req.eval_path(), eval_path, "evaluation", model_dir,
                                             cfg.vocab_size));
    if (eval.size() < 2) return absl::InvalidArgumentError("evaluation data has fewer than 2 tokens");
  }
  const int seq_len = std::min(req.calib_seq_len(), cfg.max_position_embeddings);
  // Calibration like serving (issue 24): the model's start token at the head of every sequence
  // (and evaluation window) where its tokenizer.json adds one, windows drawn as requested.
  int32_t start_token = -1;
  if (req.start_token() == "auto") {
    QUANTD_ASSIGN_OR_RETURN(start_token, model::ServingStartToken(model_dir));
    if (start_token >= cfg.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("the tokenizer's start token ", start_token,
                                                     " is outside the model's vocabulary of ",
                                                     cfg.vocab_size));
    }
  }
  int64_t nseq = 0;  // rtn without calibration data: no sequences, no Hessian tasks
  if (has_calib) {
    model::CalibWindowOptions wopts;
    wopts.seq_len = seq_len;
    wopts.max_seqs = req.max_calib_seqs();
    QUANTD_ASSIGN_OR_RETURN(wopts.sampling, model::ParseCalibSampling(req.calib_sampling()));
    wopts.seed = req.calib_seed();
    wopts.start_token = start_token;
    QUANTD_ASSIGN_OR_RETURN(calib, model::CalibrationWindows(calib, wopts));
    nseq = static_cast<int64_t>(calib.size()) / seq_len;
  }
  if (req.eval_context() > cfg.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("eval_context ", req.eval_context(),
                                                   " exceeds the model's max_position_embeddings ",
                                                   cfg.max_position_embeddings));
  }

  // Snapshot inputs.
  const std::string in_model = JoinPath(job_dir, jobfiles::kModelDir);
  QUANTD_RETURN_IF_ERROR(MakeDirs(in_model));
  QUANTD_RETURN_IF_ERROR(MakeDirs(JoinPath(job_dir, jobfiles::kResultsDir)));
  QUANTD_RETURN_IF_ERROR(MakeDirs(JoinPath(job_dir, jobfiles::kHessiansDir)));
  std::vector<std::string> model_files;
  for (const auto& e : fs::directory_iterator(model_dir)) {
    if (!e.is_regular_file()) continue;
    std::string n = e.path().filename().string();
    // ".json" includes tokenizer.json and tokenizer_config.json.
    if (absl::EndsWith(n, ".safetensors") || absl::EndsWith(n, ".json") ||
        n == "tokenizer.bin" || n == "tok512.bin" || n == "tokenizer.model") {
      model_files.push_back(n);
    }
  }
  std::sort(model_files.begin(), model_files.end());
  for (const std::string& n : model_files) {
    // Resolved again right before the copy (a link may have changed since the directory was
    // checked); linking the resolved file also keeps relative symlinks (HF caches) intact.
    QUANTD_ASSIGN_OR_RETURN(std::string src,
                            roots.Resolve(JoinPath(model_dir, n), "model file"));
    QUANTD_RETURN_IF_ERROR(SnapshotFile(src, JoinPath(in_model, n)));
  }
  if (has_calib) {
    QUANTD_RETURN_IF_ERROR(
        WriteFileAtomic(JoinPath(job_dir, jobfiles::kCalibTokens), TokensToU32(calib)));
  }
  if (!eval.empty()) {
    QUANTD_RETURN_IF_ERROR(WriteFileAtomic(JoinPath(job_dir, jobfiles::kEvalTokens), TokensToU32(eval)));
  }

  JobRow row;
  quantd::v1::Job& job = row.job;
  job.set_id(job_id);
  job.set_request_id(req.request_id());
  job.set_name(req.name());
  job.set_state(quantd::v1::JOB_STATE_QUEUED);
  *job.mutable_spec() = req.spec();
  job.set_model_dir(req.model_dir());  // as the client named it (request-id retries compare it)
  job.set_calib_path(req.calib_path());
  job.set_eval_path(req.eval_path());
  const bool sequential = req.spec().sequential();
  // Stage s captures layers [first(s), first(s + 1)): one layer per stage when sequential,
  // otherwise blocks of HessianStageLayers layers, so that a stage's shards and merged Hessians
  // fit the coordinator's budget; each stage's Hessian files are deleted once its matrices are
  // quantized (docs/ARCHITECTURE.md "Hessian data at real size").
  // No calibration data (rtn only): no Hessian tasks, the quantize tasks get no Hessian.
  const int64_t shards = has_calib ? std::min<int64_t>(nseq, std::max(1, max_hessian_shards)) : 0;
  const int block =
      sequential ? 1 : (has_calib ? HessianStageLayers(cfg, shards, stage_bytes) : cfg.num_layers);
  const int stages = (cfg.num_layers + block - 1) / block;
  QUANTD_RETURN_IF_ERROR(CheckFinetuneModel(req, cfg, nseq));
  SetJobPhase(HessianPhase(0), stages, &job, FinetunePhases(req.spec(), cfg));
  if (HasFinetune(req.spec())) job.set_finetune_blocks(cfg.num_layers);
  if (FinetunePhases(req.spec(), cfg) > cfg.num_layers) job.mutable_finetune_e2e();
  job.set_calib_seq_len(seq_len);
  job.set_max_calib_seqs(req.max_calib_seqs());
  job.set_eval_context(req.eval_context());
  job.set_calib_sampling(req.calib_sampling());
  job.set_calib_seed(req.calib_seed());
  if (start_token >= 0) job.set_start_token_id(start_token);
  QUANTD_ASSIGN_OR_RETURN(InputFingerprints fps, FingerprintJobInputs(job_dir));
  job.set_model_fingerprint(fps.model);
  job.set_calib_fingerprint(fps.calib);
  job.set_eval_fingerprint(fps.eval);
  job.set_spec_fingerprint(SpecFingerprint(job.spec()));

  auto model_inputs = [&](quantd::v1::Task* t) {
    for (const std::string& n : model_files) t->add_inputs()->set_name(jobfiles::ModelFile(n));
  };
  int64_t next_id = 0;
  // A task row with its identity filled in; the caller adds kind-specific fields and pushes it.
  auto new_task = [&](int phase, quantd::v1::TaskKind kind) {
    TaskRow t;
    t.task_id = next_id++;
    t.phase = phase;
    t.task.set_job_id(job_id);
    t.task.set_task_id(t.task_id);
    t.task.set_kind(kind);
    return t;
  };
  // An evaluation task of `target` in `phase` over the eval tokens, after the model inputs that
  // `add_model` adds.
  auto add_eval = [&](int phase, std::string_view target, auto add_model) {
    TaskRow t = new_task(phase, quantd::v1::TASK_KIND_EVAL);
    add_model(&t.task);
    t.task.add_inputs()->set_name(std::string(jobfiles::kEvalTokens));
    quantd::v1::EvalTask* e = t.task.mutable_eval();
    e->set_target(std::string(target));
    e->set_context(req.eval_context());
    if (start_token >= 0) e->set_start_token_id(start_token);
    row.tasks.push_back(std::move(t));
  };
  for (int stage = 0; stage < stages; ++stage) {
    const int first = stage * block, last = std::min(cfg.num_layers, first + block);
    for (int64_t s = 0; s < shards; ++s) {
      TaskRow t = new_task(HessianPhase(stage), quantd::v1::TASK_KIND_HESSIAN);
      // The spec carries the token weighting; quarot: the worker rotates the model before
      // capturing (the spec carries the seed); sequential: it captures layer `stage` through the
      // quantized layers before it.
      *t.task.mutable_spec() = req.spec();
      model_inputs(&t.task);
      t.task.add_inputs()->set_name(std::string(jobfiles::kCalibTokens));
      // A block stage's task runs the fp layers before `first` without capturing them.
      quantd::v1::HessianTask* h = t.task.mutable_hessian();
      if (stages > 1) {
        h->set_layer(first);
        h->set_layer_count(last - first);
      }
      if (sequential) {
        for (int l = 0; l < stage; ++l) {
          for (const model::StoredLinear& sl : model::StoredLinears(cfg)) {
            t.task.add_inputs()->set_name(QuantizedInput(model::StoredTensorName(l, sl)));
          }
        }
      }
      h->set_token_begin(nseq * s / shards * seq_len);
      h->set_token_end(nseq * (s + 1) / shards * seq_len);
      h->set_seq_len(seq_len);
      row.tasks.push_back(std::move(t));
    }
    if (stage == 0 && !eval.empty()) {
      // The fp model's evaluation depends on nothing: it runs beside the first phase that has
      // other work (the Hessian capture, or for rtn without calibration the quantize tasks), not
      // alone in a phase of its own while the other workers idle.
      add_eval(has_calib ? HessianPhase(0) : QuantizePhase(0), jobfiles::kEvalTargetFp,
               model_inputs);
    }
    // A bit budget quantizes every matrix at each candidate width (same seed), and the
    // coordinator picks one per matrix after the phase (AllocateJobBits).
    std::vector<int> widths = {req.spec().bits()};
    if (runner::HasBitBudget(req.spec())) {
      widths.assign(std::begin(runner::kBudgetWidths), std::end(runner::kBudgetWidths));
    }
    for (int l = first; l < last; ++l) {
      // One task per stored matrix (Phi-3's fused qkv_proj / gate_up_proj included) and width,
      // with the Hessian of its group's shared input.
      for (const model::StoredLinear& sl : model::StoredLinears(cfg)) {
        for (int bits : widths) {
          TaskRow t = new_task(QuantizePhase(stage), quantd::v1::TASK_KIND_QUANTIZE);
          *t.task.mutable_spec() = widths.size() > 1 ? runner::BudgetWidthSpec(req.spec(), bits)
                                                     : req.spec();
          model_inputs(&t.task);
          if (has_calib) {
            t.task.add_inputs()->set_name(
                MergedHessianBlob(l, std::string(model::GroupName(sl.group))));
          }
          quantd::v1::QuantizeTask* q = t.task.mutable_quantize();
          q->set_layer(l);
          q->set_linear(std::string(sl.name));
          q->set_tensor_name(model::StoredTensorName(l, sl));
          q->set_seed(req.spec().seed() ^ Fnv1a(q->tensor_name()));
          row.tasks.push_back(std::move(t));
        }
      }
    }
  }
  // Fine-tuning: one task per block after the last quantize phase (server/job_finetune.h).
  const int finetune = FinetunePhases(req.spec(), cfg);
  AddFinetuneTasks(req, cfg, stages, seq_len, nseq, new_task, model_inputs, &row.tasks);
  if (!eval.empty()) {
    add_eval(EvaluatePhase(stages, finetune), jobfiles::kEvalTargetQuantized,
             [](quantd::v1::Task* t) {
               t->add_inputs()->set_name(std::string(jobfiles::kStagedConfig));
               t->add_inputs()->set_name(std::string(jobfiles::kStagedModel));
             });
  }
  for (TaskRow& t : row.tasks) t.task.set_memory_bytes(TaskMemoryBytes(cfg, t.task));
  job.set_tasks_total(static_cast<int32_t>(row.tasks.size()));
  return row;
}

uint64_t HessianLayerBytes(const model::LlamaConfig& cfg) {
  uint64_t bytes = 0;
  for (model::LinearGroup g : model::kAllGroups) {
    const uint64_t n = static_cast<uint64_t>(model::GroupInputDim(cfg, g));
    bytes += 8 * (n * (n + 1) / 2) + 8;
  }
  return bytes;
}

int HessianStageLayers(const model::LlamaConfig& cfg, int64_t shards, uint64_t stage_bytes) {
  const uint64_t per_layer = static_cast<uint64_t>(shards + 1) * HessianLayerBytes(cfg);
  const uint64_t L = static_cast<uint64_t>(std::max(cfg.num_layers, 1));
  const uint64_t k = std::clamp<uint64_t>(per_layer == 0 ? L : stage_bytes / per_layer, 1, L);
  // As many stages as the budget needs, their sizes balanced (22 layers in blocks of at most
  // 21: 11 + 11, not 21 + 1): stage s reruns the layers before it, so big first blocks cost.
  const uint64_t stages = (L + k - 1) / k;
  return static_cast<int>((L + stages - 1) / stages);
}

uint64_t TaskMemoryBytes(const model::LlamaConfig& cfg, const quantd::v1::Task& task) {
  const uint64_t d = cfg.hidden_size, ff = cfg.intermediate_size, v = cfg.vocab_size;
  const uint64_t q = static_cast<uint64_t>(cfg.num_heads) * cfg.head_dim;
  const uint64_t kv = static_cast<uint64_t>(cfg.num_kv_heads) * cfg.head_dim;
  const uint64_t layer_params = d * (q + 2 * kv) + q * d + 3 * d * ff + 2 * d;
  const uint64_t params =
      v * d * (cfg.tie_word_embeddings ? 1 : 2) + cfg.num_layers * layer_params + d;
  // The layer-streamed forward (streamed_forward.h) holds one layer's fp32 weights plus, while
  // converting, that layer's mapped checkpoint pages (at most as many bytes again).
  const uint64_t layer = 2 * static_cast<uint64_t>(model::LayerWeightBytes(cfg));
  const uint64_t per_token = static_cast<uint64_t>(model::BatchBytesPerToken(cfg));
  uint64_t bytes = 0;
  switch (task.kind()) {
    case quantd::v1::TASK_KIND_HESSIAN: {
      // Every sequence of the task in one batch; one layer's fp64 accumulators (qkv and gate_up
      // see d inputs, o sees q, down ff) plus one group's xᵀx and fp64 input copy at a time.
      // QuaRot rotates the whole model in memory first.
      const uint64_t rows =
          std::max<int64_t>(task.hessian().token_end() - task.hessian().token_begin(), 1);
      // Writing a group packs its upper triangle (half an n x n fp64 matrix) first.
      const uint64_t hess =
          8 * (2 * d * d + q * q + ff * ff) + 8 * ff * ff + 4 * ff * ff + 8 * rows * ff;
      const uint64_t weights = runner::MethodOf(task.spec()).transforms_model ? 4 * params : layer;
      bytes = weights + hess + per_token * rows;
      // A GPU worker (which advertises its GPU's free memory) runs the forward there.
      bytes = std::max<uint64_t>(bytes, model::DeviceForwardBytes(cfg, rows, true, 0));
      break;
    }
    case quantd::v1::TASK_KIND_FINETUNE: {
      // Two layers (fp and quantized) at a time, the calibration activations entering the
      // block through both models, the targets and the next block's inputs (about 6 copies of
      // tokens x hidden floats), and per sequence in flight its block cache with the
      // attention probabilities (heads x T^2); up to 16 sequences at once.
      const quantd::v1::FinetuneTask& ft = task.finetune();
      const uint64_t rows = std::max<int64_t>(ft.token_end() - ft.token_begin(), 1);
      const uint64_t t = std::max<int32_t>(ft.seq_len(), 1);
      const uint64_t per_seq = 4 * t * (8 * d + 3 * q + 2 * kv + 4 * ff) +
                               4 * static_cast<uint64_t>(cfg.num_heads) * t * t;
      bytes = 2 * layer + 4 * 6 * rows * d + 16 * per_seq;
      break;
    }
    case quantd::v1::TASK_KIND_FINETUNE_E2E: {
      // FinetuneEndToEnd (finetune_e2e.h) holds the whole model three times in fp32 (the fp
      // and the quantized weights, and the tuned copy; while the targets are computed the fp
      // copy instead), the fp model's log-probabilities of every sequence (tokens x vocab
      // floats), the embedded sequences, and per sequence in flight (up to the batch, at most
      // 16) every block's cache plus three tokens x vocab arrays (log-probs, their gradient,
      // the target's probabilities); with the head tuned, per sequence its gradient and the
      // optimizer's two moments plus the best copy (4 x vocab x hidden floats).
      const quantd::v1::FinetuneE2eTask& ft = task.finetune_e2e();
      const quantd::v1::FinetuneSpec& f = task.spec().finetune();
      const uint64_t rows = std::max<int64_t>(ft.token_end() - ft.token_begin(), 1);
      const uint64_t t = std::max<int32_t>(ft.seq_len(), 1);
      const uint64_t inflight = std::clamp<uint64_t>(f.batch_sequences(), 1, 16);
      const uint64_t block_cache = 4 * t * (8 * d + 3 * q + 2 * kv + 4 * ff) +
                                   4 * static_cast<uint64_t>(cfg.num_heads) * t * t;
      const uint64_t per_seq = cfg.num_layers * block_cache + 3 * 4 * t * v;
      const uint64_t head = f.e2e_head() ? 4 * v * d * (inflight + 3) : 0;
      bytes = 3 * 4 * params + 4 * rows * v + 4 * 2 * rows * d + inflight * per_seq + head;
      break;
    }
    case quantd::v1::TASK_KIND_EVAL: {
      // Windows batched up to AutoBatchTokens; the vocabulary in chunks of ≤ 64 MiB of logits
      // plus the chunk's lm_head rows.
      const int context = std::max<int32_t>(task.eval().context(), 1);
      const uint64_t rows = static_cast<uint64_t>(model::AutoBatchTokens(cfg, context));
      const uint64_t chunk = static_cast<uint64_t>(model::DefaultVocabChunk(cfg, rows));
      bytes = layer + per_token * rows + 4 * rows * chunk + 4 * chunk * d + 16 * rows;
      bytes = std::max<uint64_t>(
          bytes, model::DeviceForwardBytes(cfg, rows, false, static_cast<int>(chunk)));
      break;
    }
    case quantd::v1::TASK_KIND_QUANTIZE: {
      const std::string& linear = task.quantize().linear();
      const uint64_t n = linear == "down_proj" ? ff : linear == "o_proj" ? q : d;
      const uint64_t m = linear == "down_proj" ? d
                         : linear == "k_proj" || linear == "v_proj" ? kv
                         : linear == "q_proj" ? q
                         : linear == "qkv_proj" ? q + 2 * kv  // Phi-3's fused matrices
                         : linear == "gate_up_proj" ? 2 * ff : ff;
      // H, its damped copy, the LDL factors and an inverse (fp64, n padded to 256 for the
      // Hadamard), plus weight copies in fp32/fp64. Without a Hessian (rtn without calibration
      // data) only the weight copies.
      const uint64_t np = (n + 255) / 256 * 256;
      bool has_hessian = false;
      for (const auto& in : task.inputs()) has_hessian |= absl::StartsWith(in.name(), jobfiles::kHessiansPrefix);
      bytes = (has_hessian ? 8 * 4 * np * np : 0) + 8 * 4 * m * np;
      break;
    }
    default:
      break;
  }
  return bytes + bytes / 2 + (64u << 20);  // margin + process baseline
}

}  // namespace quantd::server
