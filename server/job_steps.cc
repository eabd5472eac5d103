// PhaseRunner's steps between task phases (server/phase_runner.h): merging Hessian shards,
// assembling the artifact in staging, writing the manifest and publishing. Each step is
// idempotent: after a crash the engine runs it again from the stored task results.
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "server/phase_runner.h"
#include "server/job_budget.h"
#include "server/job_builder.h"
#include "server/job_finetune.h"
#include "engine/artifact/artifact.h"
#include "engine/artifact/export_formats.h"
#include "engine/format/checkpoint.h"
#include "engine/model/config.h"
#include "engine/model/quarot.h"
#include "engine/model/weights.h"
#include "engine/format/safetensors.h"
#include "engine/quant/quantize.h"
#include "engine/spec/quant_spec.h"

namespace quantd::server {
namespace fs = std::filesystem;
using json = nlohmann::json;

absl::Status PhaseRunner::MergeHessians(const quantd::v1::Job& job, int phase,
                                        const std::vector<TaskRow>& tasks) {
  // Sum shard results in task-id order (fixed order: the merged bytes do not depend on which
  // worker finished first), one Hessian at a time: the shards stay memory-mapped and only the
  // key being summed is resident, so the coordinator holds one layer group's matrix, not the
  // model's (docs/ARCHITECTURE.md).
  std::vector<std::pair<int64_t, std::unique_ptr<model::SafetensorsFile>>> shards;
  for (const TaskRow& t : tasks) {
    if (t.task.kind() != quantd::v1::TASK_KIND_HESSIAN || t.phase != phase) continue;
    const std::string path = JoinPath(table_->JobDir(job.id()), HessianShardResult(t.task_id));
    QUANTD_ASSIGN_OR_RETURN(auto file, model::SafetensorsFile::Open(path));
    shards.emplace_back(t.task_id, std::move(file));
  }
  std::set<std::string> keys;  // "L<layer>.<group>"
  for (const auto& [id, file] : shards) {
    for (const std::string& name : file->Names()) {
      if (absl::EndsWith(name, ".upper")) {
        keys.insert(name.substr(0, name.size() - 6));
      } else if (!absl::EndsWith(name, ".tokens")) {
        return absl::DataLossError(absl::StrCat("shard ", id, ": unexpected tensor ", name));
      }
    }
  }
  for (const std::string& key : keys) {
    // key = "L<layer>.<group>"
    const size_t dot = key.find('.');
    if (key.size() < 3 || key[0] != 'L' || dot == std::string::npos) {
      return absl::DataLossError(absl::StrCat("unexpected Hessian tensor ", key));
    }
    const int layer = std::stoi(key.substr(1, dot - 1));
    std::vector<int64_t> shape;
    std::vector<double> sum;
    int64_t tokens = 0;
    for (const auto& [id, file] : shards) {
      // The packed upper triangles (hessian_shard.h) add elementwise like the full sums.
      auto v = file->Get(key + ".upper");
      if (!v.ok()) continue;
      if (v->dtype != model::DType::kF64 || v->shape.size() != 1) {
        return absl::DataLossError(
            absl::StrCat("shard ", id, " tensor ", key, ".upper is not a 1-D F64 tensor"));
      }
      const size_t n = v->data.size() / sizeof(double);
      if (sum.empty()) {
        shape = v->shape;
        sum.assign(n, 0.0);
      } else if (shape != v->shape) {
        return absl::DataLossError(absl::StrCat("shard ", id, " tensor ", key,
                                                ".upper has a different shape than earlier shards"));
      }
      const double* src = reinterpret_cast<const double*>(v->data.data());
      for (size_t i = 0; i < n; ++i) sum[i] += src[i];
      auto t = file->Get(key + ".tokens");
      if (!t.ok() || t->dtype != model::DType::kI64 || t->data.size() != 8) {
        return absl::DataLossError(absl::StrCat("shard ", id, " tensor ", key, ".tokens is not one I64"));
      }
      int64_t k;
      memcpy(&k, t->data.data(), 8);
      tokens += k;
      model::ReleasePages(v->data);
    }
    // Written from the sum itself (no copy): the same bytes as WriteSafetensors'.
    QUANTD_ASSIGN_OR_RETURN(
        auto w, model::SafetensorsWriter::Create(
                    JoinPath(table_->JobDir(job.id()), MergedHessianBlob(layer, key.substr(dot + 1))),
                    {{"upper", model::DType::kF64, shape}, {"tokens", model::DType::kI64, {1}}}));
    QUANTD_RETURN_IF_ERROR(w->Append(
        "upper", std::string_view(reinterpret_cast<const char*>(sum.data()), sum.size() * 8)));
    QUANTD_RETURN_IF_ERROR(
        w->Append("tokens", std::string_view(reinterpret_cast<const char*>(&tokens), 8)));
    QUANTD_RETURN_IF_ERROR(w->Finish());
  }
  return absl::OkStatus();
}

absl::Status PhaseRunner::DropStageHessians(const quantd::v1::Job& job, int phase,
                                             const std::vector<TaskRow>& tasks) {
  std::set<std::string> files;
  for (const TaskRow& t : tasks) {
    if (t.task.kind() == quantd::v1::TASK_KIND_HESSIAN && t.phase == phase - 1) {
      files.insert(HessianShardResult(t.task_id));
    } else if (t.task.kind() == quantd::v1::TASK_KIND_QUANTIZE && t.phase == phase) {
      for (const auto& in : t.task.inputs()) {
        if (absl::StartsWith(in.name(), jobfiles::kHessiansPrefix)) files.insert(in.name());
      }
    }
  }
  for (const std::string& f : files) {
    const std::string path = JoinPath(table_->JobDir(job.id()), f);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return absl::InternalError(absl::StrCat("delete ", path, ": ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

absl::Status PhaseRunner::Assemble(const quantd::v1::Job& job, const std::vector<TaskRow>& tasks) {
  const std::string staging = registry_->StagingDir(job.id());
  RemoveAll(staging).IgnoreError();
  QUANTD_RETURN_IF_ERROR(MakeDirs(staging));
  const std::string src_dir = JoinPath(table_->JobDir(job.id()), jobfiles::kModelDir);
  QUANTD_ASSIGN_OR_RETURN(auto ckpt, model::Checkpoint::Open(src_dir));
  // Weight name -> the quantize task's packed result file (with a bit budget: the task of the
  // width chosen for it).
  std::map<std::string, std::string> packed_files;
  if (runner::HasBitBudget(job.spec())) {
    QUANTD_ASSIGN_OR_RETURN(JobAllocation a, AllocateJobBits(job, tasks));
    for (const auto& [name, choice] : a.by_tensor) {
      packed_files[name] = JoinPath(table_->JobDir(job.id()), QuantizedResult(choice.task_id));
    }
  } else {
    for (const TaskRow& t : tasks) {
      if (t.task.kind() != quantd::v1::TASK_KIND_QUANTIZE) continue;
      packed_files[t.task.quantize().tensor_name()] = JoinPath(table_->JobDir(job.id()), QuantizedResult(t.task_id));
    }
  }
  const bool quarot = runner::MethodOf(job.spec()).transforms_model;
  if (quarot) {
    // The rotated, norm-fused, untied fp model around the packed (rotated-basis) matrices,
    // plus the online down_proj rotation (docs/formats/artifact.md), rotated one layer at a time
    // (one layer, one packed matrix and a block of embedding rows in memory).
    QUANTD_ASSIGN_OR_RETURN(model::LlamaConfig cfg, model::LoadLlamaConfig(src_dir));
    QUANTD_ASSIGN_OR_RETURN(
        auto rotated,
        model::QuarotWeightSource::Create(
            cfg, std::make_unique<model::CheckpointWeightSource>(cfg, *ckpt), job.spec().seed()));
    QUANTD_RETURN_IF_ERROR(artifact::WriteArtifactModelFromSource(
        rotated->config(), *rotated, packed_files, JoinPath(staging, "model.safetensors")));
  } else if (HasFinetune(job.spec())) {
    // The tuned norms and real scales of every block (job_finetune.h).
    QUANTD_RETURN_IF_ERROR(WriteFinetunedModel(table_->JobDir(job.id()), src_dir, packed_files,
                                               tasks, JoinPath(staging, "model.safetensors")));
  } else {
    // Streamed: one packed matrix in memory at a time.
    QUANTD_RETURN_IF_ERROR(artifact::WriteArtifactModelFromFiles(
        *ckpt, packed_files, JoinPath(staging, "model.safetensors")));
  }
  for (const auto& e : fs::directory_iterator(src_dir)) {
    const std::string n = e.path().filename().string();
    if (absl::EndsWith(n, ".safetensors") || n == "model.safetensors.index.json") continue;
    QUANTD_ASSIGN_OR_RETURN(std::string bytes, ReadFile(e.path().string()));
    if (quarot && n == "config.json") {
      json c = json::parse(bytes, nullptr, false);
      if (!c.is_object()) return absl::DataLossError(absl::StrCat(src_dir, "/config.json is not JSON"));
      c["tie_word_embeddings"] = false;  // QuaRot untied lm_head from the rotated embedding
      bytes = c.dump(2) + "\n";
    }
    QUANTD_RETURN_IF_ERROR(WriteFileAtomic(JoinPath(staging, n), bytes));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> PhaseRunner::Publish(const quantd::v1::Job& job,
                                         const std::vector<TaskRow>& tasks) {
  // A crash between the rename and the job update leaves a published version that names this
  // job: adopt it instead of publishing twice.
  if (auto versions = registry_->List(job.name()); versions.ok()) {
    for (const auto& mv : *versions) {
      json m = json::parse(mv.manifest_json(), nullptr, false);
      if (!m.is_discarded() && m.value("job_id", "") == job.id()) return mv.version();
    }
  }
  const std::string staging = registry_->StagingDir(job.id());
  json m;
  m["format_version"] = 1;
  m["name"] = job.name();
  m["job_id"] = job.id();
  m["quantd_version"] = QUANTD_VERSION;
  m["created_unix_ms"] = absl::ToUnixMillis(absl::Now());
  m["method"] = job.spec().method();
  m["bits"] = job.spec().bits();
  m["spec"] = {{"method", job.spec().method()},
               {"bits", job.spec().bits()},
               {"seed", job.spec().seed()},
               {"group_size", job.spec().group_size()},
               {"mse_clip", job.spec().mse_clip()},
               {"act_order", job.spec().act_order()},
               {"sequential", job.spec().sequential()},
               {"greedy_passes", job.spec().greedy_passes()},
               {"codebook_scale", job.spec().codebook_scale()},
               {"damp", job.spec().damp()},
               {"baseline_guard", !job.spec().no_baseline_guard()}};
  if (!job.spec().grid().empty()) m["spec"]["grid"] = job.spec().grid();
  if (job.spec().hessian_scale()) m["spec"]["hessian_scale"] = true;
  // Hessian token weighting (issue 24); jobs stored before it have neither field.
  if (!job.spec().token_weighting().empty()) {
    m["spec"]["token_weighting"] = job.spec().token_weighting();
    if (job.spec().token_weighting() != "none") m["spec"]["sink_weight"] = job.spec().sink_weight();
    if (job.spec().token_weighting() == "sink+massive") {
      m["spec"]["massive_ratio"] = job.spec().massive_ratio();
    }
  }
  {
    // Which engine formats `quantctl fetch --format` can write for this version.
    artifact::ExportSpec es;
    es.method = job.spec().method();
    es.bits = job.spec().bits();
    es.group_size = job.spec().group_size();
    es.act_order = job.spec().act_order();
    auto grid = quant::ParseGridTarget(job.spec().grid());
    if (grid.ok()) es.grid = *grid;
    m["export_formats"] = artifact::ExportFormatsFor(es);
  }
  // A bit budget: the allocation (which width each matrix got, and the averages it reached).
  const bool budget = runner::HasBitBudget(job.spec());
  JobAllocation alloc;
  if (budget) {
    QUANTD_ASSIGN_OR_RETURN(alloc, AllocateJobBits(job, tasks));
    m["spec"]["avg_bits"] = job.spec().avg_bits();
    m["spec"]["budget_weight"] = job.spec().budget_weight();
    json at_bits = json::object();
    for (const auto& [b, count] : alloc.matrices_at_bits) at_bits[absl::StrCat(b)] = count;
    m["bit_budget"] = {{"avg_bits", job.spec().avg_bits()},
                       {"budget_weight", job.spec().budget_weight()},
                       {"widths", runner::kBudgetWidths},
                       {"code_bits_per_weight", alloc.code_bits_per_weight},
                       {"stored_bits_per_weight", alloc.stored_bits_per_weight},
                       {"objective", alloc.objective},
                       {"matrices_at_bits", at_bits}};
    // Mixed widths: the engine formats' exports assume one width for every matrix.
    m["export_formats"] = json::array();
  }
  if (HasFinetune(job.spec())) {
    // Fine-tuned (quantd_format 2): the options and each block's held-out losses; the engine
    // formats' exports have no place for the real scales (only --format hf).
    m["finetune"] = FinetuneManifest(job, tasks);
    m["export_formats"] = json::array();
  }
  if (runner::MethodOf(job.spec()).trellis) {
    m["spec"]["trellis_code"] = job.spec().trellis_code();
    m["spec"]["trellis_l"] = job.spec().trellis_l();
  }
  m["source"] = {{"model_dir", job.model_dir()}, {"fingerprint", job.model_fingerprint()}};
  int64_t calib_tokens = 0;
  json tensors = json::array();
  json perplexity = json::object();
  double loss_sum = 0;
  int loss_n = 0;
  for (const TaskRow& t : tasks) {
    const auto& r = t.result;
    switch (t.task.kind()) {
      case quantd::v1::TASK_KIND_HESSIAN:
        calib_tokens += r.tokens();
        break;
      case quantd::v1::TASK_KIND_QUANTIZE: {
        if (budget) {
          auto it = alloc.by_tensor.find(t.task.quantize().tensor_name());
          if (it == alloc.by_tensor.end() || it->second.task_id != t.task_id) break;  // not kept
        }
        json e = {{"name", t.task.quantize().tensor_name()},
                  {"stored_as", artifact::QuantizedTensorName(t.task.quantize().tensor_name())},
                  {"proxy_loss", r.proxy_loss()},
                  {"packed_bytes", r.result_size()},
                  {"seconds", r.seconds()}};
        if (budget) e["bits"] = t.task.spec().bits();
        if (!r.note().empty()) e["note"] = r.note();
        if (!r.stored_method().empty()) {
          e["stored_method"] = r.stored_method();
          e["rotated_proxy_loss"] = r.rotated_proxy_loss();
        }
        tensors.push_back(e);
        loss_sum += r.proxy_loss();
        ++loss_n;
        break;
      }
      case quantd::v1::TASK_KIND_EVAL:
        perplexity[t.task.eval().target()] = r.ppl();
        perplexity["targets"] = r.targets();
        break;
      default:
        break;
    }
  }
  m["calibration"] = {{"path", job.calib_path()},
                      {"fingerprint", job.calib_fingerprint()},
                      {"tokens", calib_tokens},
                      {"seq_len", job.calib_seq_len()}};
  if (!job.calib_sampling().empty()) {
    m["calibration"]["sampling"] = job.calib_sampling();
    if (job.calib_sampling() == "random") m["calibration"]["seed"] = job.calib_seed();
  }
  // The start token at the head of every calibration sequence and evaluation window (null:
  // none).
  m["calibration"]["start_token"] =
      job.has_start_token_id() ? json(job.start_token_id()) : json(nullptr);
  if (!job.eval_path().empty()) {
    perplexity["eval_path"] = job.eval_path();
    perplexity["context"] = job.eval_context();
    perplexity["start_token"] =
        job.has_start_token_id() ? json(job.start_token_id()) : json(nullptr);
    m["perplexity"] = perplexity;
  }
  m["mean_proxy_loss"] = loss_n ? loss_sum / loss_n : 0.0;
  m["tensors"] = tensors;
  json files = json::array();
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(staging)) {
    // A ".tmp." file is an atomic write that a crash interrupted: never part of the artifact.
    if (e.is_regular_file() && e.path().filename() != "manifest.json" &&
        !absl::StrContains(e.path().filename().string(), ".tmp.")) {
      names.push_back(e.path().filename().string());
    }
  }
  std::sort(names.begin(), names.end());
  for (const std::string& n : names) {
    const std::string p = JoinPath(staging, n);
    QUANTD_ASSIGN_OR_RETURN(std::string digest, Sha256File(p));
    QUANTD_ASSIGN_OR_RETURN(uint64_t size, FileSize(p));
    files.push_back({{"path", n}, {"size", size}, {"sha256", digest}});
  }
  m["files"] = files;
  QUANTD_RETURN_IF_ERROR(WriteFileAtomic(JoinPath(staging, "manifest.json"), m.dump(2) + "\n"));
  return registry_->Publish(job.name(), staging);
}

}  // namespace quantd::server
