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

}  // namespace

absl::Status WriteTunedBlock(const std::string& path, const TunedBlock& t) {
  std::vector<TensorToWrite> tensors = {F32("attn_norm", t.attn_norm), F32("ffn_norm", t.ffn_norm)};
  for (Linear l : kAllLinears) {
    const int i = static_cast<int>(l);
    if (t.scales.out[i].size() == 0 || t.scales.in[i].size() == 0) {
      return absl::InvalidArgumentError(
          internal::Cat("tuned block: ", LinearName(l), " has no scales"));
    }
    tensors.push_back(F32(OutName(l), t.scales.out[i]));
    tensors.push_back(F32(InName(l), t.scales.in[i]));
  }
  if (t.attn_norm.size() == 0 || t.ffn_norm.size() == 0) {
    return absl::InvalidArgumentError("tuned block: empty norm scales");
  }
  return WriteSafetensors(path, tensors);
}

absl::StatusOr<TunedBlock> ReadTunedBlock(const std::string& path, const LlamaConfig& cfg,
                                          int layer) {
  QUANTD_ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open(path));
  TunedBlock t;
  QUANTD_ASSIGN_OR_RETURN(t.attn_norm, ReadF32(*f, "attn_norm", cfg.hidden_size, layer));
  QUANTD_ASSIGN_OR_RETURN(t.ffn_norm, ReadF32(*f, "ffn_norm", cfg.hidden_size, layer));
  for (Linear l : kAllLinears) {
    const int i = static_cast<int>(l);
    const auto [out, in] = LinearShape(cfg, l);
    QUANTD_ASSIGN_OR_RETURN(t.scales.out[i], ReadF32(*f, OutName(l), out, layer));
    QUANTD_ASSIGN_OR_RETURN(t.scales.in[i], ReadF32(*f, InName(l), in, layer));
  }
  return t;
}

}  // namespace quantd::model
