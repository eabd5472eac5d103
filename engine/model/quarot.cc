#include "engine/model/quarot.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/quant/rht.h"

namespace quantd::model {
namespace {

// rows of m ← R·rows (m ← m·Rᵀ).
void RotateRows(const quant::Rht& r, MatrixD* m) { r.ApplyRows(m); }
// m ← R·m (every column c ← R c).
void RotateCols(const quant::Rht& r, MatrixD* m) {
  MatrixD t = m->transpose();
  r.ApplyRows(&t);
  *m = t.transpose();
}

template <typename M>
void AcrossHeads(const quant::Rht& r, int head_dim, M* rows) {
  const int heads = r.n();
  if (head_dim <= 0 || rows->cols() != static_cast<Eigen::Index>(heads) * head_dim) return;
  // z[(row, d), h] = rows[row, h·head_dim + d]; rotate z's rows; scatter back.
  M z(rows->rows() * head_dim, heads);
  for (Eigen::Index i = 0; i < rows->rows(); ++i) {
    for (int h = 0; h < heads; ++h) {
      z.block(i * head_dim, h, head_dim, 1) =
          rows->row(i).segment(h * head_dim, head_dim).transpose();
    }
  }
  r.ApplyRows(&z);
  for (Eigen::Index i = 0; i < rows->rows(); ++i) {
    for (int h = 0; h < heads; ++h) {
      rows->row(i).segment(h * head_dim, head_dim) =
          z.block(i * head_dim, h, head_dim, 1).transpose();
    }
  }
}

// The biases of a layer whose linears were rotated: v's rows of each kv head by R_head, o's
// output (the residual stream) by R_res. q/k/up/gate biases live in unrotated output spaces.
void RotateLayerBiases(const LlamaConfig& cfg, const quant::Rht& res, const quant::Rht& head,
                       LayerWeights* lw) {
  if (lw->v_bias.size() != 0) {
    for (int h = 0; h < cfg.num_kv_heads; ++h) {
      MatrixD b = lw->v_bias.segment(h * cfg.head_dim, cfg.head_dim).cast<double>();
      RotateCols(head, &b);
      lw->v_bias.segment(h * cfg.head_dim, cfg.head_dim) = b.col(0).cast<float>();
    }
  }
  if (lw->o_bias.size() != 0) {
    MatrixD b = lw->o_bias.cast<double>();
    RotateCols(res, &b);
    lw->o_bias = b.col(0).cast<float>();
  }
}

}  // namespace

void ApplyAcrossHeads(const quant::Rht& r, int head_dim, MatrixF* rows) {
  AcrossHeads(r, head_dim, rows);
}
void ApplyAcrossHeads(const quant::Rht& r, int head_dim, MatrixD* rows) {
  AcrossHeads(r, head_dim, rows);
}

QuarotSeeds QuarotSeedsFrom(uint64_t seed) {
  return {seed, seed ^ 0x5851F42D4C957F2Dull, seed ^ 0x14057B7EF767814Full,
          seed ^ 0x2545F4914F6CDD1Dull};
}

absl::StatusOr<MatrixF> QuarotLinear(const LlamaConfig& cfg, Linear l, const MatrixF& w,
                                     const VectorF& norm, uint64_t seed) {
  const auto [rows, cols] = LinearShape(cfg, l);
  if (w.rows() != rows || w.cols() != cols) {
    return absl::InvalidArgumentError(absl::StrCat("quarot ", std::string(LinearName(l)),
                                                   ": weight has shape [", w.rows(), ",",
                                                   w.cols(), "], config says [", rows, ",", cols,
                                                   "]"));
  }
  const QuarotSeeds s = QuarotSeedsFrom(seed);
  QUANTD_ASSIGN_OR_RETURN(quant::Rht res, quant::MakeRht(cfg.hidden_size, s.residual));
  MatrixD m = w.cast<double>();
  const int hd = cfg.head_dim;
  switch (l) {
    case Linear::kQ:
    case Linear::kK:
    case Linear::kV:
    case Linear::kGate:
    case Linear::kUp: {
      if (norm.size() != cfg.hidden_size) {
        return absl::InvalidArgumentError(absl::StrCat("quarot ", std::string(LinearName(l)),
                                                       ": norm has ", norm.size(),
                                                       " values, hidden_size is ",
                                                       cfg.hidden_size));
      }
      m = m * norm.cast<double>().asDiagonal();
      RotateRows(res, &m);
      if (l == Linear::kV) {
        QUANTD_ASSIGN_OR_RETURN(quant::Rht head, quant::MakeRht(hd, s.head));
        for (int h = 0; h < cfg.num_kv_heads; ++h) {
          MatrixD block = m.middleRows(h * hd, hd);
          RotateCols(head, &block);
          m.middleRows(h * hd, hd) = block;
        }
      }
      break;
    }
    case Linear::kO: {
      RotateCols(res, &m);
      QUANTD_ASSIGN_OR_RETURN(quant::Rht head, quant::MakeRht(hd, s.head));
      for (int h = 0; h < cfg.num_heads; ++h) {
        MatrixD block = m.middleCols(h * hd, hd);
        RotateRows(head, &block);
        m.middleCols(h * hd, hd) = block;
      }
      QUANTD_ASSIGN_OR_RETURN(quant::Rht across, quant::MakeRht(cfg.num_heads, s.o));
      ApplyAcrossHeads(across, hd, &m);  // rows ← (R_o ⊗ I) rows, i.e. W_o ← W_o (R_o ⊗ I)ᵀ
      break;
    }
    case Linear::kDown: {
      RotateCols(res, &m);
      QUANTD_ASSIGN_OR_RETURN(quant::Rht down, quant::MakeRht(cfg.intermediate_size, s.down));
      RotateRows(down, &m);
      break;
    }
  }
  return MatrixF(m.cast<float>());
}

absl::StatusOr<MatrixF> QuarotStored(const LlamaConfig& cfg, const StoredLinear& s,
                                     const MatrixF& w, const VectorF& norm, uint64_t seed) {
  if (s.parts.size() == 1) return QuarotLinear(cfg, s.parts[0], w, norm, seed);
  LayerWeights parts;
  QUANTD_RETURN_IF_ERROR(ScatterStored(cfg, s, w, &parts, absl::StrCat("quarot ", std::string(s.name))));
  for (Linear l : s.parts) {
    MatrixF& m = MutableLinear(parts, l);
    QUANTD_ASSIGN_OR_RETURN(m, QuarotLinear(cfg, l, m, norm, seed));
  }
  return GatherStored(parts, s);
}

absl::Status QuarotSupported(const LlamaConfig& cfg) {
  if (cfg.norm_plus_one || cfg.sandwich_norms) {
    return absl::InvalidArgumentError(absl::StrCat(
        "quarot does not support ", std::string(ArchitectureName(cfg.family)),
        ": its post_attention_layernorm / post_feedforward_layernorm normalize the o_proj and "
        "down_proj outputs before the residual add, and an elementwise norm scale does not "
        "commute with the rotation of the residual stream, so the rotated model would not "
        "compute the same function; use gptq, ldlq, rtn, quip#, qtip or aqlm"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<QuarotWeightSource>> QuarotWeightSource::Create(
    const LlamaConfig& cfg, std::unique_ptr<WeightSource> base, uint64_t seed) {
  QUANTD_RETURN_IF_ERROR(QuarotSupported(cfg));
  if (base == nullptr || base->online_down().size != 0 || base->online_o().size != 0) {
    return absl::InvalidArgumentError("quarot: the model already carries an online rotation");
  }
  const QuarotSeeds s = QuarotSeedsFrom(seed);
  QUANTD_ASSIGN_OR_RETURN(quant::Rht res, quant::MakeRht(cfg.hidden_size, s.residual));
  QUANTD_ASSIGN_OR_RETURN(quant::Rht head, quant::MakeRht(cfg.head_dim, s.head));
  return std::unique_ptr<QuarotWeightSource>(new QuarotWeightSource(
      cfg, std::move(base), seed, std::move(res), std::move(head)));
}

QuarotWeightSource::QuarotWeightSource(const LlamaConfig& cfg, std::unique_ptr<WeightSource> base,
                                       uint64_t seed, quant::Rht residual, quant::Rht head)
    : cfg_(cfg),
      rotated_cfg_(cfg),
      base_(std::move(base)),
      seed_(seed),
      residual_(std::move(residual)),
      head_(std::move(head)) {
  const QuarotSeeds s = QuarotSeedsFrom(seed);
  rotated_cfg_.tie_word_embeddings = false;
  online_down_ = {cfg.intermediate_size, s.down};
  online_o_ = {cfg.num_heads, s.o};
}

// Each step below is ApplyQuarot's for one layer, in its order and arithmetic.
absl::StatusOr<const LayerWeights*> QuarotWeightSource::Layer(int layer) {
  QUANTD_ASSIGN_OR_RETURN(const LayerWeights* base, base_->Layer(layer));
  layer_ = *base;
  for (Linear lin : kAllLinears) {
    const VectorF& norm = GroupOf(lin) == LinearGroup::kGateUp ? base->ffn_norm : base->attn_norm;
    MatrixF& dst = MutableLinear(layer_, lin);
    QUANTD_ASSIGN_OR_RETURN(dst, QuarotLinear(cfg_, lin, dst, norm, seed_));
  }
  RotateLayerBiases(cfg_, residual_, head_, &layer_);
  layer_.attn_norm.setOnes();
  layer_.ffn_norm.setOnes();
  return &layer_;
}

absl::Status QuarotWeightSource::Embed(absl::Span<const int32_t> tokens, MatrixF* out) {
  QUANTD_RETURN_IF_ERROR(base_->Embed(tokens, out));
  MatrixD rows = out->cast<double>();
  RotateRows(residual_, &rows);
  *out = rows.cast<float>();
  return absl::OkStatus();
}

absl::StatusOr<VectorF> QuarotWeightSource::FinalNorm() {
  return VectorF(VectorF::Ones(cfg_.hidden_size));
}

absl::Status QuarotWeightSource::Head(int begin, int count, MatrixF* out) {
  // The unrotated head (lm_head, or the embedding when tied) with model.norm fused in.
  QUANTD_RETURN_IF_ERROR(base_->Head(begin, count, out));
  QUANTD_ASSIGN_OR_RETURN(VectorF norm, base_->FinalNorm());
  if (norm.size() != cfg_.hidden_size || out->cols() != cfg_.hidden_size) {
    return absl::InvalidArgumentError("quarot: lm_head does not match the config");
  }
  MatrixD rows = out->cast<double>();
  rows = rows * norm.cast<double>().asDiagonal();
  RotateRows(residual_, &rows);
  *out = rows.cast<float>();
  return absl::OkStatus();
}

absl::Status ApplyQuarot(LlamaConfig* cfg, LlamaWeights* w, uint64_t seed) {
  QUANTD_RETURN_IF_ERROR(QuarotSupported(*cfg));
  if (w->online_down.size != 0 || w->online_o.size != 0) {
    return absl::InvalidArgumentError("quarot: the model already carries an online rotation");
  }
  if (static_cast<int>(w->layers.size()) != cfg->num_layers ||
      w->embed.cols() != cfg->hidden_size || w->final_norm.size() != cfg->hidden_size) {
    return absl::InvalidArgumentError("quarot: weights do not match the config");
  }
  const QuarotSeeds s = QuarotSeedsFrom(seed);
  QUANTD_ASSIGN_OR_RETURN(quant::Rht res, quant::MakeRht(cfg->hidden_size, s.residual));
  QUANTD_ASSIGN_OR_RETURN(quant::Rht head_rot, quant::MakeRht(cfg->head_dim, s.head));
  MatrixD head = (cfg->tie_word_embeddings ? w->embed : w->lm_head).cast<double>();
  if (head.cols() != cfg->hidden_size) {
    return absl::InvalidArgumentError("quarot: lm_head does not match the config");
  }
  head = head * w->final_norm.cast<double>().asDiagonal();
  RotateRows(res, &head);
  MatrixD embed = w->embed.cast<double>();
  RotateRows(res, &embed);
  for (int l = 0; l < cfg->num_layers; ++l) {
    LayerWeights& lw = w->layers[l];
    for (Linear lin : kAllLinears) {
      const VectorF& norm = GroupOf(lin) == LinearGroup::kGateUp ? lw.ffn_norm : lw.attn_norm;
      MatrixF& dst = MutableLinear(*w, l, lin);
      QUANTD_ASSIGN_OR_RETURN(dst, QuarotLinear(*cfg, lin, dst, norm, seed));
    }
    // Biases follow their projection's output rotation: v's outputs are rotated head by head,
    // o_proj's outputs (the residual stream) by the residual rotation. q/k outputs (and so their
    // biases and Qwen3's q/k norms) are not rotated.
    RotateLayerBiases(*cfg, res, head_rot, &lw);
    lw.attn_norm.setOnes();
    lw.ffn_norm.setOnes();
  }
  w->embed = embed.cast<float>();
  w->lm_head = head.cast<float>();
  w->final_norm.setOnes();
  w->online_down = {cfg->intermediate_size, s.down};
  w->online_o = {cfg->num_heads, s.o};
  cfg->tie_word_embeddings = false;
  return absl::OkStatus();
}

}  // namespace quantd::model
