#include "engine/model/weight_source.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/str_util.h"
#include "engine/quant/quantize.h"

namespace quantd::model {
namespace {

// The shape `t` must have: exactly `want` (1 or 2 dims).
absl::Status CheckShape(const TensorView& t, std::string_view what,
                        const std::vector<int64_t>& want) {
  if (t.shape == want) return absl::OkStatus();
  return absl::InvalidArgumentError(
      internal::Cat(what, ": weight has shape [", absl::StrJoin(t.shape, ","),
                    "], config.json says [", absl::StrJoin(want, ","), "] (tensor ", t.name, ")"));
}

absl::Status ReadVector(const Checkpoint& ckpt, const std::string& name, std::string_view what,
                        int n, VectorF* out) {
  QUANTD_ASSIGN_OR_RETURN(TensorView t, ckpt.Get(name));
  QUANTD_RETURN_IF_ERROR(CheckShape(t, what, {n}));
  out->resize(n);
  return ConvertToF32(t, 0, n, out->data());
}

absl::Status CheckRows(int begin, int count, int rows) {
  if (begin < 0 || count < 0 || begin + count > rows) {
    return absl::InvalidArgumentError(
        internal::Cat("rows [", begin, ", ", begin + count, ") outside [0, ", rows, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ApplyPackedScales(const Checkpoint& ckpt, const std::string& qname, MatrixF* w) {
  auto out = ckpt.Get(qname + kOutScaleSuffix);
  auto in = ckpt.Get(qname + kInScaleSuffix);
  if (!out.ok() && !in.ok()) return absl::OkStatus();
  if (out.ok() != in.ok()) {
    return absl::DataLossError(internal::Cat("tensor ", qname, " has ",
                                             out.ok() ? kOutScaleSuffix : kInScaleSuffix,
                                             " but not ", out.ok() ? kInScaleSuffix : kOutScaleSuffix));
  }
  VectorF scale[2];
  const TensorView* views[2] = {&*out, &*in};
  const int64_t want[2] = {w->rows(), w->cols()};
  for (int i = 0; i < 2; ++i) {
    const TensorView& t = *views[i];
    if (t.dtype != DType::kF32 || t.shape != std::vector<int64_t>{want[i]}) {
      return absl::DataLossError(internal::Cat("tensor ", t.name, " is not F32 [", want[i], "]"));
    }
    scale[i].resize(want[i]);
    QUANTD_RETURN_IF_ERROR(ConvertToF32(t, 0, want[i], scale[i].data()));
  }
  *w = scale[0].asDiagonal() * *w * scale[1].asDiagonal();
  return absl::OkStatus();
}

absl::StatusOr<const LayerWeights*> MemoryWeightSource::Layer(int layer) {
  if (layer < 0 || layer >= static_cast<int>(w_.layers.size())) {
    return absl::InvalidArgumentError(
        internal::Cat("layer ", layer, " of a ", w_.layers.size(), "-layer model"));
  }
  return &w_.layers[layer];
}

absl::Status MemoryWeightSource::Embed(absl::Span<const int32_t> tokens, MatrixF* out) {
  out->resize(static_cast<Eigen::Index>(tokens.size()), w_.embed.cols());
  for (size_t t = 0; t < tokens.size(); ++t) out->row(t) = w_.embed.row(tokens[t]);
  return absl::OkStatus();
}

absl::StatusOr<VectorF> MemoryWeightSource::FinalNorm() { return w_.final_norm; }

absl::Status MemoryWeightSource::Head(int begin, int count, MatrixF* out) {
  const MatrixF& head = cfg_.tie_word_embeddings ? w_.embed : w_.lm_head;
  QUANTD_RETURN_IF_ERROR(CheckRows(begin, count, static_cast<int>(head.rows())));
  *out = head.middleRows(begin, count);
  return absl::OkStatus();
}

CheckpointWeightSource::CheckpointWeightSource(const LlamaConfig& cfg, const Checkpoint& ckpt)
    : cfg_(cfg), ckpt_(&ckpt) {}

CheckpointWeightSource::CheckpointWeightSource(const LlamaConfig& cfg,
                                               std::unique_ptr<Checkpoint> ckpt)
    : cfg_(cfg), owned_(std::move(ckpt)), ckpt_(owned_.get()) {}

namespace {
quant::WeightDtype StoredWeightDtype(DType d) {
  switch (d) {
    case DType::kBF16: return quant::WeightDtype::kBF16;
    case DType::kF16: return quant::WeightDtype::kF16;
    default: return quant::WeightDtype::kF32;
  }
}
}  // namespace

absl::StatusOr<const LayerWeights*> CheckpointWeightSource::Layer(int i) {
  if (i < 0 || i >= cfg_.num_layers) {
    return absl::InvalidArgumentError(
        internal::Cat("layer ", i, " of a ", cfg_.num_layers, "-layer model"));
  }
  const std::string prefix = internal::Cat("model.layers.", i, ".");
  layer_dtype_ = quant::WeightDtype::kF32;
  bool first_linear = true;
  auto note_dtype = [&](quant::WeightDtype d) {
    if (first_linear) {
      layer_dtype_ = d;
    } else if (d != layer_dtype_) {
      layer_dtype_ = quant::WeightDtype::kF32;
    }
    first_linear = false;
  };
  for (const LayerVectorSpec& s : LayerVectors(cfg_)) {
    QUANTD_RETURN_IF_ERROR(ReadVector(*ckpt_, internal::Cat(prefix, s.suffix),
                                      internal::Cat("layer ", i, " ", s.suffix), s.size,
                                      &(layer_.*s.member)));
  }
  for (const StoredLinear& sl : StoredLinears(cfg_)) {
    const auto [out, in] = StoredShape(cfg_, sl);
    const std::string name = StoredTensorName(i, sl);
    const std::string what = internal::Cat("layer ", i, " ", sl.name);
    // A native artifact stores "<prefix>.qweight" (packed) in place of "<prefix>.weight".
    const std::string qname = name.substr(0, name.size() - 6) + "qweight";
    if (auto q = ckpt_->Get(qname); q.ok()) {
      auto m = quant::DequantizeMatrix(q->data);
      if (!m.ok()) {
        return absl::DataLossError(internal::Cat("tensor ", qname, ": ", m.status().message()));
      }
      if (m->rows() != out || m->cols() != in) {
        return absl::InvalidArgumentError(internal::Cat(what, ": weight has shape [", m->rows(),
                                                       ",", m->cols(), "], config.json says [",
                                                       out, ",", in, "] (tensor ", qname, ")"));
      }
      QUANTD_RETURN_IF_ERROR(ApplyPackedScales(*ckpt_, qname, &*m));
      note_dtype(quant::WeightDtype::kF32);
      QUANTD_RETURN_IF_ERROR(
          ScatterStored(cfg_, sl, std::move(*m), &layer_, internal::Cat(what, " (tensor ", qname, ")")));
      ckpt_->ReleasePages(qname);
      continue;
    }
    QUANTD_ASSIGN_OR_RETURN(TensorView t, ckpt_->Get(name));
    QUANTD_RETURN_IF_ERROR(CheckShape(t, what, {out, in}));
    note_dtype(StoredWeightDtype(t.dtype));
    MatrixF dst(out, in);
    QUANTD_RETURN_IF_ERROR(ConvertToF32(t, 0, static_cast<int64_t>(out) * in, dst.data()));
    QUANTD_RETURN_IF_ERROR(ScatterStored(cfg_, sl, std::move(dst), &layer_, what));
    ckpt_->ReleasePages(name);
  }
  return &layer_;
}

absl::Status CheckpointWeightSource::Embed(absl::Span<const int32_t> tokens, MatrixF* out) {
  const int h = cfg_.hidden_size;
  QUANTD_ASSIGN_OR_RETURN(TensorView t, ckpt_->Get("model.embed_tokens.weight"));
  QUANTD_RETURN_IF_ERROR(CheckShape(t, "embed_tokens", {cfg_.vocab_size, h}));
  out->resize(static_cast<Eigen::Index>(tokens.size()), h);
  for (size_t r = 0; r < tokens.size(); ++r) {
    QUANTD_RETURN_IF_ERROR(
        ConvertToF32(t, static_cast<int64_t>(tokens[r]) * h, h, out->row(r).data()));
  }
  ckpt_->ReleasePages(t.name);
  return absl::OkStatus();
}

absl::StatusOr<VectorF> CheckpointWeightSource::FinalNorm() {
  VectorF v;
  QUANTD_RETURN_IF_ERROR(ReadVector(*ckpt_, "model.norm.weight", "model.norm", cfg_.hidden_size, &v));
  return v;
}

absl::Status CheckpointWeightSource::Head(int begin, int count, MatrixF* out) {
  const char* name = cfg_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  QUANTD_ASSIGN_OR_RETURN(TensorView t, ckpt_->Get(name));
  QUANTD_RETURN_IF_ERROR(CheckShape(t, cfg_.tie_word_embeddings ? "embed_tokens" : "lm_head",
                                    {cfg_.vocab_size, cfg_.hidden_size}));
  QUANTD_RETURN_IF_ERROR(CheckRows(begin, count, cfg_.vocab_size));
  head_dtype_ = StoredWeightDtype(t.dtype);
  out->resize(count, cfg_.hidden_size);
  const int64_t h = cfg_.hidden_size;
  QUANTD_RETURN_IF_ERROR(ConvertToF32(t, begin * h, count * h, out->data()));
  if (begin + count == cfg_.vocab_size) ckpt_->ReleasePages(name);
  return absl::OkStatus();
}

absl::StatusOr<LlamaWeights> MaterializeWeights(const LlamaConfig& cfg, WeightSource& src) {
  LlamaWeights w;
  {
    std::vector<int32_t> all(cfg.vocab_size);
    for (int i = 0; i < cfg.vocab_size; ++i) all[i] = i;
    QUANTD_RETURN_IF_ERROR(src.Embed(all, &w.embed));
  }
  w.layers.resize(cfg.num_layers);
  for (int i = 0; i < cfg.num_layers; ++i) {
    QUANTD_ASSIGN_OR_RETURN(const LayerWeights* lw, src.Layer(i));
    w.layers[i] = *lw;
  }
  QUANTD_ASSIGN_OR_RETURN(w.final_norm, src.FinalNorm());
  if (!cfg.tie_word_embeddings) {
    QUANTD_RETURN_IF_ERROR(src.Head(0, cfg.vocab_size, &w.lm_head));
  }
  w.online_down = src.online_down();
  w.online_o = src.online_o();
  return w;
}

}  // namespace quantd::model
