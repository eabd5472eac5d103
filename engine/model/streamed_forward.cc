#include "engine/model/streamed_forward.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <utility>

#include <omp.h>

#include "common/status_macros.h"
#include "common/str_util.h"
#include "engine/model/forward_device.h"
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
                                     ActivationSink* sink, quant::ForwardOps* device_ops) {
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
  CpuForwardOps cpu_ops;
  quant::ForwardOps& ops = device_ops != nullptr ? *device_ops : cpu_ops;
  const int nseq = static_cast<int>(sequences.size());
  const int64_t N = offset.back();
  const int H = cfg.hidden_size, nh = cfg.num_heads, nkv = cfg.num_kv_heads, hd = cfg.head_dim;
  const float scale = cfg.AttentionScale();
  const float softcap = static_cast<float>(cfg.attn_softcap);
  const float eps = static_cast<float>(cfg.rms_norm_eps);
  const float norm_offset = cfg.norm_plus_one ? 1.0f : 0.0f;
  QUANTD_ASSIGN_OR_RETURN(ops::OnlineRhts online,
                          ops::MakeOnlineRhts(cfg, src.online_down(), src.online_o()));

  const ops::RopeTableSet rope(cfg, max_len);
  // The RoPE tables in the ops' memory, each bound once per forward.
  std::map<const MatrixF*, std::unique_ptr<quant::DeviceMatrix>> tables;
  auto table = [&](const MatrixF& t) -> absl::StatusOr<const quant::DeviceMatrix*> {
    auto& slot = tables[&t];
    if (slot == nullptr) {
      QUANTD_ASSIGN_OR_RETURN(slot, ops.BindWeight(t, quant::WeightDtype::kF32));
    }
    return slot.get();
  };

  std::unique_ptr<quant::DeviceMatrix> x = ops.NewMatrix();
  {
    MatrixF xh;
    std::vector<int32_t> all;
    all.reserve(N);
    for (const auto& seq : sequences) all.insert(all.end(), seq.begin(), seq.end());
    QUANTD_RETURN_IF_ERROR(src.Embed(all, &xh));
    ops::ScaleEmbedding(cfg, &xh);
    if (xh.rows() != N || xh.cols() != H) {
      return absl::InvalidArgumentError(internal::Cat("embedding rows are ", xh.cols(),
                                                     " wide, hidden_size is ", H));
    }
    if (MatrixF* hx = ops.HostMatrix(*x)) {
      *hx = std::move(xh);
    } else {
      QUANTD_RETURN_IF_ERROR(ops.Upload(xh, x.get()));
    }
  }

  auto h = ops.NewMatrix(), q = ops.NewMatrix(), k = ops.NewMatrix(), v = ops.NewMatrix();
  auto attn = ops.NewMatrix(), g = ops.NewMatrix(), u = ops.NewMatrix();
  for (int layer = 0; layer < cfg.num_layers; ++layer) {
    QUANTD_ASSIGN_OR_RETURN(const LayerWeights* lw, src.Layer(layer));
    QUANTD_RETURN_IF_ERROR(CheckLayer(cfg, layer, *lw));
    const quant::WeightDtype dtype = src.LayerDtype();
    QUANTD_ASSIGN_OR_RETURN(auto wq, ops.BindWeight(lw->q, dtype));
    QUANTD_ASSIGN_OR_RETURN(auto wk, ops.BindWeight(lw->k, dtype));
    QUANTD_ASSIGN_OR_RETURN(auto wv, ops.BindWeight(lw->v, dtype));
    QUANTD_ASSIGN_OR_RETURN(auto wo, ops.BindWeight(lw->o, dtype));
    if (sink) QUANTD_RETURN_IF_ERROR(sink->OnDeviceResidual(ops, layer, *x));
    QUANTD_RETURN_IF_ERROR(ops.RmsNorm(*x, lw->attn_norm, eps, norm_offset, h.get()));
    if (sink) QUANTD_RETURN_IF_ERROR(sink->OnDeviceInput(ops, layer, LinearGroup::kQkv, *h));
    QUANTD_RETURN_IF_ERROR(ops.MatMulT(*h, *wq, q.get(), false));
    QUANTD_RETURN_IF_ERROR(ops.MatMulT(*h, *wk, k.get(), false));
    QUANTD_RETURN_IF_ERROR(ops.MatMulT(*h, *wv, v.get(), false));
    if (lw->q_bias.size() != 0 || lw->k_bias.size() != 0 || lw->v_bias.size() != 0 ||
        lw->q_norm.size() != 0 || lw->k_norm.size() != 0) {
      // Qwen2's biases, Qwen3's q/k norms: host code (no device kernel).
      QUANTD_RETURN_IF_ERROR(OnHost(ops, {}, {q.get(), k.get(), v.get()},
                                    [&](auto, absl::Span<MatrixF* const> m) {
                                      ops::QkvPost(cfg, *lw, m[0], m[1], m[2]);
                                      return absl::OkStatus();
                                    }));
    }
    const int window = cfg.LayerWindow(layer);
    for (int s = 0; s < nseq; ++s) {
      const Eigen::Index T = offset[s + 1] - offset[s];
      const MatrixF &c = rope.Cos(cfg, layer, static_cast<int>(T)),
                     &sn = rope.Sin(cfg, layer, static_cast<int>(T));
      QUANTD_ASSIGN_OR_RETURN(const quant::DeviceMatrix* dc, table(c));
      QUANTD_ASSIGN_OR_RETURN(const quant::DeviceMatrix* ds, table(sn));
      for (int which = 0; which < 2; ++which) {
        quant::DeviceMatrix* m = which == 0 ? q.get() : k.get();
        const int heads = which == 0 ? nh : nkv;
        absl::Status st = ops.ApplyRope(*dc, *ds, heads, hd, offset[s], T, m);
        if (Declined(st)) {
          st = OnHost(ops, {}, {m}, [&](auto, absl::Span<MatrixF* const> o) {
            ops::ApplyRope(c, sn, heads, hd, o[0]->middleRows(offset[s], T));
            return absl::OkStatus();
          });
        }
        QUANTD_RETURN_IF_ERROR(st);
      }
    }
    QUANTD_RETURN_IF_ERROR(ops.Scale(scale, q.get()));
    {
      absl::Status st = ops.Attention(*q, *k, *v, offset, nh, nkv, hd, window, softcap, attn.get());
      if (Declined(st)) {
        st = OnHost(ops, {q.get(), k.get(), v.get()}, {attn.get()},
                    [&](absl::Span<const MatrixF* const> in, absl::Span<MatrixF* const> out) {
                      host::Attention(*in[0], *in[1], *in[2], offset, nh, nkv, hd, window,
                                      softcap, out[0]);
                      return absl::OkStatus();
                    });
      }
      QUANTD_RETURN_IF_ERROR(st);
    }
    if (online.o) {  // QuaRot: rows ← (R_o ⊗ I)·rows
      QUANTD_RETURN_IF_ERROR(OnHost(ops, {}, {attn.get()}, [&](auto, absl::Span<MatrixF* const> m) {
        ApplyAcrossHeads(*online.o, hd, m[0]);
        return absl::OkStatus();
      }));
    }
    if (sink) QUANTD_RETURN_IF_ERROR(sink->OnDeviceInput(ops, layer, LinearGroup::kO, *attn));
    if (ops::PlainResidual(lw->o_bias, lw->post_attn_norm)) {
      QUANTD_RETURN_IF_ERROR(ops.MatMulT(*attn, *wo, x.get(), /*accumulate=*/true));
    } else {
      QUANTD_RETURN_IF_ERROR(ops.MatMulT(*attn, *wo, h.get(), false));  // h is free again
      QUANTD_RETURN_IF_ERROR(OnHost(ops, {}, {h.get(), x.get()},
                                    [&](auto, absl::Span<MatrixF* const> m) {
                                      ops::AddResidual(cfg, lw->o_bias, lw->post_attn_norm, m[0],
                                                       m[1]);
                                      return absl::OkStatus();
                                    }));
    }
    wq.reset();
    wk.reset();
    wv.reset();
    wo.reset();

    QUANTD_ASSIGN_OR_RETURN(auto wg, ops.BindWeight(lw->gate, dtype));
    QUANTD_ASSIGN_OR_RETURN(auto wu, ops.BindWeight(lw->up, dtype));
    QUANTD_ASSIGN_OR_RETURN(auto wd, ops.BindWeight(lw->down, dtype));
    QUANTD_RETURN_IF_ERROR(ops.RmsNorm(*x, lw->ffn_norm, eps, norm_offset, h.get()));
    if (sink) QUANTD_RETURN_IF_ERROR(sink->OnDeviceInput(ops, layer, LinearGroup::kGateUp, *h));
    QUANTD_RETURN_IF_ERROR(ops.MatMulT(*h, *wg, g.get(), false));
    QUANTD_RETURN_IF_ERROR(ops.MatMulT(*h, *wu, u.get(), false));
    {
      absl::Status st = cfg.act == Activation::kSilu ? ops.SiluMul(*u, g.get())
                                                     : absl::UnimplementedError("GeGLU");
      if (Declined(st)) {
        st = OnHost(ops, {u.get()}, {g.get()},
                    [&](absl::Span<const MatrixF* const> in, absl::Span<MatrixF* const> out) {
                      ops::GatedActivation(cfg, *in[0], out[0]);
                      return absl::OkStatus();
                    });
      }
      QUANTD_RETURN_IF_ERROR(st);
    }
    if (online.down) {  // QuaRot: rows ← R_down·rows
      QUANTD_RETURN_IF_ERROR(OnHost(ops, {}, {g.get()}, [&](auto, absl::Span<MatrixF* const> m) {
        online.down->ApplyRows(m[0]);
        return absl::OkStatus();
      }));
    }
    if (sink) QUANTD_RETURN_IF_ERROR(sink->OnDeviceInput(ops, layer, LinearGroup::kDown, *g));
    if (ops::PlainResidual(VectorF(), lw->post_ffn_norm)) {
      QUANTD_RETURN_IF_ERROR(ops.MatMulT(*g, *wd, x.get(), /*accumulate=*/true));
    } else {
      QUANTD_RETURN_IF_ERROR(ops.MatMulT(*g, *wd, h.get(), false));
      QUANTD_RETURN_IF_ERROR(OnHost(ops, {}, {h.get(), x.get()},
                                    [&](auto, absl::Span<MatrixF* const> m) {
                                      ops::AddResidual(cfg, VectorF(), lw->post_ffn_norm, m[0],
                                                       m[1]);
                                      return absl::OkStatus();
                                    }));
    }
    if (sink) {
      QUANTD_RETURN_IF_ERROR(sink->OnLayerDone(layer));
      if (sink->StopAfterLayer() == layer) return MatrixF(0, H);
    }
  }
  QUANTD_ASSIGN_OR_RETURN(VectorF final_norm, src.FinalNorm());
  if (final_norm.size() != H) return absl::InvalidArgumentError("model.norm: size mismatch");
  QUANTD_RETURN_IF_ERROR(ops.RmsNorm(*x, final_norm, eps, norm_offset, h.get()));
  if (MatrixF* hh = ops.HostMatrix(*h)) return std::move(*hh);
  MatrixF out;
  QUANTD_RETURN_IF_ERROR(ops.Download(*h, &out));
  return out;
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

int64_t DeviceForwardBytes(const LlamaConfig& cfg, int64_t rows, bool hessian, int vocab_chunk) {
  const int64_t d = cfg.hidden_size, ff = cfg.intermediate_size;
  const int64_t q = static_cast<int64_t>(cfg.num_heads) * cfg.head_dim;
  int64_t bytes = LayerWeightBytes(cfg) + 4 * std::max(d, q) * std::max({d, q, ff}) +
                  BatchBytesPerToken(cfg) * rows + 2 * rows * std::max({d, q, ff});
  if (hessian) {
    bytes += 8 * (2 * d * d + q * q + ff * ff) + 8 * std::min<int64_t>(rows * ff, int64_t{1} << 25);
  }
  if (vocab_chunk > 0) bytes += 4 * rows * vocab_chunk + 6 * int64_t{vocab_chunk} * d + 24 * rows;
  return bytes;
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
                                           absl::Span<const int32_t> targets, int vocab_chunk,
                                           quant::ForwardOps* device_ops) {
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
  if (hidden.cols() != cfg.hidden_size) {
    return absl::InvalidArgumentError(internal::Cat("hidden states are ", hidden.cols(),
                                                   " wide, hidden_size is ", cfg.hidden_size));
  }
  CpuForwardOps cpu_ops;
  quant::ForwardOps& ops = device_ops != nullptr ? *device_ops : cpu_ops;
  // Per row: running max m (fp32, as the reference), sum z of exp(l - m) in fp64, target logit.
  quant::NllState st;
  st.Reset(rows);
  QUANTD_ASSIGN_OR_RETURN(auto hd, ops.BindWeight(hidden, quant::WeightDtype::kF32));
  const int chunk = vocab_chunk > 0 ? vocab_chunk : DefaultVocabChunk(cfg, rows);
  const float cap = static_cast<float>(cfg.final_softcap);
  MatrixF head;
  auto logits = ops.NewMatrix();
  for (int c0 = 0; c0 < cfg.vocab_size; c0 += chunk) {
    const int n = std::min(chunk, cfg.vocab_size - c0);
    QUANTD_RETURN_IF_ERROR(src.Head(c0, n, &head));
    QUANTD_ASSIGN_OR_RETURN(auto wh, ops.BindWeight(head, src.HeadDtype()));
    QUANTD_RETURN_IF_ERROR(ops.MatMulT(*hd, *wh, logits.get(), false));
    if (cfg.final_softcap > 0) {
      absl::Status s = ops.Softcap(cap, logits.get());
      if (Declined(s)) {
        s = OnHost(ops, {}, {logits.get()}, [&](auto, absl::Span<MatrixF* const> m) {
          ops::Softcap(cap, m[0]);
          return absl::OkStatus();
        });
      }
      QUANTD_RETURN_IF_ERROR(s);
    }
    absl::Status s = ops.NllChunk(*logits, c0, targets, &st);
    if (Declined(s)) {
      s = OnHost(ops, {logits.get()}, {}, [&](absl::Span<const MatrixF* const> in, auto) {
        host::NllChunk(*in[0], c0, targets, &st);
        return absl::OkStatus();
      });
    }
    QUANTD_RETURN_IF_ERROR(s);
  }
  std::vector<double> nll(rows, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[r] < 0) continue;
    nll[r] = std::log(st.sum[r]) + static_cast<double>(st.max[r]) -
             static_cast<double>(st.target_logit[r]);
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
