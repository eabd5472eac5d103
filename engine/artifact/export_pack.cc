#include "engine/artifact/export_pack.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/artifact/artifact.h"
#include "engine/format/float16.h"
#include "engine/quant/quantize.h"

namespace quantd::artifact {

absl::StatusOr<ExportSource> OpenExportSource(const std::string& native_dir, ExportFormat format) {
  ExportSource src;
  QUANTD_ASSIGN_OR_RETURN(std::string manifest, ReadFile(JoinPath(native_dir, "manifest.json")));
  QUANTD_ASSIGN_OR_RETURN(src.spec, ExportSpecFromManifest(manifest));
  QUANTD_RETURN_IF_ERROR(CheckExportable(src.spec, format));
  QUANTD_ASSIGN_OR_RETURN(std::string config_text, ReadFile(JoinPath(native_dir, "config.json")));
  src.config = nlohmann::json::parse(config_text, nullptr, false);
  if (!src.config.is_object()) return absl::InvalidArgumentError("config.json is not a JSON object");
  QUANTD_ASSIGN_OR_RETURN(src.ckpt, model::Checkpoint::Open(native_dir));
  for (const char* online : {kOnlineDownTensor, kOnlineOTensor}) {
    if (src.ckpt->Get(online).ok()) {
      return absl::FailedPreconditionError(absl::StrCat(native_dir, " rotates activations online"));
    }
  }
  for (const std::string& n : src.ckpt->Names()) {
    if (IsScaleTensor(n)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "tensor ", n, ": the artifact carries fine-tuned real scales (quantd_format 2), which the ",
          std::string(ExportFormatName(format)),
          " export cannot express; export it as hf (dequantized) instead"));
    }
  }
  return src;
}

absl::Status WriteHfExportDir(const std::string& native_dir, const std::string& out_dir,
                              const std::vector<model::TensorToWrite>& tensors,
                              nlohmann::json config) {
  SetConfigDtype(&config, "float16");
  QUANTD_RETURN_IF_ERROR(MakeDirs(out_dir));
  QUANTD_RETURN_IF_ERROR(model::WriteSafetensors(JoinPath(out_dir, "model.safetensors"), tensors));
  QUANTD_RETURN_IF_ERROR(CopySideFiles(native_dir, out_dir));
  QUANTD_RETURN_IF_ERROR(WriteFileAtomic(JoinPath(out_dir, "config.json"), config.dump(2) + "\n"));
  return SyncDir(out_dir);
}

absl::Status CheckIntegerZero(const quant::ScalarGrid& g, bool sym, int bits,
                              const std::string& name, int64_t row, int64_t group,
                              const char* sym_rule, const char* int_rule) {
  const uint32_t half = 1u << (bits - 1);
  if (g.zero == std::nearbyint(g.zero) && g.zero >= 0 && g.zero <= g.maxq &&
      (!sym || g.zero == static_cast<float>(half))) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(
      absl::StrCat("tensor ", name, " row ", row, " group ", group, " has zero point ", g.zero,
                   sym ? absl::StrCat("; ", sym_rule, " ", half)
                       : absl::StrCat("; ", int_rule, " [0, ", g.maxq, "]")));
}

absl::Status AppendF16Tensor(const model::Checkpoint& ckpt, const std::string& name,
                             std::vector<model::TensorToWrite>* out) {
  QUANTD_ASSIGN_OR_RETURN(model::TensorView v, ckpt.Get(name));
  QUANTD_ASSIGN_OR_RETURN(MatrixF m, ckpt.ReadMatrix(name));
  QUANTD_ASSIGN_OR_RETURN(std::string data, F16Bytes(m.data(), m.size(), name));
  out->push_back({name, model::DType::kF16, v.shape, std::move(data)});
  return absl::OkStatus();
}

absl::Status AppendDenseLinear(const model::Checkpoint& ckpt, const std::string& qweight_name,
                               std::vector<model::TensorToWrite>* out) {
  const std::string weight = qweight_name.substr(0, qweight_name.size() - 8) + ".weight";
  QUANTD_ASSIGN_OR_RETURN(model::TensorView v, ckpt.Get(qweight_name));
  auto w = quant::DequantizeMatrix(v.data);
  if (!w.ok()) {
    return absl::DataLossError(absl::StrCat("tensor ", qweight_name, ": ", w.status().message()));
  }
  QUANTD_ASSIGN_OR_RETURN(std::string data, F16Bytes(w->data(), w->size(), weight));
  out->push_back({weight, model::DType::kF16, {w->rows(), w->cols()}, std::move(data)});
  return absl::OkStatus();
}

absl::StatusOr<std::string> F16Bytes(const float* v, int64_t n, const std::string& name) {
  std::string out(static_cast<size_t>(n) * 2, '\0');
  for (int64_t i = 0; i < n; ++i) {
    if (std::isfinite(v[i]) && std::fabs(v[i]) > 65504.0f) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": value ", v[i],
                                                     " does not fit fp16"));
    }
    const uint16_t h = model::FloatToHalf(v[i]);
    std::memcpy(&out[2 * i], &h, 2);
  }
  return out;
}

void PackBits(const uint32_t* v, size_t count, int bits, uint32_t* words) {
  for (size_t i = 0; i < count; ++i) {
    const uint64_t bit = static_cast<uint64_t>(i) * bits;
    const size_t w = bit / 32;
    const int shift = static_cast<int>(bit % 32);
    words[w] |= v[i] << shift;
    if (shift + bits > 32) words[w + 1] |= v[i] >> (32 - shift);
  }
}

std::string WordBytes(const std::vector<uint32_t>& words) {
  std::string out(words.size() * 4, '\0');
  std::memcpy(out.data(), words.data(), out.size());  // little-endian hosts only (ggml/GGUF too)
  return out;
}

}  // namespace quantd::artifact
