#include "engine/artifact/artifact.h"

#include <cmath>
#include <cstring>
#include <algorithm>
#include <filesystem>
#include <functional>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/format/float16.h"
#include "engine/format/safetensors.h"
#include "engine/quant/packed_matrix.h"
#include "engine/quant/quantize.h"

namespace quantd::artifact {

bool IsScaleTensor(std::string_view name) {
  const absl::string_view n(name.data(), name.size());
  return absl::EndsWith(n, std::string(".qweight") + model::kOutScaleSuffix) ||
         absl::EndsWith(n, std::string(".qweight") + model::kInScaleSuffix);
}

std::string QuantizedTensorName(std::string_view weight_name) {
  std::string name(weight_name);
  if (absl::EndsWith(name, ".weight")) name.resize(name.size() - 7);
  return name + ".qweight";
}

namespace {

// Where the .qweight bytes come from: the byte size of each packed weight (by weight name) and
// a reader of its bytes, so that a writer holds one packed matrix at a time.
struct PackedBytes {
  std::map<std::string, uint64_t> sizes;
  std::function<absl::StatusOr<std::string>(const std::string& weight_name)> read;
};

// Packed matrices already in memory (weight name -> bytes); `packed` must outlive the result.
PackedBytes PackedInMemory(const std::map<std::string, std::string>& packed) {
  PackedBytes p;
  for (const auto& [name, bytes] : packed) p.sizes[name] = bytes.size();
  p.read = [&packed](const std::string& name) -> absl::StatusOr<std::string> {
    return packed.at(name);
  };
  return p;
}

// Packed matrices in files (weight name -> path), read when written; DATA_LOSS when a file
// changes size in between. `packed_files` must outlive the result.
absl::StatusOr<PackedBytes> PackedInFiles(const std::map<std::string, std::string>& packed_files) {
  PackedBytes p;
  for (const auto& [name, path] : packed_files) {
    QUANTD_ASSIGN_OR_RETURN(p.sizes[name], FileSize(path));
  }
  p.read = [&packed_files, sizes = p.sizes](const std::string& name) -> absl::StatusOr<std::string> {
    const std::string& path = packed_files.at(name);
    QUANTD_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
    if (bytes.size() != sizes.at(name)) {
      return absl::DataLossError(absl::StrCat(path, " changed size while assembling"));
    }
    return bytes;
  };
  return p;
}

absl::Status AllPackedUsed(size_t replaced, const PackedBytes& packed) {
  if (replaced == packed.sizes.size()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(packed.sizes.size() - replaced, " quantized tensors have no source tensor"));
}

// Every tensor of `src` in name order, those in `packed` replaced by their .qweight, streamed:
// one packed matrix in memory at a time, the source's bytes copied from the mapping. The bytes
// equal WriteSafetensors' of the same tensors.
absl::Status WriteArtifactStreamed(const model::Checkpoint& src, const PackedBytes& packed,
                                   const std::string& out_path) {
  std::vector<model::TensorDecl> decls;
  std::map<std::string, std::string> source_of;  // output name -> source weight name
  size_t replaced = 0;
  for (const std::string& name : src.Names()) {
    auto it = packed.sizes.find(name);
    if (it != packed.sizes.end()) {
      const std::string q = QuantizedTensorName(name);
      decls.push_back({q, model::DType::kU8, {static_cast<int64_t>(it->second)}});
      source_of[q] = name;
      ++replaced;
    } else {
      QUANTD_ASSIGN_OR_RETURN(model::TensorView v, src.Get(name));
      decls.push_back({name, v.dtype, v.shape});
      source_of[name] = name;
    }
  }
  QUANTD_RETURN_IF_ERROR(AllPackedUsed(replaced, packed));
  std::sort(decls.begin(), decls.end(),
            [](const model::TensorDecl& a, const model::TensorDecl& b) { return a.name < b.name; });
  QUANTD_ASSIGN_OR_RETURN(auto w, model::SafetensorsWriter::Create(out_path, decls,
                                                                   {{"quantd_format", "1"}}));
  for (const model::TensorDecl& d : decls) {
    const std::string& name = source_of[d.name];
    if (d.name != name) {
      QUANTD_ASSIGN_OR_RETURN(std::string bytes, packed.read(name));
      QUANTD_RETURN_IF_ERROR(w->Append(d.name, bytes));
    } else {
      QUANTD_ASSIGN_OR_RETURN(model::TensorView v, src.Get(name));
      QUANTD_RETURN_IF_ERROR(w->Append(d.name, v.data));
      src.ReleasePages(name);
    }
  }
  return w->Finish();
}

// The one enumeration of a model's artifact tensors (WriteArtifactModelFromSource and
// WriteArtifactFromWeights): every tensor of `src` under its HF name in F32, lm_head.weight
// when cfg is untied, the linears in `packed` as .qweight, the online rotations `src` has, and
// each scaled weight's two F32 scale tensors. Each tensor is declared with a producer of its
// bytes; the writer emits them sorted by name, which visits each layer's tensors contiguously,
// so one Layer() call serves all of a layer's tensors.
absl::Status WriteSourceArtifact(const model::LlamaConfig& cfg, model::WeightSource& src,
                                 const PackedBytes& packed,
                                 const std::map<std::string, RealScales>& scales,
                                 const std::string& out_path) {
  using Bytes = std::function<absl::Status(const std::string& name, model::SafetensorsWriter*)>;
  std::vector<std::pair<model::TensorDecl, Bytes>> tensors;
  size_t replaced = 0;
  auto as_bytes = [](const float* v, int64_t n) {
    return std::string_view(reinterpret_cast<const char*>(v), static_cast<size_t>(n) * 4);
  };
  // Rows [0, rows) of an embedding-shaped matrix in blocks of about 64 MiB.
  const int64_t vocab = cfg.vocab_size, hidden = cfg.hidden_size;
  const int64_t block = std::max<int64_t>(1, (int64_t{64} << 20) / (4 * std::max<int64_t>(hidden, 1)));
  auto rows_in_blocks = [&, vocab, block](bool head) -> Bytes {
    return [&src, vocab, block, head](const std::string& name, model::SafetensorsWriter* w) {
      MatrixF m;
      for (int64_t b = 0; b < vocab; b += block) {
        const int n = static_cast<int>(std::min(block, vocab - b));
        if (head) {
          QUANTD_RETURN_IF_ERROR(src.Head(static_cast<int>(b), n, &m));
        } else {
          std::vector<int32_t> ids(n);
          for (int i = 0; i < n; ++i) ids[i] = static_cast<int32_t>(b + i);
          QUANTD_RETURN_IF_ERROR(src.Embed(ids, &m));
        }
        QUANTD_RETURN_IF_ERROR(w->AppendPart(name, std::string_view(
                                                      reinterpret_cast<const char*>(m.data()),
                                                      static_cast<size_t>(m.size()) * 4)));
      }
      return absl::OkStatus();
    };
  };
  tensors.push_back({{"model.embed_tokens.weight", model::DType::kF32, {vocab, hidden}},
                     rows_in_blocks(false)});
  tensors.push_back({{"model.norm.weight", model::DType::kF32, {hidden}},
                     [&](const std::string& name, model::SafetensorsWriter* w) -> absl::Status {
                       QUANTD_ASSIGN_OR_RETURN(VectorF v, src.FinalNorm());
                       return w->Append(name, as_bytes(v.data(), v.size()));
                     }});
  if (!cfg.tie_word_embeddings) {
    tensors.push_back({{"lm_head.weight", model::DType::kF32, {vocab, hidden}}, rows_in_blocks(true)});
  }
  int current = -1;
  const model::LayerWeights* lw = nullptr;
  auto layer = [&](int l) -> absl::Status {
    if (l == current) return absl::OkStatus();
    QUANTD_ASSIGN_OR_RETURN(lw, src.Layer(l));
    current = l;
    return absl::OkStatus();
  };
  for (int l = 0; l < cfg.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    for (const model::LayerVectorSpec& v : model::LayerVectors(cfg)) {
      tensors.push_back({{p + std::string(v.suffix), model::DType::kF32, {v.size}},
                         [&, l, member = v.member](const std::string& name,
                                                   model::SafetensorsWriter* w) -> absl::Status {
                           QUANTD_RETURN_IF_ERROR(layer(l));
                           const VectorF& x = lw->*member;
                           return w->Append(name, as_bytes(x.data(), x.size()));
                         }});
    }
    for (const model::StoredLinear& sl : model::StoredLinears(cfg)) {
      const std::string wname = model::StoredTensorName(l, sl);
      auto it = packed.sizes.find(wname);
      if (it != packed.sizes.end()) {
        ++replaced;
        tensors.push_back({{QuantizedTensorName(wname), model::DType::kU8,
                            {static_cast<int64_t>(it->second)}},
                           [&packed, wname](const std::string& name,
                                            model::SafetensorsWriter* w) -> absl::Status {
                             QUANTD_ASSIGN_OR_RETURN(std::string bytes, packed.read(wname));
                             return w->Append(name, bytes);
                           }});
        continue;
      }
      const auto [rows, cols] = model::StoredShape(cfg, sl);
      tensors.push_back({{wname, model::DType::kF32, {rows, cols}},
                         [&, l, sl](const std::string& name,
                                    model::SafetensorsWriter* w) -> absl::Status {
                           QUANTD_RETURN_IF_ERROR(layer(l));
                           const MatrixF m = model::GatherStored(*lw, sl);
                           return w->Append(name, as_bytes(m.data(), m.size()));
                         }});
    }
  }
  for (const auto& [tname, r] : {std::pair<const char*, model::OnlineRotation>{
                                     kOnlineDownTensor, src.online_down()},
                                 {kOnlineOTensor, src.online_o()}}) {
    if (r.size == 0) continue;
    const int64_t v[2] = {r.size, static_cast<int64_t>(r.seed)};
    const std::string bytes(reinterpret_cast<const char*>(v), sizeof(v));
    tensors.push_back({{tname, model::DType::kI64, {2}},
                       [bytes](const std::string& name, model::SafetensorsWriter* w) {
                         return w->Append(name, bytes);
                       }});
  }
  QUANTD_RETURN_IF_ERROR(AllPackedUsed(replaced, packed));
  for (const auto& [name, sc] : scales) {
    if (packed.sizes.count(name) == 0) {
      return absl::InvalidArgumentError(absl::StrCat("scales for ", name, ", which is not packed"));
    }
    QUANTD_ASSIGN_OR_RETURN(const std::string bytes, packed.read(name));
    QUANTD_ASSIGN_OR_RETURN(quant::PackedInfo info, quant::InspectPacked(bytes));
    if (sc.out.size() != info.m || sc.in.size() != info.n) {
      return absl::InvalidArgumentError(absl::StrCat("scales for ", name, " have sizes ",
                                                     sc.out.size(), " and ", sc.in.size(),
                                                     ", the packed matrix is [", info.m, ",",
                                                     info.n, "]"));
    }
    const std::string q = QuantizedTensorName(name);
    for (const auto& [suffix, v] : {std::pair<const char*, const VectorF*>{model::kOutScaleSuffix, &sc.out},
                                    {model::kInScaleSuffix, &sc.in}}) {
      tensors.push_back({{q + suffix, model::DType::kF32, {v->size()}},
                         [&as_bytes, v](const std::string& name, model::SafetensorsWriter* w) {
                           return w->Append(name, as_bytes(v->data(), v->size()));
                         }});
    }
  }
  std::stable_sort(tensors.begin(), tensors.end(),
                   [](const auto& a, const auto& b) { return a.first.name < b.first.name; });
  std::vector<model::TensorDecl> decls;
  for (const auto& t : tensors) decls.push_back(t.first);
  QUANTD_ASSIGN_OR_RETURN(
      auto w, model::SafetensorsWriter::Create(out_path, decls,
                                               {{"quantd_format", scales.empty() ? "1" : "2"}}));
  for (const auto& [decl, bytes] : tensors) QUANTD_RETURN_IF_ERROR(bytes(decl.name, w.get()));
  return w->Finish();
}

}  // namespace

absl::Status WriteArtifactModel(const model::Checkpoint& src,
                                const std::map<std::string, std::string>& packed,
                                const std::string& out_path) {
  return WriteArtifactStreamed(src, PackedInMemory(packed), out_path);
}

absl::Status WriteArtifactModelFromFiles(const model::Checkpoint& src,
                                         const std::map<std::string, std::string>& packed_files,
                                         const std::string& out_path) {
  QUANTD_ASSIGN_OR_RETURN(const PackedBytes packed, PackedInFiles(packed_files));
  return WriteArtifactStreamed(src, packed, out_path);
}

absl::Status WriteArtifactModelFromSource(const model::LlamaConfig& cfg, model::WeightSource& src,
                                          const std::map<std::string, std::string>& packed_files,
                                          const std::string& out_path) {
  QUANTD_ASSIGN_OR_RETURN(const PackedBytes packed, PackedInFiles(packed_files));
  return WriteSourceArtifact(cfg, src, packed, {}, out_path);
}

absl::Status WriteArtifactFromWeights(const model::LlamaConfig& cfg, const model::LlamaWeights& w,
                                      const std::map<std::string, std::string>& packed,
                                      const std::string& out_path,
                                      const std::map<std::string, RealScales>& scales) {
  model::MemoryWeightSource src(cfg, w);
  return WriteSourceArtifact(cfg, src, PackedInMemory(packed), scales, out_path);
}

absl::StatusOr<std::unique_ptr<model::CheckpointWeightSource>> OpenArtifactSource(
    const std::string& dir, model::LlamaConfig* config) {
  QUANTD_ASSIGN_OR_RETURN(model::LlamaConfig cfg, model::LoadLlamaConfig(dir));
  QUANTD_ASSIGN_OR_RETURN(auto ckpt, model::Checkpoint::Open(dir));
  // An online rotation tensor, if present: I64 [2] {size, seed} with size == `want`.
  auto online = [&](const char* name, int want, const char* what,
                    model::OnlineRotation* r) -> absl::Status {
    auto t = ckpt->Get(name);
    if (!t.ok()) return absl::OkStatus();
    if (t->dtype != model::DType::kI64 || t->data.size() != 16) {
      return absl::DataLossError(absl::StrCat("tensor ", name, " is not I64 [2]"));
    }
    int64_t v[2];
    std::memcpy(v, t->data.data(), sizeof(v));
    if (v[0] != want) {
      return absl::DataLossError(
          absl::StrCat("tensor ", name, " has size ", v[0], ", ", what, " is ", want));
    }
    *r = {static_cast<int>(v[0]), static_cast<uint64_t>(v[1])};
    return absl::OkStatus();
  };
  model::OnlineRotation down, o;
  QUANTD_RETURN_IF_ERROR(online(kOnlineDownTensor, cfg.intermediate_size, "intermediate_size", &down));
  QUANTD_RETURN_IF_ERROR(online(kOnlineOTensor, cfg.num_heads, "num_heads", &o));
  auto src = std::make_unique<model::CheckpointWeightSource>(cfg, std::move(ckpt));
  src->set_online(down, o);
  if (config != nullptr) *config = cfg;
  return src;
}

absl::StatusOr<model::LlamaWeights> LoadArtifactWeights(const std::string& dir,
                                                        model::LlamaConfig* config) {
  model::LlamaConfig cfg;
  QUANTD_ASSIGN_OR_RETURN(auto src, OpenArtifactSource(dir, &cfg));
  QUANTD_ASSIGN_OR_RETURN(model::LlamaWeights w, model::MaterializeWeights(cfg, *src));
  if (config != nullptr) *config = cfg;
  return w;
}

namespace {

bool IsFloat(model::DType d) {
  return d == model::DType::kF64 || d == model::DType::kF32 || d == model::DType::kF16 ||
         d == model::DType::kBF16;
}

// Encodes fp32 values as `dtype`. INVALID_ARGUMENT naming `name` when a finite value overflows
// fp16 (it would silently become infinity).
absl::StatusOr<std::string> EncodeFloats(const float* v, int64_t n, HfDType dtype,
                                         const std::string& name) {
  std::string out;
  if (dtype == HfDType::kF32) {
    out.resize(n * sizeof(float));
    std::memcpy(out.data(), v, out.size());
    return out;
  }
  out.resize(n * 2);
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    if (dtype == HfDType::kF16) {
      if (std::isfinite(v[i]) && std::fabs(v[i]) > 65504.0f) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor ", name, ": value ", v[i], " does not fit fp16; export with bf16 or f32"));
      }
      h = model::FloatToHalf(v[i]);
    } else {
      h = model::FloatToBFloat16(v[i]);
    }
    std::memcpy(out.data() + 2 * i, &h, 2);
  }
  return out;
}

