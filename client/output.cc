#include "client/output.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"

namespace quantd::client {
namespace {

namespace v1 = quantd::v1;
using ojson = nlohmann::ordered_json;

ojson ToOrderedJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  opts.always_print_primitive_fields = true;
  opts.always_print_enums_as_ints = false;
  std::string text;
  auto st = google::protobuf::util::MessageToJsonString(message, &text, opts);
  if (!st.ok()) return ojson{{"error", std::string(st.message())}};
  return ojson::parse(text, nullptr, /*allow_exceptions=*/false);
}

std::string Ppl(const std::optional<double>& v) {
  return v ? absl::StrFormat("%.4f", *v) : std::string("-");
}

std::string PplOrDash(double v) { return v > 0 ? absl::StrFormat("%.4f", v) : std::string("-"); }

// PhaseLabel, or "-" when unset.
std::string PhaseText(const v1::Job& j) { return j.phase().empty() ? "-" : PhaseLabel(j); }

}  // namespace

std::string PhaseLabel(const v1::Job& j) {
  if (j.phase().empty()) return "";
  if (j.phase() == "finetune" && j.finetune_blocks() > 0) return FinetunePhaseLabel(j);
  if (j.layer_stage() > 0) {
    // A sequential job's stages are its layers; a staged job's are blocks of layers.
    return absl::StrCat(j.phase(), j.spec().sequential() ? ", layer " : ", stage ", j.layer_stage(),
                        "/", j.layer_stages());
  }
  return j.phase();
}

std::string FinetunePhaseLabel(const v1::Job& j) {
  if (j.has_finetune_e2e() && j.finetune_blocks_done() >= j.finetune_blocks()) {
    // Every block is tuned: the KL stage runs.
    const v1::FinetuneE2eStatus& e = j.finetune_e2e();
    std::string s = absl::StrCat(j.phase(), " e2e");
    if (e.done() || e.heldout_curve_size() > 0) {
      absl::StrAppend(&s, absl::StrFormat(" (held-out KL %.4g -> %.4g, epoch %d/%d)",
                                          e.heldout_before(),
                                          e.done() ? e.heldout_best()
                                                   : e.heldout_curve(e.heldout_curve_size() - 1),
                                          e.epochs_run(), j.spec().finetune().e2e_epochs()));
    } else if (e.heldout_before() > 0) {
      absl::StrAppend(&s, absl::StrFormat(" (held-out KL %.4g)", e.heldout_before()));
    }
    return s;
  }
  std::string s = absl::StrCat(j.phase(), ", block ",
                               std::min(j.finetune_blocks_done() + 1, j.finetune_blocks()), "/",
                               j.finetune_blocks());
  if (j.finetune_losses_size() > 0) {
    const v1::FinetuneBlockStatus& b = j.finetune_losses(j.finetune_losses_size() - 1);
    absl::StrAppend(&s, absl::StrFormat(" (block %d held-out %.4g -> %.4g)", b.layer(),
                                        b.heldout_before(), b.heldout_best()));
  }
  return s;
}

std::string ToJson(const google::protobuf::Message& message) {
  return ToOrderedJson(message).dump(2);
}

std::string ToJsonArrayOf(const std::vector<const google::protobuf::Message*>& messages) {
  ojson arr = ojson::array();
  for (const auto* m : messages) arr.push_back(ToOrderedJson(*m));
  return arr.dump(2);
}

std::string StateName(v1::JobState state) {
  std::string name = v1::JobState_Name(state);
  if (name.empty()) return absl::StrCat("STATE_", static_cast<int>(state));
  return std::string(absl::StripPrefix(name, "JOB_STATE_"));
}

ManifestSummary SummarizeManifest(const std::string& manifest_json) {
  ManifestSummary s;
  nlohmann::json j = nlohmann::json::parse(manifest_json, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return s;
  if (auto it = j.find("method"); it != j.end() && it->is_string()) s.method = it->get<std::string>();
  if (auto it = j.find("bits"); it != j.end() && it->is_number_integer()) s.bits = it->get<int>();
  if (auto b = j.find("bit_budget"); b != j.end() && b->is_object()) {
    if (auto it = b->find("code_bits_per_weight"); it != b->end() && it->is_number()) {
      s.avg_bits = it->get<double>();
    }
  }
  if (auto e = j.find("export_formats"); e != j.end() && e->is_array()) {
    for (const auto& f : *e) {
      if (f.is_string()) s.export_formats.push_back(f.get<std::string>());
    }
  }
  if (auto p = j.find("perplexity"); p != j.end() && p->is_object()) {
    if (auto it = p->find("fp"); it != p->end() && it->is_number()) s.fp_ppl = it->get<double>();
    if (auto it = p->find("quantized"); it != p->end() && it->is_number()) {
      s.quant_ppl = it->get<double>();
    }
  }
  return s;
}

std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(header.size(), 0);
  auto measure = [&width](const std::vector<std::string>& row) {
    for (size_t i = 0; i < row.size() && i < width.size(); ++i) {
      width[i] = std::max(width[i], row[i].size());
    }
  };
  measure(header);
  for (const auto& r : rows) measure(r);
  std::string out;
  auto emit = [&](const std::vector<std::string>& row) {
    std::string line;
    for (size_t i = 0; i < width.size(); ++i) {
      const std::string cell = i < row.size() ? row[i] : "";
      if (i + 1 < width.size()) {
        absl::StrAppend(&line, cell, std::string(width[i] - cell.size() + 2, ' '));
      } else {
        absl::StrAppend(&line, cell);
      }
    }
    absl::StrAppend(&out, line, "\n");
  };
  emit(header);
  for (const auto& r : rows) emit(r);
  return out;
}

