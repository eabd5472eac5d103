#include "worker/artifact/artifact.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "worker/model/safetensors.h"
#include "worker/quant/quantize.h"

namespace quantd::artifact {

std::string QuantizedTensorName(std::string_view weight_name) {
  std::string name(weight_name);
  if (absl::EndsWith(name, ".weight")) name.resize(name.size() - 7);
  return name + ".qweight";
}

absl::Status WriteArtifactModel(const model::Checkpoint& src,
                                const std::map<std::string, std::string>& packed,
                                const std::string& out_path) {
  std::vector<model::TensorToWrite> out;
  size_t replaced = 0;
  for (const std::string& name : src.Names()) {
    auto it = packed.find(name);
    model::TensorToWrite t;
    if (it != packed.end()) {
      t.name = QuantizedTensorName(name);
      t.dtype = model::DType::kU8;
      t.shape = {static_cast<int64_t>(it->second.size())};
      t.data = it->second;
      ++replaced;
    } else {
      QUANTD_ASSIGN_OR_RETURN(model::TensorView v, src.Get(name));
      t.name = name;
      t.dtype = v.dtype;
      t.shape = v.shape;
      t.data = std::string(v.data);
    }
    out.push_back(std::move(t));
  }
  if (replaced != packed.size()) {
    return absl::InvalidArgumentError(absl::StrCat(packed.size() - replaced,
                                                   " quantized tensors have no source tensor"));
  }
  return model::WriteSafetensors(out_path, out, {{"quantd_format", "1"}});
}

absl::StatusOr<model::LlamaWeights> LoadArtifactWeights(const std::string& dir,
                                                        model::LlamaConfig* config) {
  QUANTD_ASSIGN_OR_RETURN(model::LlamaConfig cfg, model::LoadLlamaConfig(dir));
  QUANTD_ASSIGN_OR_RETURN(auto ckpt, model::Checkpoint::Open(dir));
  auto vec = [&](const std::string& name) -> absl::StatusOr<VectorF> {
    QUANTD_ASSIGN_OR_RETURN(MatrixF m, ckpt->ReadMatrix(name));
    if (m.rows() != 1 || m.cols() != cfg.hidden_size) {
      return absl::InvalidArgumentError(absl::StrCat(name, " has ", m.size(),
                                                     " values, expected ", cfg.hidden_size));
    }
    return VectorF(m.row(0).transpose());
  };
  model::LlamaWeights w;
  QUANTD_ASSIGN_OR_RETURN(w.embed, ckpt->ReadMatrix("model.embed_tokens.weight"));
  QUANTD_ASSIGN_OR_RETURN(w.final_norm, vec("model.norm.weight"));
  if (!cfg.tie_word_embeddings) {
    QUANTD_ASSIGN_OR_RETURN(w.lm_head, ckpt->ReadMatrix("lm_head.weight"));
  }
  w.layers.resize(cfg.num_layers);
  for (int l = 0; l < cfg.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    QUANTD_ASSIGN_OR_RETURN(w.layers[l].attn_norm, vec(p + "input_layernorm.weight"));
    QUANTD_ASSIGN_OR_RETURN(w.layers[l].ffn_norm, vec(p + "post_attention_layernorm.weight"));
    for (model::Linear lin : {model::Linear::kQ, model::Linear::kK, model::Linear::kV,
                              model::Linear::kO, model::Linear::kGate, model::Linear::kUp,
                              model::Linear::kDown}) {
      const std::string name = model::LinearTensorName(l, lin);
      const std::string qname = QuantizedTensorName(name);
      MatrixF& dst = model::MutableLinear(w, l, lin);
      const auto [rows, cols] = model::LinearShape(cfg, lin);
      if (auto q = ckpt->Get(qname); q.ok()) {
        auto m = quant::DequantizeMatrix(q->data);
        if (!m.ok()) {
          return absl::DataLossError(absl::StrCat("tensor ", qname, ": ", m.status().message()));
        }
        dst = std::move(*m);
      } else {
        QUANTD_ASSIGN_OR_RETURN(dst, ckpt->ReadMatrix(name));
      }
      if (dst.rows() != rows || dst.cols() != cols) {
        return absl::InvalidArgumentError(absl::StrCat("layer ", l, " ", std::string(model::LinearName(lin)),
                                                       ": weight has shape [", dst.rows(), ",",
                                                       dst.cols(), "], config.json says [", rows,
                                                       ",", cols, "]"));
      }
    }
  }
  if (w.embed.rows() != cfg.vocab_size || w.embed.cols() != cfg.hidden_size) {
    return absl::InvalidArgumentError(absl::StrCat("embedding has shape [", w.embed.rows(), ",",
                                                   w.embed.cols(), "], config.json says [",
                                                   cfg.vocab_size, ",", cfg.hidden_size, "]"));
  }
  if (config != nullptr) *config = cfg;
  return w;
}

}  // namespace quantd::artifact