// Tensor `t` (any float dtype, any rank) as fp32 values.
std::vector<float> ToFloats(const model::TensorView& t) {
  const size_t n = t.data.size() / model::DTypeSize(t.dtype);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    const char* p = t.data.data() + i * model::DTypeSize(t.dtype);
    switch (t.dtype) {
      case model::DType::kF64: {
        double d;
        std::memcpy(&d, p, 8);
        v[i] = static_cast<float>(d);
        break;
      }
      case model::DType::kF32:
        std::memcpy(&v[i], p, 4);
        break;
      case model::DType::kF16:
      case model::DType::kBF16: {
        uint16_t h;
        std::memcpy(&h, p, 2);
        v[i] = t.dtype == model::DType::kF16 ? model::HalfToFloat(h) : model::BFloat16ToFloat(h);
        break;
      }
      default:
        break;
    }
  }
  return v;
}

}  // namespace

void SetConfigDtype(nlohmann::json* config, const char* dtype_name) {
  // The storage dtype, in the config's own layout (docs/formats/config.md): transformers >= 4.56
  // writes "dtype", older versions "torch_dtype"; set whichever the config has, else
  // torch_dtype, which every version reads. All other keys (RoPE layout included) stay as given.
  bool has_dtype_key = false;
  for (const char* key : {"dtype", "torch_dtype"}) {
    if (config->contains(key)) {
      (*config)[key] = dtype_name;
      has_dtype_key = true;
    }
  }
  if (!has_dtype_key) (*config)["torch_dtype"] = dtype_name;
}

