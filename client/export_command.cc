#include "client/export_command.h"

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/artifact/artifact.h"
#include "engine/artifact/export_compressed.h"
#include "engine/artifact/export_gptq.h"
#include "engine/artifact/export_gguf.h"

namespace quantd::client {

absl::StatusOr<std::string> WriteEngineExport(const std::string& native_dir,
                                              const std::string& out_dir,
                                              artifact::ExportFormat format) {
  QUANTD_ASSIGN_OR_RETURN(std::string manifest, ReadFile(JoinPath(native_dir, "manifest.json")));
  QUANTD_ASSIGN_OR_RETURN(artifact::ExportSpec spec, artifact::ExportSpecFromManifest(manifest));
  QUANTD_RETURN_IF_ERROR(artifact::CheckExportable(spec, format));
  if (!artifact::ExportImplemented(format)) {
    return absl::UnimplementedError(absl::StrCat(
        "--format ", std::string(artifact::ExportFormatName(format)),
        " is not implemented yet"));
  }
  QUANTD_RETURN_IF_ERROR(MakeDirs(out_dir));
  if (format == artifact::ExportFormat::kCompressedTensors) {
    QUANTD_ASSIGN_OR_RETURN(artifact::CompressedExportSummary c,
                            artifact::ExportCompressedTensors(native_dir, out_dir));
    std::string line = absl::StrCat("wrote compressed-tensors pack-quantized checkpoint (",
                                    c.quantized, " packed linears");
    if (c.ignored > 0) absl::StrAppend(&line, ", ", c.ignored, " dense: ragged last group");
    absl::StrAppend(&line, ") to ", out_dir);
    return line;
  }
  if (format == artifact::ExportFormat::kGptq) {
    QUANTD_ASSIGN_OR_RETURN(artifact::GptqExportSummary g, artifact::ExportGptq(native_dir, out_dir));
    std::string line = absl::StrCat("wrote GPTQ checkpoint (checkpoint_format ", g.checkpoint_format,
                                    ", ", g.quantized, " packed linears");
    if (g.dense > 0) absl::StrAppend(&line, ", ", g.dense, " fp16: a dimension does not fill int32 words");
    absl::StrAppend(&line, ") to ", out_dir);
    return line;
  }
  const std::string file = JoinPath(out_dir, "model.gguf");
  QUANTD_ASSIGN_OR_RETURN(artifact::GgufExportSummary g, artifact::ExportGguf(native_dir, file));
  QUANTD_RETURN_IF_ERROR(WriteFileAtomic(JoinPath(out_dir, "quantd_manifest.json"), manifest));
  std::string line = absl::StrCat("wrote GGUF ",
                                  std::string(model::GgmlTypeName(static_cast<uint32_t>(g.type))),
                                  " (", g.quantized, " quantized tensors");
  if (g.fallback_f32 > 0) absl::StrAppend(&line, ", ", g.fallback_f32, " F32: rows not a multiple of 32");
  absl::StrAppend(&line, ", ", g.bytes, " bytes) to ", file);
  return line;
}

int RunExportCommand(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  constexpr const char* kUsage =
      "usage: quantctl export NATIVE_DIR -o DIR --format gguf|gptq|compressed-tensors|hf "
      "[--dtype f16|bf16|f32 (hf)]\n";
  std::string in, dir, format, dtype = "f16";
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if ((a == "-o" || a == "--out") && i + 1 < args.size()) {
      dir = args[++i];
    } else if (a == "--format" && i + 1 < args.size()) {
      format = args[++i];
    } else if (a == "--dtype" && i + 1 < args.size()) {
      dtype = args[++i];
    } else if (!a.empty() && a[0] != '-' && in.empty()) {
      in = a;
    } else {
      err << "quantctl: export: unexpected argument '" << a << "'\n" << kUsage;
      return 2;
    }
  }
  if (in.empty() || dir.empty() || format.empty()) {
    err << kUsage;
    return 2;
  }
  if (format == "hf") {
    if (dtype != "f16" && dtype != "bf16" && dtype != "f32") {
      err << "quantctl: --dtype must be f16, bf16 or f32, got '" << dtype << "'\n";
      return 2;
    }
    const artifact::HfDType d = dtype == "bf16"  ? artifact::HfDType::kBF16
                                : dtype == "f32" ? artifact::HfDType::kF32
                                                 : artifact::HfDType::kF16;
    if (absl::Status st = artifact::ExportHfModel(in, dir, d); !st.ok()) {
      err << "quantctl: " << st.ToString() << "\n";
      return 1;
    }
    out << "wrote Hugging Face checkpoint (" << dtype << ") to " << dir << "\n";
    return 0;
  }
  auto f = artifact::ParseExportFormat(format);
  if (!f.ok()) {
    err << "quantctl: " << f.status().message() << "\n" << kUsage;
    return 2;
  }
  auto line = WriteEngineExport(in, dir, *f);
  if (!line.ok()) {
    err << "quantctl: " << line.status().ToString() << "\n";
    return 1;
  }
  out << *line << "\n";
  return 0;
}

}  // namespace quantd::client
