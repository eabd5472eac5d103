#include "engine/model/forward.h"

#include <cmath>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/str_util.h"
#include "common/status_macros.h"
#include "engine/model/forward_ops.h"
#include "engine/model/quarot.h"
#include "engine/tokenizer/tokens.h"
#include "engine/quant/rht.h"

namespace quantd::model {
namespace {

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
    QUANTD_RETURN_IF_ERROR(CheckLayerVectors(cfg, i, w.layers[i]));
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

absl::Status ActivationSink::OnDeviceResidual(quant::ForwardOps& ops, int layer,
                                              const quant::DeviceMatrix& x) {
  if (const MatrixF* h = ops.HostMatrix(x)) OnResidual(layer, *h);
  return absl::OkStatus();
}

absl::Status ActivationSink::OnDeviceInput(quant::ForwardOps& ops, int layer, LinearGroup group,
                                           const quant::DeviceMatrix& x) {
  if (const MatrixF* h = ops.HostMatrix(x)) {
    OnLinearInput(layer, group, *h);
    return absl::OkStatus();
  }
  MatrixF m;
  QUANTD_RETURN_IF_ERROR(ops.Download(x, &m));
  OnLinearInput(layer, group, m);
  return absl::OkStatus();
}

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
  QUANTD_ASSIGN_OR_RETURN(ops::OnlineRhts online, ops::MakeOnlineRhts(cfg, w));
  const std::optional<quant::Rht>& online_down = online.down;
  const std::optional<quant::Rht>& online_o = online.o;

  const int H = cfg.hidden_size, nh = cfg.num_heads, nkv = cfg.num_kv_heads, hd = cfg.head_dim;
  const int group = nh / nkv;
  const float scale = cfg.AttentionScale();
  const float softcap = static_cast<float>(cfg.attn_softcap);

  const ops::RopeTableSet rope(cfg, T);

  MatrixF x(T, H);
  for (int t = 0; t < T; ++t) x.row(t) = w.embed.row(tokens[t]);
  ops::ScaleEmbedding(cfg, &x);

  MatrixF h, q, k, v, attn(T, nh * hd), scores, g, u;
  for (int layer = 0; layer < cfg.num_layers; ++layer) {
    const LayerWeights& lw = w.layers[layer];
    if (sink) sink->OnResidual(layer, x);
    ops::Norm(cfg, x, lw.attn_norm, &h);
    if (sink) sink->OnLinearInput(layer, LinearGroup::kQkv, h);
    q.noalias() = h * lw.q.transpose();
    k.noalias() = h * lw.k.transpose();
    v.noalias() = h * lw.v.transpose();
    ops::QkvPost(cfg, lw, &q, &k, &v);
    ops::ApplyRope(rope.Cos(cfg, layer, T), rope.Sin(cfg, layer, T), nh, hd, q);
    ops::ApplyRope(rope.Cos(cfg, layer, T), rope.Sin(cfg, layer, T), nkv, hd, k);
    q *= scale;
    for (int head = 0; head < nh; ++head) {
      const int kvh = head / group;
      ops::AttentionHead(q.middleCols(head * hd, hd), k.middleCols(kvh * hd, hd),
                         v.middleCols(kvh * hd, hd), attn.middleCols(head * hd, hd), &scores,
                         cfg.LayerWindow(layer), softcap);
    }
    if (online_o) ApplyAcrossHeads(*online_o, hd, &attn);  // QuaRot: rows ← (R_o ⊗ I)·rows
    if (sink) sink->OnLinearInput(layer, LinearGroup::kO, attn);
    if (ops::PlainResidual(lw.o_bias, lw.post_attn_norm)) {
      x.noalias() += attn * lw.o.transpose();
    } else {
      h.noalias() = attn * lw.o.transpose();
      ops::AddResidual(cfg, lw.o_bias, lw.post_attn_norm, &h, &x);
    }

    ops::Norm(cfg, x, lw.ffn_norm, &h);
    if (sink) sink->OnLinearInput(layer, LinearGroup::kGateUp, h);
    g.noalias() = h * lw.gate.transpose();
    u.noalias() = h * lw.up.transpose();
    ops::GatedActivation(cfg, u, &g);
    if (online_down) online_down->ApplyRows(&g);  // QuaRot: rows ← R_down·rows
    if (sink) sink->OnLinearInput(layer, LinearGroup::kDown, g);
    if (ops::PlainResidual(VectorF(), lw.post_ffn_norm)) {
      x.noalias() += g * lw.down.transpose();
    } else {
      h.noalias() = g * lw.down.transpose();
      ops::AddResidual(cfg, VectorF(), lw.post_ffn_norm, &h, &x);
    }
    if (sink && sink->StopAfterLayer() == layer) return MatrixF(0, cfg.vocab_size);
  }
  ops::Norm(cfg, x, w.final_norm, &h);
  MatrixF logits(T, cfg.vocab_size);
  const MatrixF& head = cfg.tie_word_embeddings ? w.embed : w.lm_head;
  logits.noalias() = h * head.transpose();
  ops::SoftcapLogits(cfg, &logits);
  return logits;
}

}  // namespace quantd::model