absl::Status CopySideFiles(const std::string& native_dir, const std::string& out_dir) {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(native_dir, ec)) {
    const std::string fname = e.path().filename().string();
    if (!e.is_regular_file() || fname == "model.safetensors" || fname == "config.json" ||
        fname == "model.safetensors.index.json" || fname[0] == '.') {
      continue;
    }
    QUANTD_ASSIGN_OR_RETURN(std::string bytes, ReadFile(e.path().string()));
    const std::string dst = fname == "manifest.json" ? "quantd_manifest.json" : fname;
    QUANTD_RETURN_IF_ERROR(WriteFileAtomic(JoinPath(out_dir, dst), bytes));
  }
  if (ec) {
    return absl::InternalError(absl::StrCat("listing ", native_dir, ": ", ec.message()));
  }
  return absl::OkStatus();
}

absl::Status ExportHfModel(const std::string& native_dir, const std::string& out_dir,
                           HfDType dtype) {
  QUANTD_ASSIGN_OR_RETURN(std::string config_text,
                          ReadFile(JoinPath(native_dir, "config.json")));
  nlohmann::json config = nlohmann::json::parse(config_text, nullptr, /*allow_exceptions=*/false);
  if (!config.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(JoinPath(native_dir, "config.json"), ": not a JSON object"));
  }
  QUANTD_ASSIGN_OR_RETURN(auto ckpt, model::Checkpoint::Open(native_dir));
  for (const char* online : {kOnlineDownTensor, kOnlineOTensor}) {
    if (ckpt->Get(online).ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          native_dir, " is a QuaRot artifact: it rotates activations online (", online,
          "), which a dense Hugging Face checkpoint cannot express; use the native artifact"));
    }
  }
  const model::DType out_dtype = dtype == HfDType::kF16    ? model::DType::kF16
                                 : dtype == HfDType::kBF16 ? model::DType::kBF16
                                                           : model::DType::kF32;
  // Two passes so that one tensor at a time is in memory: the output's names and shapes
  // (a .qweight's from its packed header), then each tensor's bytes in name order, as
  // WriteSafetensors lays them out.
  struct Out {
    model::TensorDecl decl;
    std::string source;
  };
  std::vector<Out> outs;
  for (const std::string& name : ckpt->Names()) {
    if (IsScaleTensor(name)) continue;  // folded into the dequantized weight below
    QUANTD_ASSIGN_OR_RETURN(model::TensorView v, ckpt->Get(name));
    if (absl::EndsWith(name, ".qweight")) {
      // The header only (after the checksum): decoding every matrix here cost time, and
      // leaving its mapped pages resident held the whole packed file in RSS (4.2 GB peak for
      // a 7B model, docs/benchmarks.md).
      auto info = quant::InspectPacked(v.data);
      ckpt->ReleasePages(name);
      if (!info.ok()) {
        return absl::DataLossError(absl::StrCat("tensor ", name, ": ", info.status().message()));
      }
      outs.push_back(
          {{name.substr(0, name.size() - 8) + ".weight", out_dtype, {info->m, info->n}}, name});
    } else {
      outs.push_back({{name, IsFloat(v.dtype) ? out_dtype : v.dtype, v.shape}, name});
    }
  }
  std::sort(outs.begin(), outs.end(),
            [](const Out& a, const Out& b) { return a.decl.name < b.decl.name; });
  std::vector<model::TensorDecl> decls;
  for (const Out& o : outs) decls.push_back(o.decl);
  QUANTD_RETURN_IF_ERROR(MakeDirs(out_dir));
  QUANTD_ASSIGN_OR_RETURN(
      auto writer, model::SafetensorsWriter::Create(JoinPath(out_dir, "model.safetensors"), decls));
  for (const Out& o : outs) {
    QUANTD_ASSIGN_OR_RETURN(model::TensorView v, ckpt->Get(o.source));
    std::string bytes;
    if (absl::EndsWith(o.source, ".qweight")) {
      auto m = quant::DequantizeMatrix(v.data);
      if (!m.ok()) {
        return absl::DataLossError(absl::StrCat("tensor ", o.source, ": ", m.status().message()));
      }
      QUANTD_RETURN_IF_ERROR(model::ApplyPackedScales(*ckpt, o.source, &*m));
      if (m->rows() != o.decl.shape[0] || m->cols() != o.decl.shape[1]) {
        return absl::DataLossError(absl::StrCat("tensor ", o.source, ": header says [",
                                                o.decl.shape[0], ",", o.decl.shape[1],
                                                "], dequantized [", m->rows(), ",", m->cols(), "]"));
      }
      // MatrixF is row-major, matching safetensors' layout.
      QUANTD_ASSIGN_OR_RETURN(bytes, EncodeFloats(m->data(), m->size(), dtype, o.decl.name));
    } else if (IsFloat(v.dtype)) {
      const std::vector<float> f = ToFloats(v);
      QUANTD_ASSIGN_OR_RETURN(bytes, EncodeFloats(f.data(), f.size(), dtype, o.source));
    } else {
      bytes = std::string(v.data);
    }
    QUANTD_RETURN_IF_ERROR(writer->Append(o.decl.name, bytes));
    ckpt->ReleasePages(o.source);
  }
  QUANTD_RETURN_IF_ERROR(writer->Finish());
  QUANTD_RETURN_IF_ERROR(CopySideFiles(native_dir, out_dir));
  SetConfigDtype(&config, dtype == HfDType::kF16    ? "float16"
                          : dtype == HfDType::kBF16 ? "bfloat16"
                                                    : "float32");
  QUANTD_RETURN_IF_ERROR(WriteFileAtomic(JoinPath(out_dir, "config.json"), config.dump(2) + "\n"));
  return SyncDir(out_dir);
}

}  // namespace quantd::artifact
