#include "engine/model/forward.h"

#include <cmath>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/str_util.h"
#include "common/status_macros.h"
#include "engine/model/quarot.h"
#include "engine/model/rope.h"
#include "engine/tokenizer/tokens.h"
#include "engine/quant/rht.h"

namespace quantd::model {
namespace {

// out = rmsnorm(x) * weight, row-wise.
void RmsNorm(const MatrixF& x, const VectorF& weight, float eps, MatrixF* out) {
  out->resize(x.rows(), x.cols());
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    const float ms = x.row(t).squaredNorm() / static_cast<float>(x.cols());
    const float inv = 1.0f / std::sqrt(ms + eps);
    out->row(t) = (x.row(t) * inv).cwiseProduct(weight.transpose());
  }
}

// Rotates each head of `m` (T x heads*hd) in place: pairs (i, i + hd/2), angle pos * theta^(-2i/hd).
void ApplyRope(const MatrixF& cos, const MatrixF& sin, int heads, int hd, MatrixF* m) {
  const int half = hd / 2;
  for (Eigen::Index t = 0; t < m->rows(); ++t) {
    float* row = m->row(t).data();
    const float* c = cos.row(t).data();
    const float* s = sin.row(t).data();
    for (int h = 0; h < heads; ++h) {
      float* v = row + h * hd;
      for (int i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
      }
    }
  }
}

absl::Status CheckWeights(const LlamaConfig& cfg, const LlamaWeights& w) {
  auto mismatch = [](std::string_view what, Eigen::Index r, Eigen::Index c, int er, int ec) {
    return absl::InvalidArgumentError(internal::Cat(what, ": weight has shape [", r, ",", c,
                                                   "], config says [", er, ",", ec, "]"));
  };
  if (w.embed.rows() != cfg.vocab_size || w.embed.cols() != cfg.hidden_size)
    return mismatch("embed_tokens", w.embed.rows(), w.embed.cols(), cfg.vocab_size,
                    cfg.hidden_size);
  if (static_cast<int>(w.layers.size()) != cfg.num_layers) {
    return absl::InvalidArgumentError(internal::Cat("weights have ", w.layers.size(),
                                                   " layers, config says ", cfg.num_layers));
  }
  for (int i = 0; i < cfg.num_layers; ++i) {
    for (Linear l : kAllLinears) {
      const MatrixF& m = GetLinear(w, i, l);
      auto [out, in] = LinearShape(cfg, l);
      if (m.rows() != out || m.cols() != in)
        return mismatch(internal::Cat("layer ", i, " ", LinearName(l)), m.rows(), m.cols(), out,
                        in);
    }
    if (w.layers[i].attn_norm.size() != cfg.hidden_size ||
        w.layers[i].ffn_norm.size() != cfg.hidden_size) {
      return absl::InvalidArgumentError(internal::Cat("layer ", i, ": norm size mismatch"));
    }
  }
  if (w.final_norm.size() != cfg.hidden_size)
    return absl::InvalidArgumentError("model.norm: size mismatch");
  if (!cfg.tie_word_embeddings &&
      (w.lm_head.rows() != cfg.vocab_size || w.lm_head.cols() != cfg.hidden_size))
    return mismatch("lm_head", w.lm_head.rows(), w.lm_head.cols(), cfg.vocab_size,
                    cfg.hidden_size);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<MatrixF> Forward(const LlamaConfig& cfg, const LlamaWeights& w,
                                absl::Span<const int32_t> tokens, ActivationSink* sink) {
  const int T = static_cast<int>(tokens.size());
  if (tokens.empty()) return absl::InvalidArgumentError("Forward: empty token sequence");
  if (tokens.size() > static_cast<size_t>(cfg.max_position_embeddings)) {
    return absl::InvalidArgumentError(internal::Cat("Forward: ", tokens.size(),
                                                   " tokens exceed max_position_embeddings ",
                                                   cfg.max_position_embeddings));
  }
  QUANTD_RETURN_IF_ERROR(ValidateTokens(tokens, cfg.vocab_size));
  QUANTD_RETURN_IF_ERROR(CheckWeights(cfg, w));
  std::optional<quant::Rht> online_down;
  if (w.online_down.size != 0) {
    if (w.online_down.size != cfg.intermediate_size) {
      return absl::InvalidArgumentError(internal::Cat("online down_proj rotation has size ",
                                                     w.online_down.size,
                                                     ", intermediate_size is ",
                                                     cfg.intermediate_size));
    }
    QUANTD_ASSIGN_OR_RETURN(online_down, quant::MakeRht(w.online_down.size, w.online_down.seed));
  }
  std::optional<quant::Rht> online_o;
  if (w.online_o.size != 0) {
    if (w.online_o.size != cfg.num_heads) {
      return absl::InvalidArgumentError(internal::Cat("online o_proj rotation has size ",
                                                     w.online_o.size, ", num_heads is ",
                                                     cfg.num_heads));
    }
    QUANTD_ASSIGN_OR_RETURN(online_o, quant::MakeRht(w.online_o.size, w.online_o.seed));
  }

  const int H = cfg.hidden_size, nh = cfg.num_heads, nkv = cfg.num_kv_heads, hd = cfg.head_dim;
  const int group = nh / nkv, half = hd / 2;
  const float eps = static_cast<float>(cfg.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  // RoPE tables [T x hd/2]: fp32 angle = pos * inv_freq, like HF.
  MatrixF cos(T, half), sin(T, half);
  const std::vector<float> inv_freq = RopeInverseFrequencies(cfg.rope, hd);
  for (int i = 0; i < half; ++i) {
    for (int t = 0; t < T; ++t) {
      const float angle = static_cast<float>(t) * inv_freq[i];
      cos(t, i) = std::cos(angle);
      sin(t, i) = std::sin(angle);
    }
  }

  MatrixF x(T, H);
  for (int t = 0; t < T; ++t) x.row(t) = w.embed.row(tokens[t]);

  MatrixF h, q, k, v, attn(T, nh * hd), scores, g, u;
  MatrixF qh(T, hd), kh(T, hd), vh(T, hd);
  for (int layer = 0; layer < cfg.num_layers; ++layer) {
    const LayerWeights& lw = w.layers[layer];
    RmsNorm(x, lw.attn_norm, eps, &h);
    if (sink) sink->OnLinearInput(layer, LinearGroup::kQkv, h);
    q.noalias() = h * lw.q.transpose();
    k.noalias() = h * lw.k.transpose();
    v.noalias() = h * lw.v.transpose();
    ApplyRope(cos, sin, nh, hd, &q);
    ApplyRope(cos, sin, nkv, hd, &k);
    q *= scale;
    // Causal attention in row blocks: block [r0, r0+rows) only sees keys [0, r0+rows).
    constexpr int kBlock = 64;
    for (int head = 0; head < nh; ++head) {
      const int kvh = head / group;
      qh = q.middleCols(head * hd, hd);
      kh = k.middleCols(kvh * hd, hd);
      vh = v.middleCols(kvh * hd, hd);
      for (int r0 = 0; r0 < T; r0 += kBlock) {
        const int rows = std::min(kBlock, T - r0), cols = r0 + rows;
        scores.noalias() = qh.middleRows(r0, rows) * kh.topRows(cols).transpose();
        for (int i = 0; i < rows; ++i) {
          auto live = scores.row(i).head(r0 + i + 1).array();
          live = (live - live.maxCoeff()).exp();  // vectorized exp
          live *= 1.0f / live.sum();
          scores.row(i).tail(rows - i - 1).setZero();
        }
        attn.block(r0, head * hd, rows, hd).noalias() = scores * vh.topRows(cols);
      }
    }
    if (online_o) ApplyAcrossHeads(*online_o, hd, &attn);  // QuaRot: rows ← (R_o ⊗ I)·rows
    if (sink) sink->OnLinearInput(layer, LinearGroup::kO, attn);
    x.noalias() += attn * lw.o.transpose();

    RmsNorm(x, lw.ffn_norm, eps, &h);
    if (sink) sink->OnLinearInput(layer, LinearGroup::kGateUp, h);
    g.noalias() = h * lw.gate.transpose();
    u.noalias() = h * lw.up.transpose();
    g.array() = g.array() / (1.0f + (-g.array()).exp()) * u.array();  // silu(g) * u
    if (online_down) online_down->ApplyRows(&g);  // QuaRot: rows ← R_down·rows
    if (sink) sink->OnLinearInput(layer, LinearGroup::kDown, g);
    x.noalias() += g * lw.down.transpose();
    if (sink && sink->StopAfterLayer() == layer) return MatrixF(0, cfg.vocab_size);
  }
  RmsNorm(x, w.final_norm, eps, &h);
  MatrixF logits(T, cfg.vocab_size);
  const MatrixF& head = cfg.tie_word_embeddings ? w.embed : w.lm_head;
  logits.noalias() = h * head.transpose();
  return logits;
}

}  // namespace quantd::model
