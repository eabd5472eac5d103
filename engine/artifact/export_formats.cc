#include "engine/artifact/export_formats.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "engine/quant/method_table.h"
#include "nlohmann/json.hpp"

namespace quantd::artifact {
namespace {

bool ScalarMethod(const ExportSpec& s) {
  auto t = quant::FindMethod(s.method);
  return t.ok() && (*t)->engine_exportable;
}

// Grids whose zero point is fractional (ŵ = d·q + m): only GGUF's _1 types hold them.
bool MinOffsetGrid(const ExportSpec& s) {
  return s.grid == quant::GridTarget::kQ4_1 || s.grid == quant::GridTarget::kQ5_1;
}
bool SymmetricGrid(const ExportSpec& s) {
  return s.grid == quant::GridTarget::kQ4_0 || s.grid == quant::GridTarget::kQ5_0 ||
         s.grid == quant::GridTarget::kQ8_0 || s.grid == quant::GridTarget::kGptqSym;
}

// Empty when exportable, else the reason.
std::string WhyNot(const ExportSpec& s, ExportFormat f) {
  if (!ScalarMethod(s)) {
    if (auto t = quant::FindMethod(s.method); t.ok() && (*t)->transforms_model) {
      return "quarot rotates activations online (Hadamards inside the network), which no engine "
             "format expresses";
    }
    return absl::StrCat("method ", s.method,
                        " stores rotated vector/trellis/lattice codes that no engine format reads; "
                        "only rtn and gptq map onto engine grids");
  }
  switch (f) {
    case ExportFormat::kGptq:
      if (MinOffsetGrid(s)) {
        return absl::StrCat("grid ", std::string(quant::GridTargetName(s.grid)),
                            " has fractional zero points (w = d*q + m); GPTQ stores integer zeros");
      }
      if (s.bits != 2 && s.bits != 3 && s.bits != 4 && s.bits != 8) {
        return absl::StrCat("GPTQ checkpoints hold 2, 3, 4 or 8 bits, not ", s.bits);
      }
      return "";
    case ExportFormat::kCompressedTensors:
      if (MinOffsetGrid(s)) {
        return absl::StrCat("grid ", std::string(quant::GridTargetName(s.grid)),
                            " has fractional zero points; compressed-tensors stores integer zeros");
      }
      if (s.bits != 4 && s.bits != 8) {
        return absl::StrCat("compressed-tensors pack-quantized is exported for 4 and 8 bits only "
                            "(other widths are packed differently across its versions), not ",
                            s.bits);
      }
      return "";
    case ExportFormat::kGguf: {
      auto t = GgufTypeFor(s);
      return t.ok() ? "" : std::string(t.status().message());
    }
  }
  return "unknown format";
}

}  // namespace

bool IsSymmetricGrid(const ExportSpec& spec) { return SymmetricGrid(spec); }

bool ExportImplemented(ExportFormat) { return true; }

absl::StatusOr<ExportFormat> ParseExportFormat(std::string_view name) {
  if (name == "gptq") return ExportFormat::kGptq;
  if (name == "compressed-tensors") return ExportFormat::kCompressedTensors;
  if (name == "gguf") return ExportFormat::kGguf;
  return absl::InvalidArgumentError(absl::StrCat("unknown export format \"", std::string(name),
                                                 "\" (want gptq, compressed-tensors or gguf)"));
}

std::string_view ExportFormatName(ExportFormat f) {
  switch (f) {
    case ExportFormat::kGptq: return "gptq";
    case ExportFormat::kCompressedTensors: return "compressed-tensors";
    case ExportFormat::kGguf: return "gguf";
  }
  return "?";
}

absl::StatusOr<ExportSpec> ExportSpecFromManifest(std::string_view manifest_json) {
  const nlohmann::json m = nlohmann::json::parse(manifest_json, nullptr, false);
  if (!m.is_object() || !m.contains("spec") || !m["spec"].is_object()) {
    return absl::DataLossError("manifest.json has no \"spec\" object");
  }
  const nlohmann::json& s = m["spec"];
  if (!s.contains("method") || !s["method"].is_string() || !s.contains("bits") ||
      !s["bits"].is_number_integer()) {
    return absl::DataLossError("manifest.json spec lacks method or bits");
  }
  if (s.contains("avg_bits")) {
    return absl::FailedPreconditionError(
        "this version has a bit budget (spec.avg_bits): its matrices have different widths, and "
        "the engine formats' exports assume one width for every matrix");
  }
  ExportSpec e;
  e.method = s["method"].get<std::string>();
  e.bits = s["bits"].get<int>();
  if (s.contains("group_size") && s["group_size"].is_number_integer()) e.group_size = s["group_size"].get<int>();
  if (s.contains("act_order") && s["act_order"].is_boolean()) e.act_order = s["act_order"].get<bool>();
  if (s.contains("grid") && s["grid"].is_string()) {
    auto g = quant::ParseGridTarget(s["grid"].get<std::string>());
    if (!g.ok()) return absl::DataLossError(absl::StrCat("manifest.json spec: ", g.status().message()));
    e.grid = *g;
  }
  return e;
}

absl::StatusOr<model::GgmlType> GgufTypeFor(const ExportSpec& s) {
  auto refuse = [](std::string why) { return absl::FailedPreconditionError(std::move(why)); };
  if (!ScalarMethod(s)) return refuse(WhyNot(s, ExportFormat::kGptq));
  if (s.group_size != 32) {
    return refuse(absl::StrCat("GGUF's Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 blocks hold 32 weights with one "
                               "scale; this version has ",
                               s.group_size == 0 ? std::string("one grid per output channel")
                                                 : absl::StrCat("groups of ", s.group_size),
                               " (submit with --grid q4_0|q4_1|q5_0|q5_1|q8_0)"));
  }
  switch (s.bits) {
    case 4:
      return SymmetricGrid(s) ? model::GgmlType::kQ4_0 : model::GgmlType::kQ4_1;
    case 5:
      if (s.grid == quant::GridTarget::kQ5_0) return model::GgmlType::kQ5_0;
      if (s.grid == quant::GridTarget::kQ5_1) return model::GgmlType::kQ5_1;
      break;
    case 8:
      if (SymmetricGrid(s)) return model::GgmlType::kQ8_0;
      return refuse("GGUF's 8-bit block type Q8_0 is symmetric; this version has an asymmetric "
                    "8-bit grid (submit with --grid q8_0)");
    default:
      break;
  }
  return refuse(absl::StrCat("GGUF has no 32-weight block type for a ", s.bits, "-bit ",
                             SymmetricGrid(s) ? "symmetric" : "asymmetric",
                             " grid (its 2/3-bit types are k-quant super-blocks)"));
}

absl::Status CheckExportable(const ExportSpec& spec, ExportFormat f) {
  const std::string why = WhyNot(spec, f);
  if (why.empty()) return absl::OkStatus();
  std::vector<std::string> can = {"native", "hf"};
  for (const std::string& n : ExportFormatsFor(spec)) can.push_back(n);
  return absl::FailedPreconditionError(absl::StrCat(
      "cannot export a ", spec.method, " ", spec.bits, "-bit version to ", std::string(ExportFormatName(f)),
      ": ", why, "; this version can be fetched as: ", absl::StrJoin(can, ", ")));
}

std::vector<std::string> ExportFormatsFor(const ExportSpec& spec) {
  std::vector<std::string> out;
  for (ExportFormat f : {ExportFormat::kGptq, ExportFormat::kCompressedTensors}) {
    if (ExportImplemented(f) && WhyNot(spec, f).empty()) out.emplace_back(ExportFormatName(f));
  }
  if (auto t = GgufTypeFor(spec); t.ok()) {
    out.push_back(absl::StrCat("gguf-", absl::AsciiStrToLower(std::string(model::GgmlTypeName(static_cast<uint32_t>(*t))))));
  }
  return out;
}

}  // namespace quantd::artifact
