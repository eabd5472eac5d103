#include "engine/artifact/export_compressed.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/artifact/artifact.h"
#include "engine/artifact/export_formats.h"
#include "engine/artifact/export_pack.h"
#include "engine/format/checkpoint.h"
#include "engine/format/float16.h"
#include "engine/format/safetensors.h"
#include "engine/quant/packed_matrix.h"
#include "engine/quant/quantize.h"
#include "engine/quant/rtn.h"
#include "nlohmann/json.hpp"

namespace quantd::artifact {

absl::StatusOr<CompressedExportSummary> ExportCompressedTensors(const std::string& native_dir,
                                                                const std::string& out_dir) {
  QUANTD_ASSIGN_OR_RETURN(ExportSource src, OpenExportSource(native_dir, ExportFormat::kCompressedTensors));
  const ExportSpec& spec = src.spec;
  nlohmann::json& config = src.config;
  const model::Checkpoint* ckpt = src.ckpt.get();
  const bool sym = IsSymmetricGrid(spec);
  CompressedExportSummary summary;
  std::vector<model::TensorToWrite> out;
  nlohmann::json ignore = nlohmann::json::array({"lm_head"});
  for (const std::string& name : ckpt->Names()) {
    if (!absl::EndsWith(name, ".qweight")) {
      QUANTD_RETURN_IF_ERROR(AppendF16Tensor(*ckpt, name, &out));
      continue;
    }
    const std::string prefix = name.substr(0, name.size() - 8);
    QUANTD_ASSIGN_OR_RETURN(model::TensorView v, ckpt->Get(name));
    auto c = quant::DecodePacked(v.data);
    if (!c.ok()) return absl::DataLossError(absl::StrCat("tensor ", name, ": ", c.status().message()));
    const int bits = c->bits, m = c->m, n = c->n;
    const int groups = quant::NumGroups(n, c->group_size);
    const int gs = groups == 1 ? n : c->group_size;
    if (!quant::TraitsOf(static_cast<quant::Method>(c->method)).engine_exportable ||
        (bits != 4 && bits != 8) || c->grids.size() != static_cast<size_t>(m) * groups) {
      return absl::FailedPreconditionError(absl::StrCat(
          "tensor ", name, " (", std::string(quant::MethodName(static_cast<quant::Method>(c->method))),
          ", ", bits, " bits) does not fit pack-quantized: rtn/gptq at 4 or 8 bits"));
    }
    if (n % gs != 0) {
      // A ragged last group has no pack-quantized form: dense fp16, listed in "ignore".
      QUANTD_RETURN_IF_ERROR(AppendDenseLinear(*ckpt, name, &out));
      ignore.push_back(prefix);
      ++summary.ignored;
      continue;
    }
    const int words_per_row = (n * bits + 31) / 32;
    std::vector<uint32_t> packed(static_cast<size_t>(m) * words_per_row, 0);
    std::vector<float> scales(static_cast<size_t>(m) * groups);
    std::vector<uint32_t> zeros(static_cast<size_t>(m) * groups);  // unsigned: zp + 2^(b-1)
    std::vector<uint32_t> line(n);
    for (int r = 0; r < m; ++r) {
      for (int col = 0; col < n; ++col) line[col] = c->codes[static_cast<size_t>(r) * n + col];
      PackBits(line.data(), line.size(), bits, &packed[static_cast<size_t>(r) * words_per_row]);
      for (int g = 0; g < groups; ++g) {
        const quant::ScalarGrid& grid = c->grids[static_cast<size_t>(r) * groups + g];
        QUANTD_RETURN_IF_ERROR(CheckIntegerZero(grid, sym, bits, name, r, g,
                                                "a symmetric export needs",
                                                "compressed-tensors needs an integer in"));
        scales[static_cast<size_t>(r) * groups + g] = grid.scale;
        zeros[static_cast<size_t>(r) * groups + g] = static_cast<uint32_t>(grid.zero);
      }
    }
    out.push_back({prefix + ".weight_packed", model::DType::kI32, {m, words_per_row}, WordBytes(packed)});
    QUANTD_ASSIGN_OR_RETURN(std::string sc, F16Bytes(scales.data(), scales.size(), prefix + ".weight_scale"));
    out.push_back({prefix + ".weight_scale", model::DType::kF16, {m, groups}, std::move(sc)});
    const int64_t shape[2] = {m, n};
    out.push_back({prefix + ".weight_shape", model::DType::kI64, {2},
                   std::string(reinterpret_cast<const char*>(shape), sizeof(shape))});
    if (!sym) {
      // weight_zero_point: pack_to_int32(zp, bits, packed_dim=0), i.e. each group's column of m
      // zero points packed like a row, stored [ceil(m·bits/32), groups].
      const int zwords = (m * bits + 31) / 32;
      std::vector<uint32_t> zcol(m), zpacked(static_cast<size_t>(zwords) * groups, 0),
          tmp(zwords);
      for (int g = 0; g < groups; ++g) {
        for (int r = 0; r < m; ++r) zcol[r] = zeros[static_cast<size_t>(r) * groups + g];
        std::fill(tmp.begin(), tmp.end(), 0);
        PackBits(zcol.data(), zcol.size(), bits, tmp.data());
        for (int k = 0; k < zwords; ++k) zpacked[static_cast<size_t>(k) * groups + g] = tmp[k];
      }
      out.push_back({prefix + ".weight_zero_point", model::DType::kI32, {zwords, groups}, WordBytes(zpacked)});
    }
    ++summary.quantized;
  }
  nlohmann::json weights = {{"num_bits", spec.bits}, {"type", "int"}, {"symmetric", sym},
                            {"strategy", spec.group_size > 0 ? "group" : "channel"},
                            {"group_size", spec.group_size > 0 ? nlohmann::json(spec.group_size)
                                                               : nlohmann::json(nullptr)},
                            {"dynamic", false}, {"observer", "minmax"}, {"actorder", nullptr}};
  config["quantization_config"] = {
      {"quant_method", "compressed-tensors"},
      {"format", "pack-quantized"},
      {"quantization_status", "compressed"},
      {"config_groups", {{"group_0", {{"targets", {"Linear"}}, {"weights", weights},
                                      {"input_activations", nullptr},
                                      {"output_activations", nullptr},
                                      {"format", "pack-quantized"}}}}},
      {"ignore", ignore},
      {"kv_cache_scheme", nullptr}};
  QUANTD_RETURN_IF_ERROR(WriteHfExportDir(native_dir, out_dir, out, std::move(config)));
  return summary;
}

}  // namespace quantd::artifact