namespace {

// "2", or "avg 2.5" for a bit budget.
std::string SpecBits(const v1::QuantSpec& s) {
  return s.avg_bits() > 0 ? absl::StrCat("avg ", s.avg_bits()) : absl::StrCat(s.bits());
}

}  // namespace

std::string JobsTable(const std::vector<v1::Job>& jobs) {
  std::vector<std::vector<std::string>> rows;
  for (const v1::Job& j : jobs) {
    rows.push_back({j.id(), StateName(j.state()), j.name(),
                    absl::StrCat(j.spec().method(), "/", SpecBits(j.spec())),
                    PhaseText(j),
                    absl::StrFormat("%.0f%%", 100.0 * j.progress()),
                    j.version() > 0 ? absl::StrCat(j.version()) : "-", PplOrDash(j.fp_ppl()),
                    PplOrDash(j.quant_ppl())});
  }
  return FormatTable(
      {"ID", "STATE", "NAME", "METHOD/BITS", "PHASE", "PROGRESS", "VERSION", "FP_PPL", "Q_PPL"},
      rows);
}

std::string ModelsTable(const std::vector<v1::ModelVersion>& models) {
  std::vector<std::vector<std::string>> rows;
  for (const v1::ModelVersion& m : models) {
    ManifestSummary s = SummarizeManifest(m.manifest_json());
    rows.push_back({m.name(), absl::StrCat(m.version()), s.method.value_or("-"),
                    s.avg_bits ? absl::StrFormat("%.2f avg", *s.avg_bits)
                    : s.bits   ? absl::StrCat(*s.bits)
                               : "-",
                    Ppl(s.fp_ppl), Ppl(s.quant_ppl),
                    s.export_formats.empty() ? "-" : absl::StrJoin(s.export_formats, ",")});
  }
  return FormatTable({"NAME", "VERSION", "METHOD", "BITS", "FP_PPL", "Q_PPL", "EXPORTS"}, rows);
}

std::string DescribeJob(const v1::Job& j) {
  std::string out;
  auto kv = [&out](absl::string_view k, const std::string& v) {
    absl::StrAppend(&out, absl::StrFormat("%-12s %s\n", absl::StrCat(k, ":"), v));
  };
  kv("id", j.id());
  kv("name", j.name());
  kv("state", StateName(j.state()));
  kv("method", absl::StrCat(j.spec().method(), ", ", SpecBits(j.spec()), " bits",
                            j.spec().sequential() ? ", sequential" : ""));
  kv("phase", PhaseText(j));
  kv("progress", absl::StrFormat("%d/%d tasks, %.1f%%", j.tasks_done(), j.tasks_total(),
                                 100.0 * j.progress()));
  if (j.version() > 0) kv("version", absl::StrCat(j.version()));
  if (j.fp_ppl() > 0) kv("fp_ppl", absl::StrFormat("%.4f", j.fp_ppl()));
  if (j.quant_ppl() > 0) kv("quant_ppl", absl::StrFormat("%.4f", j.quant_ppl()));
  if (j.finetune_blocks() > 0) {
    kv("finetune", absl::StrFormat("%d/%d blocks tuned (epochs %d, lr %g)", j.finetune_blocks_done(),
                                   j.finetune_blocks(), j.spec().finetune().epochs(),
                                   j.spec().finetune().learning_rate()));
    for (const v1::FinetuneBlockStatus& b : j.finetune_losses()) {
      kv(absl::StrCat("  block ", b.layer()),
         absl::StrFormat("held-out %.5f -> %.5f, %d epochs, %.1f s", b.heldout_before(),
                         b.heldout_best(), b.epochs_run(), b.seconds()));
    }
  }
  if (j.has_finetune_e2e()) {
    const v1::FinetuneE2eStatus& e = j.finetune_e2e();
    std::string v = absl::StrFormat("KL stage (epochs %d, lr %g%s): ", j.spec().finetune().e2e_epochs(),
                                    j.spec().finetune().e2e_learning_rate(),
                                    j.spec().finetune().e2e_head() ? ", head" : "");
    if (e.done()) {
      absl::StrAppend(&v, absl::StrFormat("held-out KL %.5f -> %.5f, %d epochs, %.1f s",
                                          e.heldout_before(), e.heldout_best(), e.epochs_run(),
                                          e.seconds()));
    } else if (e.heldout_curve_size() > 0) {
      absl::StrAppend(&v, absl::StrFormat("running, held-out KL %.5f -> %.5f after %d epochs",
                                          e.heldout_before(),
                                          e.heldout_curve(e.heldout_curve_size() - 1),
                                          e.epochs_run()));
    } else {
      absl::StrAppend(&v, "pending");
    }
    kv("finetune e2e", v);
  }
  if (!j.error().empty()) kv("error", j.error());
  kv("model_dir", j.model_dir());
  kv("calib_path", j.calib_path());
  if (!j.eval_path().empty()) kv("eval_path", j.eval_path());
  kv("request_id", j.request_id());
  return out;
}

std::string FinalJobLine(const v1::Job& j) {
  std::string line = absl::StrCat("job ", j.id(), " ", StateName(j.state()));
  if (j.state() == v1::JOB_STATE_SUCCEEDED) {
    absl::StrAppend(&line, ": ", j.name(), " version ", j.version());
    if (j.fp_ppl() > 0 || j.quant_ppl() > 0) {
      absl::StrAppend(&line, absl::StrFormat(", perplexity fp %.4f -> quantized %.4f", j.fp_ppl(),
                                             j.quant_ppl()));
    } else {
      absl::StrAppend(&line, ", no perplexity evaluation");
    }
  } else if (!j.error().empty()) {
    absl::StrAppend(&line, ": ", j.error());
  }
  return line;
}

}  // namespace quantd::client
