#include "engine/model/streamed_forward.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <omp.h>

#include "common/status_macros.h"
#include "common/str_util.h"
#include "engine/model/forward_ops.h"
#include "engine/model/quarot.h"
#include "engine/tokenizer/tokens.h"

namespace quantd::model {
namespace {

absl::Status CheckLayer(const LlamaConfig& cfg, int layer, const LayerWeights& lw) {
  for (Linear l : kAllLinears) {
    const MatrixF& m = GetLinear(lw, l);
    const auto [out, in] = LinearShape(cfg, l);
    if (m.rows() != out || m.cols() != in) {
      return absl::InvalidArgumentError(internal::Cat("layer ", layer, " ", LinearName(l),
                                                     ": weight has shape [", m.rows(), ",",
                                                     m.cols(), "], config says [", out, ",", in,
                                                     "]"));
    }
  }
  return CheckLayerVectors(cfg, layer, lw);
}

}  // namespace

absl::StatusOr<MatrixF> ForwardBatch(const LlamaConfig& cfg, WeightSource& src,
                                     absl::Span<const absl::Span<const int32_t>> sequences,
                                     ActivationSink* sink) {
  if (sequences.empty()) return absl::InvalidArgumentError("ForwardBatch: no sequences");
  std::vector<int64_t> offset(sequences.size() + 1, 0);
  int max_len = 0;
  for (size_t s = 0; s < sequences.size(); ++s) {
    const auto& seq = sequences[s];
    if (seq.empty()) {
      return absl::InvalidArgumentError(internal::Cat("ForwardBatch: sequence ", s, " is empty"));
    }
    if (seq.size() > static_cast<size_t>(cfg.max_position_embeddings)) {
      return absl::InvalidArgumentError(
          internal::Cat("ForwardBatch: sequence ", s, " has ", seq.size(),
                        " tokens, more than max_position_embeddings ",
                        cfg.max_position_embeddings));
    }
    QUANTD_RETURN_IF_ERROR(ValidateTokens(seq, cfg.vocab_size));
    offset[s + 1] = offset[s] + static_cast<int64_t>(seq.size());
    max_len = std::max(max_len, static_cast<int>(seq.size()));
  }
  const int nseq = static_cast<int>(sequences.size());
  const int64_t N = offset.back();
  const int H = cfg.hidden_size, nh = cfg.num_heads, nkv = cfg.num_kv_heads, hd = cfg.head_dim;
  const int group = nh / nkv;
  const float scale = cfg.AttentionScale();
  const float softcap = static_cast<float>(cfg.attn_softcap);
  QUANTD_ASSIGN_OR_RETURN(ops::OnlineRhts online,
                          ops::MakeOnlineRhts(cfg, src.online_down(), src.online_o()));

  const ops::RopeTableSet rope(cfg, max_len);

  MatrixF x;
  {
    std::vector<int32_t> all;
    all.reserve(N);
    for (const auto& seq : sequences) all.insert(all.end(), seq.begin(), seq.end());
    QUANTD_RETURN_IF_ERROR(src.Embed(all, &x));
  }
  ops::ScaleEmbedding(cfg, &x);
  if (x.rows() != N || x.cols() != H) {
    return absl::InvalidArgumentError(internal::Cat("embedding rows are ", x.cols(),
                                                   " wide, hidden_size is ", H));
  }

  MatrixF h, q, k, v, attn(N, nh * hd), g, u;
  for (int layer = 0; layer < cfg.num_layers; ++layer) {
    QUANTD_ASSIGN_OR_RETURN(const LayerWeights* lw, src.Layer(layer));
    QUANTD_RETURN_IF_ERROR(CheckLayer(cfg, layer, *lw));
    ops::Norm(cfg, x, lw->attn_norm, &h);
    if (sink) sink->OnLinearInput(layer, LinearGroup::kQkv, h);
    ops::MatMulT(h, lw->q, &q);
    ops::MatMulT(h, lw->k, &k);
    ops::MatMulT(h, lw->v, &v);
    ops::QkvPost(cfg, *lw, &q, &k, &v);
    const int window = cfg.LayerWindow(layer);
    for (int s = 0; s < nseq; ++s) {
      const Eigen::Index T = offset[s + 1] - offset[s];
      const MatrixF &c = rope.Cos(cfg, layer, static_cast<int>(T)),
                     &sn = rope.Sin(cfg, layer, static_cast<int>(T));
      ops::ApplyRope(c, sn, nh, hd, q.middleRows(offset[s], T));
      ops::ApplyRope(c, sn, nkv, hd, k.middleRows(offset[s], T));
    }
    q *= scale;
    // One (sequence, head) pair per iteration; each writes its own block of attn.
#pragma omp parallel
    {
      MatrixF scores;
#pragma omp for schedule(dynamic, 1)
      for (int job = 0; job < nseq * nh; ++job) {
        const int s = job / nh, head = job % nh, kvh = head / group;
        const Eigen::Index r0 = offset[s], T = offset[s + 1] - offset[s];
        ops::AttentionHead(q.block(r0, head * hd, T, hd), k.block(r0, kvh * hd, T, hd),
                           v.block(r0, kvh * hd, T, hd), attn.block(r0, head * hd, T, hd),
                           &scores, window, softcap);
      }
    }
    if (online.o) ApplyAcrossHeads(*online.o, hd, &attn);  // QuaRot: rows ← (R_o ⊗ I)·rows
    if (sink) sink->OnLinearInput(layer, LinearGroup::kO, attn);
    if (ops::PlainResidual(lw->o_bias, lw->post_attn_norm)) {
      ops::MatMulT(attn, lw->o, &x, /*accumulate=*/true);
    } else {
      ops::MatMulT(attn, lw->o, &h);  // h (the normed input) is free again
      ops::AddResidual(cfg, lw->o_bias, lw->post_attn_norm, &h, &x);
    }

    ops::Norm(cfg, x, lw->ffn_norm, &h);
    if (sink) sink->OnLinearInput(layer, LinearGroup::kGateUp, h);
    ops::MatMulT(h, lw->gate, &g);
    ops::MatMulT(h, lw->up, &u);
    ops::GatedActivation(cfg, u, &g);
    if (online.down) online.down->ApplyRows(&g);  // QuaRot: rows ← R_down·rows
    if (sink) sink->OnLinearInput(layer, LinearGroup::kDown, g);
    if (ops::PlainResidual(VectorF(), lw->post_ffn_norm)) {
      ops::MatMulT(g, lw->down, &x, /*accumulate=*/true);
    } else {
      ops::MatMulT(g, lw->down, &h);
      ops::AddResidual(cfg, VectorF(), lw->post_ffn_norm, &h, &x);
    }
    if (sink) {
      QUANTD_RETURN_IF_ERROR(sink->OnLayerDone(layer));
      if (sink->StopAfterLayer() == layer) return MatrixF(0, H);
    }
  }
  QUANTD_ASSIGN_OR_RETURN(VectorF final_norm, src.FinalNorm());
  if (final_norm.size() != H) return absl::InvalidArgumentError("model.norm: size mismatch");
  ops::Norm(cfg, x, final_norm, &h);
  return h;
}

int64_t BatchBytesPerToken(const LlamaConfig& cfg) {
  const int64_t d = cfg.hidden_size, ff = cfg.intermediate_size;
  const int64_t q = static_cast<int64_t>(cfg.num_heads) * cfg.head_dim;
  const int64_t kv = static_cast<int64_t>(cfg.num_kv_heads) * cfg.head_dim;
  return 4 * (2 * d + 2 * q + 2 * kv + 2 * ff);
}

int64_t LayerWeightBytes(const LlamaConfig& cfg) {
  const int64_t d = cfg.hidden_size, ff = cfg.intermediate_size;
  const int64_t q = static_cast<int64_t>(cfg.num_heads) * cfg.head_dim;
  const int64_t kv = static_cast<int64_t>(cfg.num_kv_heads) * cfg.head_dim;
  return 4 * (d * (q + 2 * kv) + q * d + 3 * d * ff + 2 * d);
}

int64_t AutoBatchTokens(const LlamaConfig& cfg, int context) {
  const int64_t fit = (int64_t{1} << 30) / std::max<int64_t>(BatchBytesPerToken(cfg), 1);
  return std::max<int64_t>(context, std::min<int64_t>(fit, 16384));
}

int DefaultVocabChunk(const LlamaConfig& cfg, int64_t rows) {
  constexpr int64_t kFloats = int64_t{16} << 20;  // 64 MiB of fp32 logits
  const int64_t chunk = std::max<int64_t>(256, kFloats / std::max<int64_t>(rows, 1));
  return static_cast<int>(std::min<int64_t>(chunk, cfg.vocab_size));
}

absl::Status ForEachLogitsChunk(
    const LlamaConfig& cfg, WeightSource& src, const MatrixF& hidden, int vocab_chunk,
    const std::function<absl::Status(int col_begin, const MatrixF& logits)>& fn) {
  if (hidden.cols() != cfg.hidden_size) {
    return absl::InvalidArgumentError(internal::Cat("hidden states are ", hidden.cols(),
                                                   " wide, hidden_size is ", cfg.hidden_size));
  }
  const int chunk = vocab_chunk > 0 ? vocab_chunk : DefaultVocabChunk(cfg, hidden.rows());
  MatrixF head, logits;
  for (int c0 = 0; c0 < cfg.vocab_size; c0 += chunk) {
    const int n = std::min(chunk, cfg.vocab_size - c0);
    QUANTD_RETURN_IF_ERROR(src.Head(c0, n, &head));
    ops::MatMulT(hidden, head, &logits);
    ops::SoftcapLogits(cfg, &logits);
    QUANTD_RETURN_IF_ERROR(fn(c0, logits));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<double>> RowNll(const LlamaConfig& cfg, WeightSource& src,
                                           const MatrixF& hidden,
                                           absl::Span<const int32_t> targets, int vocab_chunk) {
  const int64_t rows = hidden.rows();
  if (static_cast<int64_t>(targets.size()) != rows) {
    return absl::InvalidArgumentError(internal::Cat("RowNll: ", targets.size(), " targets for ",
                                                   rows, " rows"));
  }
  for (int32_t t : targets) {
    if (t >= cfg.vocab_size) {
      return absl::InvalidArgumentError(
          internal::Cat("RowNll: target ", t, " outside the vocabulary of ", cfg.vocab_size));
    }
  }
  // Per row: running max m (fp32, as the reference), sum z of exp(l - m) in fp64, target logit.
  std::vector<float> m(rows, -std::numeric_limits<float>::infinity());
  std::vector<double> z(rows, 0.0);
  std::vector<float> target_logit(rows, 0.0f);
  auto add_chunk = [&](int c0, const MatrixF& logits) -> absl::Status {
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
          if (targets[r] < 0) continue;
          const auto row = logits.row(r);
          const float mc = row.maxCoeff();
          const double zc = (row.array() - mc).exp().template cast<double>().sum();
          if (mc > m[r]) {
            z[r] = z[r] * std::exp(static_cast<double>(m[r]) - mc) + zc;
            m[r] = mc;
          } else {
            z[r] += zc * std::exp(static_cast<double>(mc) - m[r]);
          }
          const int t = targets[r];
          if (t >= c0 && t < c0 + logits.cols()) target_logit[r] = row[t - c0];
        }
        return absl::OkStatus();
  };
  QUANTD_RETURN_IF_ERROR(ForEachLogitsChunk(cfg, src, hidden, vocab_chunk, add_chunk));
  std::vector<double> nll(rows, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[r] < 0) continue;
    nll[r] = std::log(z[r]) + static_cast<double>(m[r]) - static_cast<double>(target_logit[r]);
  }
  return nll;
}

absl::StatusOr<MatrixF> ForwardBatchLogits(const LlamaConfig& cfg, WeightSource& src,
                                           absl::Span<const absl::Span<const int32_t>> sequences) {
  QUANTD_ASSIGN_OR_RETURN(MatrixF hidden, ForwardBatch(cfg, src, sequences));
  MatrixF out(hidden.rows(), cfg.vocab_size);
  QUANTD_RETURN_IF_ERROR(ForEachLogitsChunk(cfg, src, hidden, cfg.vocab_size,
                                            [&](int c0, const MatrixF& logits) {
                                              out.middleCols(c0, logits.cols()) = logits;
                                              return absl::OkStatus();
                                            }));
  return out;
}

}  // namespace quantd::model
