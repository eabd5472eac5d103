#include "engine/artifact/export_gptq.h"

#include <cctype>
#include <cmath>
#include <map>
#include <set>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/artifact/artifact.h"
#include "engine/artifact/export_formats.h"
#include "engine/artifact/export_pack.h"
#include "engine/format/checkpoint.h"
#include "engine/format/safetensors.h"
#include "engine/quant/packed_matrix.h"
#include "engine/quant/quantize.h"
#include "engine/quant/rtn.h"
#include "nlohmann/json.hpp"

namespace quantd::artifact {
namespace {

// "model.layers.3.self_attn.q_proj" -> "self_attn.q_proj" (the name optimum matches
// modules_in_block_to_quantize against, by suffix); "" outside a numbered block.
std::string ModuleInBlock(const std::string& prefix) {
  const size_t at = prefix.find("layers.");
  if (at == std::string::npos) return "";
  size_t k = at + 7;
  const size_t digits = k;
  while (k < prefix.size() && std::isdigit(static_cast<unsigned char>(prefix[k]))) ++k;
  if (k == digits || k >= prefix.size() || prefix[k] != '.') return "";
  return prefix.substr(k + 1);
}

absl::StatusOr<quant::PackedContents> Decode(const model::Checkpoint& ckpt, const std::string& name) {
  QUANTD_ASSIGN_OR_RETURN(model::TensorView v, ckpt.Get(name));
  auto c = quant::DecodePacked(v.data);
  if (!c.ok()) return absl::DataLossError(absl::StrCat("tensor ", name, ": ", c.status().message()));
  return c;
}

}  // namespace

bool GptqPackable(int bits, int out_features, int in_features) {
  const int per = bits == 3 ? 32 : 32 / bits;
  return out_features % per == 0 && in_features % per == 0;
}

absl::StatusOr<GptqExportSummary> ExportGptq(const std::string& native_dir,
                                             const std::string& out_dir) {
  QUANTD_ASSIGN_OR_RETURN(ExportSource src, OpenExportSource(native_dir, ExportFormat::kGptq));
  const ExportSpec& spec = src.spec;
  nlohmann::json& config = src.config;
  const model::Checkpoint* ckpt = src.ckpt.get();
  const bool sym = IsSymmetricGrid(spec);

  // Pass 1: check every grid, decide which modules are packed (the same module name in every
  // block: optimum selects modules by name) and whether any zero point is 0, which GPTQ v1's
  // "zero − 1" cannot store.
  std::set<std::string> all_modules, dense_modules, grouped_modules;
  bool zero_zero = false;
  for (const std::string& name : ckpt->Names()) {
    if (!absl::EndsWith(name, ".qweight")) continue;
    const std::string prefix = name.substr(0, name.size() - 8);
    QUANTD_ASSIGN_OR_RETURN(quant::PackedContents c, Decode(*ckpt, name));
    const int groups = quant::NumGroups(c.n, c.group_size);
    if ((c.method != static_cast<uint8_t>(quant::Method::kRtn) &&
         c.method != static_cast<uint8_t>(quant::Method::kGptq)) ||
        c.bits != spec.bits || c.group_size != spec.group_size ||
        c.grids.size() != static_cast<size_t>(c.m) * groups) {
      return absl::FailedPreconditionError(absl::StrCat(
          "tensor ", name, " (", std::string(quant::MethodName(static_cast<quant::Method>(c.method))),
          ", ", c.bits, " bits, group size ", c.group_size,
          ") does not fit this version's GPTQ checkpoint: rtn/gptq with the job's ", spec.bits,
          " bits and group size ", spec.group_size));
    }
    for (size_t i = 0; i < c.grids.size(); ++i) {
      const quant::ScalarGrid& g = c.grids[i];
      QUANTD_RETURN_IF_ERROR(CheckIntegerZero(g, sym, c.bits, name, i / groups,
                                              i % groups, "a symmetric GPTQ checkpoint needs",
                                              "GPTQ stores an integer zero in"));
      zero_zero = zero_zero || g.zero == 0;
    }
    const std::string module = ModuleInBlock(prefix);
    if (module.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "tensor ", name, " is not inside a numbered block (model.layers.N.*), where GPTQ "
          "loaders look for quantized linears"));
    }
    all_modules.insert(module);
    if (!GptqPackable(c.bits, c.m, c.n)) dense_modules.insert(module);
    if (groups > 1) grouped_modules.insert(module);
  }
  // A job's groups wider than every packed linear (stories260K's 64 inputs with groups of 128)
  // leave one group per row: that is per channel, and written so (group_size −1), because
  // gptqmodel's kernels refuse in_features < group_size.
  bool any_grouped = false;
  for (const std::string& mod : grouped_modules) any_grouped = any_grouped || dense_modules.count(mod) == 0;
  // Symmetric grids are v1 (zero − 1 = 2^(bits−1) − 1, what every engine assumes); asymmetric
  // ones v1 too unless a zero of 0 forces v2 (docs/formats/exports.md).
  GptqExportSummary summary;
  summary.checkpoint_format = zero_zero ? "gptq_v2" : "gptq";
  const uint32_t zero_offset = zero_zero ? 0 : 1;

  std::vector<model::TensorToWrite> out;
  for (const std::string& name : ckpt->Names()) {
    if (!absl::EndsWith(name, ".qweight")) {
      QUANTD_RETURN_IF_ERROR(AppendF16Tensor(*ckpt, name, &out));
      continue;
    }
    const std::string prefix = name.substr(0, name.size() - 8);
    if (dense_modules.count(ModuleInBlock(prefix)) > 0) {
      QUANTD_RETURN_IF_ERROR(AppendDenseLinear(*ckpt, name, &out));
      ++summary.dense;
      continue;
    }
    QUANTD_ASSIGN_OR_RETURN(quant::PackedContents c, Decode(*ckpt, name));
    const int bits = c.bits, m = c.m, n = c.n;
    const int groups = quant::NumGroups(n, c.group_size);
    const int gs = groups == 1 ? n : c.group_size;
    // qweight [n·bits/32, m]: column r holds output channel r's codes down the input dimension.
    const int qrows = n * bits / 32;
    std::vector<uint32_t> qweight(static_cast<size_t>(qrows) * m, 0), col(qrows), line(n);
    for (int r = 0; r < m; ++r) {
      for (int j = 0; j < n; ++j) line[j] = c.codes[static_cast<size_t>(r) * n + j];
      std::fill(col.begin(), col.end(), 0);
      PackBits(line.data(), n, bits, col.data());
      for (int k = 0; k < qrows; ++k) qweight[static_cast<size_t>(k) * m + r] = col[k];
    }
    // scales [groups, m] fp16; qzeros [groups, m·bits/32] with zero − zero_offset along m.
    const int zcols = m * bits / 32;
    std::vector<float> scales(static_cast<size_t>(groups) * m);
    std::vector<uint32_t> qzeros(static_cast<size_t>(groups) * zcols, 0), zline(m);
    for (int g = 0; g < groups; ++g) {
      for (int r = 0; r < m; ++r) {
        const quant::ScalarGrid& grid = c.grids[static_cast<size_t>(r) * groups + g];
        scales[static_cast<size_t>(g) * m + r] = grid.scale;
        zline[r] = static_cast<uint32_t>(grid.zero) - zero_offset;
      }
      PackBits(zline.data(), m, bits, &qzeros[static_cast<size_t>(g) * zcols]);
    }
    std::vector<uint32_t> g_idx(n);
    for (int j = 0; j < n; ++j) g_idx[j] = static_cast<uint32_t>(j / gs);
    out.push_back({prefix + ".qweight", model::DType::kI32, {qrows, m}, WordBytes(qweight)});
    out.push_back({prefix + ".qzeros", model::DType::kI32, {groups, zcols}, WordBytes(qzeros)});
    QUANTD_ASSIGN_OR_RETURN(std::string sc, F16Bytes(scales.data(), scales.size(), prefix + ".scales"));
    out.push_back({prefix + ".scales", model::DType::kF16, {groups, m}, std::move(sc)});
    out.push_back({prefix + ".g_idx", model::DType::kI32, {n}, WordBytes(g_idx)});
    ++summary.quantized;
  }
  nlohmann::json q = {{"quant_method", "gptq"},
                      {"bits", spec.bits},
                      {"group_size", spec.group_size > 0 && any_grouped ? spec.group_size : -1},
                      {"desc_act", spec.act_order},
                      {"sym", sym},
                      {"checkpoint_format", summary.checkpoint_format}};
  if (summary.quantized == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no linear of ", native_dir, " fills whole int32 words at ", spec.bits,
        " bits (GPTQ packs ", spec.bits == 3 ? 32 : 32 / spec.bits,
        " values per word along both dimensions)"));
  }
  if (!dense_modules.empty()) {
    nlohmann::json keep = nlohmann::json::array();
    for (const std::string& mod : all_modules) {
      if (dense_modules.count(mod) == 0) keep.push_back(mod);
    }
    q["modules_in_block_to_quantize"] = nlohmann::json::array({keep});
  }
  config["quantization_config"] = q;
  QUANTD_RETURN_IF_ERROR(WriteHfExportDir(native_dir, out_dir, out, std::move(config)));
  return summary;
}

}  // namespace quantd::artifact
