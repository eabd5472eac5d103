#include "engine/model/finetune_e2e.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include "common/status_macros.h"
#include "common/str_util.h"
#include "engine/model/adam.h"
#include "engine/model/backward_device.h"
#include "engine/model/forward_ops.h"
#include "engine/tokenizer/tokens.h"

namespace quantd::model {
namespace grad {

template <typename T>
void ModelGrads<T>::Zero(const ModelParams<T>& p, bool with_head) {
  blocks.resize(p.blocks.size());
  for (size_t l = 0; l < p.blocks.size(); ++l) blocks[l].Zero(p.blocks[l]);
  final_norm.setZero(p.final_norm.size());
  if (with_head) {
    head.setZero(p.head.rows(), p.head.cols());
  } else {
    head.resize(0, 0);
  }
}

template <typename T>
void ModelGrads<T>::Add(const ModelGrads& o) {
  for (size_t l = 0; l < blocks.size(); ++l) blocks[l].Add(o.blocks[l]);
  final_norm += o.final_norm;
  if (head.size() != 0) head += o.head;
}

absl::StatusOr<ModelDims> ModelDimsFor(const LlamaConfig& cfg) {
  if (cfg.final_softcap > 0) {
    return absl::FailedPreconditionError(
        "end-to-end fine-tuning does not support final logit soft-capping");
  }
  ModelDims d;
  for (int l = 0; l < cfg.num_layers; ++l) {
    QUANTD_ASSIGN_OR_RETURN(BlockDims b, BlockDimsFor(cfg, l));
    d.blocks.push_back(b);
  }
  d.eps = cfg.rms_norm_eps;
  return d;
}

namespace {

// Runs every block on x (in place: x becomes the last block's output); caches (nullable) gets
// one cache per block.
template <typename T>
void Blocks(const ModelDims& d, const ModelParams<T>& p, const Mat<T>& cos, const Mat<T>& sin,
            Mat<T>* x, std::vector<BlockCache<T>>* caches) {
  BlockCache<T> scratch;
  if (caches != nullptr) caches->resize(d.blocks.size());
  Mat<T> y;
  for (size_t l = 0; l < d.blocks.size(); ++l) {
    BlockForward<T>(d.blocks[l], p.blocks[l], cos, sin, *x,
                    caches != nullptr ? &(*caches)[l] : &scratch, &y);
    x->swap(y);
  }
}

// Row-wise log-softmax in place.
template <typename T>
void LogSoftmaxRows(Mat<T>* z) {
  for (Eigen::Index t = 0; t < z->rows(); ++t) {
    const T m = z->row(t).maxCoeff();
    const T lse = m + std::log((z->row(t).array() - m).exp().sum());
    z->row(t).array() -= lse;
  }
}

}  // namespace

template <typename T>
void SequenceLogProbs(const ModelDims& d, const ModelParams<T>& p, const Mat<T>& cos,
                      const Mat<T>& sin, const Mat<T>& x0, Mat<T>* logp) {
  Mat<T> x = x0, hn;
  Blocks<T>(d, p, cos, sin, &x, nullptr);
  Vec<T> r;
  RmsNormForward<T>(x, p.final_norm, static_cast<T>(d.eps), &hn, &r);
  logp->noalias() = hn * p.head.transpose();
  LogSoftmaxRows(logp);
}

// logits = norm(x_L)·headᵀ, lq = logsoftmax(logits), KL_t = Σ_v p_v (ref_v − lq_v) with
// p = exp(ref): ∂KL_t/∂logits_v = q_v·Σp − p_v. Then back through the head (∂hn = dz·head,
// ∂head = dzᵀ·hn), the final norm and every block in reverse order.
template <typename T>
absl::StatusOr<double> SequenceKlOn(const ModelDims& d, const ModelParams<T>& p, const Mat<T>& cos,
                                    const Mat<T>& sin, const Mat<T>& x0, const Mat<T>& ref_logp,
                                    T scale, ModelGrads<T>* g, quant::BackwardOps* ops) {
  std::vector<BlockCache<T>> caches;
  Mat<T> x = x0, hn;
  Blocks<T>(d, p, cos, sin, &x, g != nullptr ? &caches : nullptr);
  Vec<T> r;
  RmsNormForward<T>(x, p.final_norm, static_cast<T>(d.eps), &hn, &r);
  Mat<T> lq = hn * p.head.transpose();
  LogSoftmaxRows(&lq);
  double kl = 0;
  Mat<T> dz;
  if (g != nullptr) dz.resize(lq.rows(), lq.cols());
  for (Eigen::Index t = 0; t < lq.rows(); ++t) {
    const auto pr = ref_logp.row(t).array().exp().eval();
    kl += static_cast<double>((pr * (ref_logp.row(t).array() - lq.row(t).array())).sum());
    if (g != nullptr) dz.row(t) = scale * (lq.row(t).array().exp() * pr.sum() - pr).matrix();
  }
  if (g == nullptr) return kl;
  if (g->head.size() != 0) g->head.noalias() += dz.transpose() * hn;
  const Mat<T> dhn = dz * p.head;
  dz.resize(0, 0);
  Mat<T> dx;
  QUANTD_RETURN_IF_ERROR(OpsOn<T>(ops).RmsNorm(x, p.final_norm, r, dhn, &dx, &g->final_norm));
  for (int l = static_cast<int>(d.blocks.size()) - 1; l >= 0; --l) {
    Mat<T> dprev;
    QUANTD_RETURN_IF_ERROR(BlockBackwardOn<T>(d.blocks[l], p.blocks[l], cos, sin, caches[l], dx,
                                              &g->blocks[l], l > 0 ? &dprev : nullptr, ops));
    caches[l] = BlockCache<T>();  // free as we go
    dx.swap(dprev);
  }
  return kl;
}

template <typename T>
double SequenceKl(const ModelDims& d, const ModelParams<T>& p, const Mat<T>& cos, const Mat<T>& sin,
                  const Mat<T>& x0, const Mat<T>& ref_logp, T scale, ModelGrads<T>* g) {
  // backward_ops.h's code directly: cannot fail.
  return *SequenceKlOn<T>(d, p, cos, sin, x0, ref_logp, scale, g, nullptr);
}

#define QUANTD_E2E_INSTANTIATE(T)                                                               \
  template struct ModelGrads<T>;                                                                \
  template double SequenceKl<T>(const ModelDims&, const ModelParams<T>&, const Mat<T>&,         \
                                const Mat<T>&, const Mat<T>&, const Mat<T>&, T, ModelGrads<T>*); \
  template void SequenceLogProbs<T>(const ModelDims&, const ModelParams<T>&, const Mat<T>&,     \
                                    const Mat<T>&, const Mat<T>&, Mat<T>*);                     \
  template absl::StatusOr<double> SequenceKlOn<T>(const ModelDims&, const ModelParams<T>&,      \
                                                  const Mat<T>&, const Mat<T>&, const Mat<T>&,  \
                                                  const Mat<T>&, T, ModelGrads<T>*,             \
                                                  quant::BackwardOps*);

QUANTD_E2E_INSTANTIATE(float)
QUANTD_E2E_INSTANTIATE(double)
#undef QUANTD_E2E_INSTANTIATE

}  // namespace grad

namespace {

using MF = grad::Mat<float>;
using Params = grad::ModelParams<float>;
using Grads = grad::ModelGrads<float>;

// The tunable arrays, by position in Params (GradData's order).
std::vector<AdamSlot> Slots(Params* p, bool head) {
  std::vector<AdamSlot> s;
  auto add = [&](auto& m) { s.push_back({m.data(), m.size()}); };
  for (auto& b : p->blocks) {
    add(b.attn_norm);
    add(b.ffn_norm);
    for (auto& l : b.lin) add(l.a);
    for (auto& l : b.lin) add(l.b);
  }
  add(p->final_norm);
  if (head) add(p->head);
  return s;
}
std::vector<const float*> GradData(const Grads& g, bool head) {
  std::vector<const float*> s;
  for (const auto& b : g.blocks) {
    s.push_back(b.attn_norm.data());
    s.push_back(b.ffn_norm.data());
    for (const auto& a : b.a) s.push_back(a.data());
    for (const auto& v : b.b) s.push_back(v.data());
  }
  s.push_back(g.final_norm.data());
  if (head) s.push_back(g.head.data());
  return s;
}

Params ParamsOf(const LlamaConfig& cfg, const LlamaWeights& w) {
  Params p;
  for (const LayerWeights& lw : w.layers) p.blocks.push_back(grad::ParamsFromWeights<float>(lw));
  p.final_norm = w.final_norm;
  p.head = cfg.tie_word_embeddings ? w.embed : w.lm_head;
  return p;
}

std::vector<MF> Embedded(const LlamaConfig& cfg, const MatrixF& embed,
                         absl::Span<const int32_t> tokens, int nseq, int len) {
  std::vector<MF> x(nseq);
  for (int s = 0; s < nseq; ++s) {
    MF e(len, cfg.hidden_size);
    for (int t = 0; t < len; ++t) e.row(t) = embed.row(tokens[size_t{1} * s * len + t]);
    ops::ScaleEmbedding(cfg, &e);
    x[s] = std::move(e);
  }
  return x;
}

}  // namespace

absl::Status ValidateE2eOptions(const E2eOptions& o) {
  FinetuneOptions f;
  f.seq_len = o.seq_len;
  f.epochs = o.epochs;
  f.learning_rate = o.learning_rate;
  f.batch_sequences = o.batch_sequences;
  f.holdout_sequences = o.holdout_sequences;
  f.patience = o.patience;
  return ValidateFinetuneOptions(f);
}

absl::StatusOr<E2eReport> FinetuneEndToEnd(const LlamaConfig& cfg, const LlamaWeights& fp,
                                           LlamaWeights* q, absl::Span<const int32_t> calib,
                                           const E2eOptions& opts,
                                           std::vector<LayerScales>* scales,
                                           const E2eProgress& progress,
                                           quant::Device* device,
                                           const std::atomic<bool>* cancelled) {
  const auto t0 = std::chrono::steady_clock::now();
  QUANTD_RETURN_IF_ERROR(ValidateE2eOptions(opts));
  QUANTD_RETURN_IF_ERROR(CheckFinetuneWeights(cfg, fp, *q));
  QUANTD_ASSIGN_OR_RETURN(grad::ModelDims dims, grad::ModelDimsFor(cfg));
  if (opts.tune_head && cfg.tie_word_embeddings) {
    return absl::FailedPreconditionError(
        "end-to-end fine-tuning: the head is tied to the embedding (tie_word_embeddings); "
        "tune_head needs an untied head");
  }
  const auto bad_head = [&](const LlamaWeights& w) {
    const MatrixF& h = cfg.tie_word_embeddings ? w.embed : w.lm_head;
    return h.rows() != cfg.vocab_size || h.cols() != cfg.hidden_size ||
           w.embed.rows() != cfg.vocab_size || w.embed.cols() != cfg.hidden_size ||
           w.final_norm.size() != cfg.hidden_size;
  };
  if (bad_head(fp) || bad_head(*q)) {
    return absl::InvalidArgumentError(
        "end-to-end fine-tuning: embedding, final norm or head does not match the config");
  }
  if (scales != nullptr && !scales->empty()) {
    bool ok = static_cast<int>(scales->size()) == cfg.num_layers;
    for (int l = 0; ok && l < cfg.num_layers; ++l) {
      for (Linear lin : kAllLinears) {
        const auto [out, in] = LinearShape(cfg, lin);
        const int i = static_cast<int>(lin);
        ok = ok && (*scales)[l].out[i].size() == out && (*scales)[l].in[i].size() == in;
      }
    }
    if (!ok) {
      return absl::InvalidArgumentError(internal::Cat(
          "end-to-end fine-tuning: the given scales (", scales->size(),
          " layers) do not match the config's ", cfg.num_layers, " layers and linear shapes"));
    }
  }
  QUANTD_RETURN_IF_ERROR(ValidateTokens(calib, cfg.vocab_size));
  const int len = std::min(opts.seq_len, cfg.max_position_embeddings);
  const int nseq = static_cast<int>(calib.size() / len);
  const int ntrain = nseq - opts.holdout_sequences;
  if (ntrain < 1) {
    return absl::InvalidArgumentError(internal::Cat(
        "end-to-end fine-tuning needs more than ", opts.holdout_sequences, " sequences of ", len,
        " tokens; the calibration data has ", calib.size(), " tokens"));
  }
  MatrixF cos, sin;
  ops::RopeTables(cfg, len, &cos, &sin);

  // The fp model's log-probabilities on every sequence (the targets).
  std::vector<MF> ref(nseq);
  {
    const Params pf = ParamsOf(cfg, fp);
    const std::vector<MF> xf = Embedded(cfg, fp.embed, calib, nseq, len);
#pragma omp parallel for schedule(dynamic, 1)
    for (int s = 0; s < nseq; ++s) grad::SequenceLogProbs<float>(dims, pf, cos, sin, xf[s], &ref[s]);
  }
  const std::vector<MF> x = Embedded(cfg, q->embed, calib, nseq, len);
  Params p = ParamsOf(cfg, *q);
  const std::vector<AdamSlot> slots = Slots(&p, opts.tune_head);
  std::vector<Eigen::ArrayXf> best;
  for (const AdamSlot& s : slots) best.push_back(Eigen::Map<Eigen::ArrayXf>(s.data, s.size));

  // Mean KL per token over sequences [begin, end).
  auto mean_kl = [&](int begin, int end) {
    std::vector<double> kl(end - begin);
#pragma omp parallel for schedule(dynamic, 1)
    for (int s = begin; s < end; ++s) {
      kl[s - begin] = grad::SequenceKl<float>(dims, p, cos, sin, x[s], ref[s], 0.0f, nullptr);
    }
    double sum = 0;
    for (double k : kl) sum += k;
    return sum / (static_cast<double>(end - begin) * len);
  };

  E2eReport rep;
  rep.heldout_before = rep.heldout_best = mean_kl(ntrain, nseq);
  QUANTD_ASSIGN_OR_RETURN(BackwardOpsSession bw, BackwardOpsSession::Open(device));
  Adam<float> adam(slots, opts.learning_rate);  // moments in float (the head has v × d)
  std::vector<int> order(ntrain);
  for (int s = 0; s < ntrain; ++s) order[s] = s;
  std::mt19937_64 rng(0x5DEECE66DULL);
  int since_best = 0;
  for (int epoch = 0; epoch < opts.epochs; ++epoch) {
    std::shuffle(order.begin(), order.end(), rng);
    double train = 0;
    for (int b0 = 0; b0 < ntrain; b0 += opts.batch_sequences) {
      if (cancelled != nullptr && cancelled->load()) {
        return absl::CancelledError("end-to-end fine-tuning cancelled");
      }
      const int nb = std::min(opts.batch_sequences, ntrain - b0);
      const float scale = 1.0f / (static_cast<float>(nb) * static_cast<float>(len));
      std::vector<Grads> g(nb);
      std::vector<absl::StatusOr<double>> kl(nb);
      // A device's ops take one thread at a time; the CPU's run the sequences in parallel.
#pragma omp parallel for schedule(dynamic, 1) if (bw.on_host())
      for (int i = 0; i < nb; ++i) {
        g[i].Zero(p, opts.tune_head);
        const int s = order[b0 + i];
        kl[i] = grad::SequenceKlOn<float>(dims, p, cos, sin, x[s], ref[s], scale, &g[i],
                                          &bw.ops());
      }
      for (int i = 1; i < nb; ++i) g[0].Add(g[i]);
      for (const absl::StatusOr<double>& k : kl) {
        QUANTD_RETURN_IF_ERROR(k.status());
        train += *k;
      }
      adam.Step(GradData(g[0], opts.tune_head));
    }
    train /= static_cast<double>(ntrain) * len;
    if (epoch == 0) rep.train_first = train;
    rep.train_last = train;
    const double h = mean_kl(ntrain, nseq);
    rep.heldout_curve.push_back(h);
    rep.epochs_run = epoch + 1;
    bool stop = false;
    if (h < rep.heldout_best) {
      rep.heldout_best = h;
      for (size_t i = 0; i < slots.size(); ++i) {
        best[i] = Eigen::Map<Eigen::ArrayXf>(slots[i].data, slots[i].size);
      }
      since_best = 0;
    } else {
      stop = ++since_best >= opts.patience;
    }
    rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (progress) progress(rep);
    if (stop) break;
  }
  for (size_t i = 0; i < slots.size(); ++i) {
    Eigen::Map<Eigen::ArrayXf>(slots[i].data, slots[i].size) = best[i];
  }
  if (scales != nullptr && scales->empty()) {
    scales->assign(cfg.num_layers, LayerScales());
    for (int l = 0; l < cfg.num_layers; ++l) {
      for (int i = 0; i < grad::kBlockLinears; ++i) {
        (*scales)[l].out[i] = VectorF::Ones(p.blocks[l].lin[i].a.size());
        (*scales)[l].in[i] = VectorF::Ones(p.blocks[l].lin[i].b.size());
      }
    }
  }
  for (int l = 0; l < cfg.num_layers; ++l) {
    grad::WriteParams<float>(p.blocks[l], &q->layers[l]);
    if (scales == nullptr) continue;
    for (int i = 0; i < grad::kBlockLinears; ++i) {
      (*scales)[l].out[i] = (*scales)[l].out[i].cwiseProduct(p.blocks[l].lin[i].a);
      (*scales)[l].in[i] = (*scales)[l].in[i].cwiseProduct(p.blocks[l].lin[i].b);
    }
  }
  q->final_norm = p.final_norm;
  if (opts.tune_head) q->lm_head = p.head;
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

}  // namespace quantd::model
