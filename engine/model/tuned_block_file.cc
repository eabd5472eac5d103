#include "engine/model/tuned_block_file.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "common/status_macros.h"
#include "common/str_util.h"
#include "engine/format/safetensors.h"
#include "engine/model/weights.h"

namespace quantd::model {
namespace {

std::string OutName(Linear l) { return internal::Cat(LinearName(l), ".out_scale"); }
std::string InName(Linear l) { return internal::Cat(LinearName(l), ".in_scale"); }

TensorToWrite F32(std::string name, const VectorF& v) {
  TensorToWrite t{std::move(name), DType::kF32, {static_cast<int64_t>(v.size())}, {}};
  t.data.assign(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
  return t;
}

absl::StatusOr<VectorF> ReadF32(const SafetensorsFile& f, const std::string& name, int64_t n,
                                int layer) {
  auto v = f.Get(name);
  if (!v.ok() || v->dtype != DType::kF32 || v->shape != std::vector<int64_t>{n} ||
      v->data.size() != static_cast<size_t>(n) * sizeof(float)) {
    return absl::DataLossError(internal::Cat("tuned block ", layer, " (", f.path(), "): tensor ",
                                             name, " is missing or not F32 [", n, "]"));
  }
  VectorF out(n);
  std::memcpy(out.data(), v->data.data(), v->data.size());
  if (!out.allFinite()) {
    return absl::DataLossError(
        internal::Cat("tuned block ", layer, ": tensor ", name, " has non-finite values"));
  }
  return out;
}

// Appends the tensors of `t`, each name prefixed by `prefix`.
absl::Status AddBlock(const std::string& prefix, const TunedBlock& t,
                      std::vector<TensorToWrite>* tensors) {
  if (t.attn_norm.size() == 0 || t.ffn_norm.size() == 0) {
    return absl::InvalidArgumentError("tuned block: empty norm scales");
  }
  tensors->push_back(F32(prefix + "attn_norm", t.attn_norm));
  tensors->push_back(F32(prefix + "ffn_norm", t.ffn_norm));
  for (Linear l : kAllLinears) {
    const int i = static_cast<int>(l);
    if (t.scales.out[i].size() == 0 || t.scales.in[i].size() == 0) {
      return absl::InvalidArgumentError(
          internal::Cat("tuned block: ", LinearName(l), " has no scales"));
    }
    tensors->push_back(F32(prefix + OutName(l), t.scales.out[i]));
    tensors->push_back(F32(prefix + InName(l), t.scales.in[i]));
  }
  return absl::OkStatus();
}

absl::StatusOr<TunedBlock> ReadBlock(const SafetensorsFile& f, const std::string& prefix,
                                     const LlamaConfig& cfg, int layer) {
  TunedBlock t;
  QUANTD_ASSIGN_OR_RETURN(t.attn_norm, ReadF32(f, prefix + "attn_norm", cfg.hidden_size, layer));
  QUANTD_ASSIGN_OR_RETURN(t.ffn_norm, ReadF32(f, prefix + "ffn_norm", cfg.hidden_size, layer));
  for (Linear l : kAllLinears) {
    const int i = static_cast<int>(l);
    const auto [out, in] = LinearShape(cfg, l);
    QUANTD_ASSIGN_OR_RETURN(t.scales.out[i], ReadF32(f, prefix + OutName(l), out, layer));
    QUANTD_ASSIGN_OR_RETURN(t.scales.in[i], ReadF32(f, prefix + InName(l), in, layer));
  }
  return t;
}

std::string LayerPrefix(int l) { return internal::Cat("layers.", l, "."); }

}  // namespace

absl::Status WriteTunedBlock(const std::string& path, const TunedBlock& t) {
  std::vector<TensorToWrite> tensors;
  QUANTD_RETURN_IF_ERROR(AddBlock("", t, &tensors));
  return WriteSafetensors(path, tensors);
}

absl::StatusOr<TunedBlock> ReadTunedBlock(const std::string& path, const LlamaConfig& cfg,
                                          int layer) {
  QUANTD_ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open(path));
  return ReadBlock(*f, "", cfg, layer);
}

absl::Status WriteTunedModel(const std::string& path, const TunedModel& t) {
  std::vector<TensorToWrite> tensors;
  for (size_t l = 0; l < t.blocks.size(); ++l) {
    QUANTD_RETURN_IF_ERROR(AddBlock(LayerPrefix(static_cast<int>(l)), t.blocks[l], &tensors));
  }
  if (t.final_norm.size() == 0) return absl::InvalidArgumentError("tuned model: empty final norm");
  tensors.push_back(F32("final_norm", t.final_norm));
  if (t.head.size() != 0) {
    // Row-major [vocab, hidden] as safetensors stores it (MatrixF is row-major).
    TensorToWrite h{"lm_head", DType::kF32, {t.head.rows(), t.head.cols()}, {}};
    h.data.assign(reinterpret_cast<const char*>(t.head.data()), t.head.size() * sizeof(float));
    tensors.push_back(std::move(h));
  }
  return WriteSafetensors(path, tensors);
}

absl::StatusOr<TunedModel> ReadTunedModel(const std::string& path, const LlamaConfig& cfg) {
  QUANTD_ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open(path));
  TunedModel t;
  for (int l = 0; l < cfg.num_layers; ++l) {
    QUANTD_ASSIGN_OR_RETURN(TunedBlock b, ReadBlock(*f, LayerPrefix(l), cfg, l));
    t.blocks.push_back(std::move(b));
  }
  if (f->Get(LayerPrefix(cfg.num_layers) + "attn_norm").ok()) {
    return absl::DataLossError(internal::Cat("tuned model (", path, ") has more than ",
                                             cfg.num_layers, " blocks"));
  }
  QUANTD_ASSIGN_OR_RETURN(t.final_norm, ReadF32(*f, "final_norm", cfg.hidden_size, -1));
  if (auto h = f->Get("lm_head"); h.ok()) {
    const std::vector<int64_t> shape = {cfg.vocab_size, cfg.hidden_size};
    if (h->dtype != DType::kF32 || h->shape != shape ||
        h->data.size() != static_cast<size_t>(cfg.vocab_size) * cfg.hidden_size * sizeof(float)) {
      return absl::DataLossError(internal::Cat("tuned model (", path, "): lm_head is not F32 [",
                                               cfg.vocab_size, ", ", cfg.hidden_size, "]"));
    }
    t.head.resize(cfg.vocab_size, cfg.hidden_size);
    std::memcpy(t.head.data(), h->data.data(), h->data.size());
    if (!t.head.allFinite()) {
      return absl::DataLossError("tuned model: lm_head has non-finite values");
    }
  }
  return t;
}

}  // namespace quantd::model
