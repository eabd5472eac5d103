#include "engine/model/finetune.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include "common/status_macros.h"
#include "common/str_util.h"
#include "engine/model/adam.h"
#include "engine/model/backward_device.h"
#include "engine/model/block_grad.h"
#include "engine/model/forward_ops.h"
#include "engine/model/weight_source.h"
#include "engine/tokenizer/tokens.h"

namespace quantd::model {
namespace {

using MF = grad::Mat<float>;
using Params = grad::BlockParams<float>;
using Grads = grad::BlockGrads<float>;

// The tunable vectors of a block, in a fixed order (norms, then a and b of each linear).
std::vector<VectorF*> Tunables(Params* p) {
  std::vector<VectorF*> v = {&p->attn_norm, &p->ffn_norm};
  for (auto& l : p->lin) v.push_back(&l.a);
  for (auto& l : p->lin) v.push_back(&l.b);
  return v;
}
std::vector<AdamSlot> Slots(const std::vector<VectorF*>& v) {
  std::vector<AdamSlot> s;
  for (VectorF* p : v) s.push_back({p->data(), p->size()});
  return s;
}
std::vector<const float*> GradData(const Grads& g) {
  std::vector<const float*> v = {g.attn_norm.data(), g.ffn_norm.data()};
  for (const VectorF& a : g.a) v.push_back(a.data());
  for (const VectorF& b : g.b) v.push_back(b.data());
  return v;
}

// y[s] = block(x[s]) for every sequence s (in parallel).
void ForwardAll(const grad::BlockDims& d, const Params& p, const MF& cos, const MF& sin,
                const std::vector<MF>& x, std::vector<MF>* y) {
  y->resize(x.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int s = 0; s < static_cast<int>(x.size()); ++s) {
    grad::BlockCache<float> cache;
    grad::BlockForward<float>(d, p, cos, sin, x[s], &cache, &(*y)[s]);
  }
}

// Σ (y − target)² / Σ target² over sequences [begin, end), in double.
double RelativeLoss(const std::vector<MF>& y, const std::vector<MF>& target, int begin, int end) {
  double err = 0, energy = 0;
  for (int s = begin; s < end; ++s) {
    err += (y[s] - target[s]).cast<double>().squaredNorm();
    energy += target[s].cast<double>().squaredNorm();
  }
  return energy > 0 ? err / energy : 0.0;
}

absl::Status CheckSameShapes(const LlamaConfig& cfg, const LlamaWeights& fp,
                             const LlamaWeights& q) {
  if (static_cast<int>(fp.layers.size()) != cfg.num_layers ||
      static_cast<int>(q.layers.size()) != cfg.num_layers) {
    return absl::InvalidArgumentError(internal::Cat(
        "fine-tuning: the fp model has ", fp.layers.size(), " layers and the quantized one ",
        q.layers.size(), "; config says ", cfg.num_layers));
  }
  if (fp.online_down.size != 0 || fp.online_o.size != 0 || q.online_down.size != 0 ||
      q.online_o.size != 0) {
    return absl::FailedPreconditionError(
        "fine-tuning does not support online rotations (quarot models)");
  }
  for (int l = 0; l < cfg.num_layers; ++l) {
    for (Linear lin : kAllLinears) {
      const auto [out, in] = LinearShape(cfg, lin);
      for (const LlamaWeights* w : {&fp, &q}) {
        const MatrixF& m = GetLinear(*w, l, lin);
        if (m.rows() != out || m.cols() != in) {
          return absl::InvalidArgumentError(internal::Cat(
              "fine-tuning: layer ", l, " ", LinearName(lin), " has shape [", m.rows(), ",",
              m.cols(), "], config says [", out, ",", in, "]"));
        }
      }
    }
    QUANTD_RETURN_IF_ERROR(CheckLayerVectors(cfg, l, fp.layers[l]));
    QUANTD_RETURN_IF_ERROR(CheckLayerVectors(cfg, l, q.layers[l]));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckFinetuneWeights(const LlamaConfig& cfg, const LlamaWeights& fp,
                                  const LlamaWeights& q) {
  return CheckSameShapes(cfg, fp, q);
}

absl::Status ValidateFinetuneOptions(const FinetuneOptions& o) {
  if (o.seq_len < 2) return absl::InvalidArgumentError(internal::Cat("finetune seq_len ", o.seq_len, " < 2"));
  if (o.epochs < 0 || o.epochs > 1000)
    return absl::InvalidArgumentError(internal::Cat("finetune epochs ", o.epochs, " not in 0..1000"));
  if (!(o.learning_rate > 0 && o.learning_rate <= 1))
    return absl::InvalidArgumentError(
        internal::Cat("finetune learning rate ", o.learning_rate, " not in (0, 1]"));
  if (o.batch_sequences < 1)
    return absl::InvalidArgumentError(internal::Cat("finetune batch ", o.batch_sequences, " < 1"));
  if (o.holdout_sequences < 1)
    return absl::InvalidArgumentError(
        internal::Cat("finetune held-out sequences ", o.holdout_sequences, " < 1"));
  if (o.patience < 1)
    return absl::InvalidArgumentError(internal::Cat("finetune patience ", o.patience, " < 1"));
  return absl::OkStatus();
}

absl::StatusOr<BlockFinetuner> BlockFinetuner::Start(const LlamaConfig& cfg, WeightSource& fp,
                                                     WeightSource& q,
                                                     absl::Span<const int32_t> calib,
                                                     const FinetuneOptions& opts,
                                                     quant::Device* device) {
  QUANTD_RETURN_IF_ERROR(ValidateFinetuneOptions(opts));
  if (fp.online_down().size != 0 || fp.online_o().size != 0 || q.online_down().size != 0 ||
      q.online_o().size != 0) {
    return absl::FailedPreconditionError(
        "fine-tuning does not support online rotations (quarot models)");
  }
  QUANTD_RETURN_IF_ERROR(ValidateTokens(calib, cfg.vocab_size));
  BlockFinetuner f;
  f.cfg_ = cfg;
  f.opts_ = opts;
  f.device_ = device;
  const int len = std::min(opts.seq_len, cfg.max_position_embeddings);
  const int nseq = static_cast<int>(calib.size() / len);
  f.ntrain_ = nseq - opts.holdout_sequences;
  if (f.ntrain_ < 1) {
    return absl::InvalidArgumentError(internal::Cat(
        "fine-tuning needs more than ", opts.holdout_sequences, " sequences of ", len,
        " tokens; the calibration data has ", calib.size(), " tokens"));
  }
  ops::RopeTables(cfg, len, &f.cos_, &f.sin_);
  // Activations entering the current block: through the fp model and through the tuned one.
  f.x_fp_.resize(nseq);
  f.x_q_.resize(nseq);
  for (int s = 0; s < nseq; ++s) {
    const absl::Span<const int32_t> seq = calib.subspan(size_t{1} * s * len, len);
    QUANTD_RETURN_IF_ERROR(fp.Embed(seq, &f.x_fp_[s]));
    ops::ScaleEmbedding(cfg, &f.x_fp_[s]);
    QUANTD_RETURN_IF_ERROR(q.Embed(seq, &f.x_q_[s]));
    ops::ScaleEmbedding(cfg, &f.x_q_[s]);
  }
  return f;
}

absl::Status BlockFinetuner::CheckLayer(const LayerWeights& fp, const LayerWeights& q) const {
  const int l = layer_;
  if (l >= cfg_.num_layers) {
    return absl::InvalidArgumentError(
        internal::Cat("fine-tuning: every one of the ", cfg_.num_layers, " blocks is done"));
  }
  for (Linear lin : kAllLinears) {
    const auto [out, in] = LinearShape(cfg_, lin);
    for (const LayerWeights* w : {&fp, &q}) {
      const MatrixF& m = GetLinear(*w, lin);
      if (m.rows() != out || m.cols() != in) {
        return absl::InvalidArgumentError(internal::Cat(
            "fine-tuning: layer ", l, " ", LinearName(lin), " has shape [", m.rows(), ",",
            m.cols(), "], config says [", out, ",", in, "]"));
      }
    }
  }
  QUANTD_RETURN_IF_ERROR(CheckLayerVectors(cfg_, l, fp));
  return CheckLayerVectors(cfg_, l, q);
}

absl::StatusOr<BlockTuneReport> BlockFinetuner::TuneBlock(const LayerWeights& fp,
                                                          const LayerWeights& q,
                                                          TunedBlock* tuned) {
  QUANTD_RETURN_IF_ERROR(CheckLayer(fp, q));
  const int l = layer_;
  QUANTD_ASSIGN_OR_RETURN(const grad::BlockDims d, grad::BlockDimsFor(cfg_, l));
  const auto t0 = std::chrono::steady_clock::now();
  const int ntrain = ntrain_;
  const MF& cos = cos_;
  const MF& sin = sin_;
  std::vector<MF>& x_q = x_q_;
  std::vector<MF> target;
  ForwardAll(d, grad::ParamsFromWeights<float>(fp), cos, sin, x_fp_, &target);
  Params p = grad::ParamsFromWeights<float>(q);
  std::vector<VectorF*> tun = Tunables(&p);
  std::vector<VectorF> best;
  for (const VectorF* v : tun) best.push_back(*v);

  BlockTuneReport rep;
  rep.layer = l;
  std::vector<MF> y;
  auto heldout = [&] {
    std::vector<MF> xs(x_q.begin() + ntrain, x_q.end()), ts(target.begin() + ntrain, target.end());
    ForwardAll(d, p, cos, sin, xs, &y);
    return RelativeLoss(y, ts, 0, static_cast<int>(ts.size()));
  };
  rep.heldout_before = rep.heldout_best = heldout();
  QUANTD_ASSIGN_OR_RETURN(BackwardOpsSession bw, BackwardOpsSession::Open(device_));
  Adam<double> adam(Slots(tun), opts_.learning_rate);  // moments in double
  std::vector<int> order(ntrain);
  for (int s = 0; s < ntrain; ++s) order[s] = s;
  std::mt19937_64 rng(0x9E3779B97F4A7C15ULL ^ static_cast<uint64_t>(l));
  int since_best = 0;
  for (int epoch = 0; epoch < opts_.epochs; ++epoch) {
    std::shuffle(order.begin(), order.end(), rng);
    for (int b0 = 0; b0 < ntrain; b0 += opts_.batch_sequences) {
      const int nb = std::min(opts_.batch_sequences, ntrain - b0);
      std::vector<Grads> g(nb);
      std::vector<double> energy(nb);
      std::vector<MF> dy(nb);
      std::vector<grad::BlockCache<float>> cache(nb);
#pragma omp parallel for schedule(dynamic, 1)
      for (int i = 0; i < nb; ++i) {
        const int s = order[b0 + i];
        MF out;
        grad::BlockForward<float>(d, p, cos, sin, x_q[s], &cache[i], &out);
        dy[i] = out - target[s];
        energy[i] = target[s].cast<double>().squaredNorm();
      }
      double total = 0;
      for (double e : energy) total += e;
      const float k = total > 0 ? static_cast<float>(2.0 / total) : 0.0f;
      std::vector<absl::Status> st(nb);
      // A device's ops take one thread at a time; the CPU's run the sequences in parallel.
#pragma omp parallel for schedule(dynamic, 1) if (bw.on_host())
      for (int i = 0; i < nb; ++i) {
        g[i].Zero(p);
        dy[i] *= k;  // ∂(Σ(y − Y)² / ΣY²)/∂y
        st[i] = grad::BlockBackwardOn<float>(d, p, cos, sin, cache[i], dy[i], &g[i], nullptr,
                                             &bw.ops());
      }
      for (const absl::Status& s : st) QUANTD_RETURN_IF_ERROR(s);
      for (int i = 1; i < nb; ++i) g[0].Add(g[i]);
      adam.Step(GradData(g[0]));
    }
    const double h = heldout();
    rep.heldout_curve.push_back(h);
    rep.epochs_run = epoch + 1;
    if (h < rep.heldout_best) {
      rep.heldout_best = h;
      for (size_t i = 0; i < tun.size(); ++i) best[i] = *tun[i];
      since_best = 0;
    } else if (++since_best >= opts_.patience) {
      break;
    }
  }
  for (size_t i = 0; i < tun.size(); ++i) *tun[i] = best[i];
  tuned->attn_norm = p.attn_norm;
  tuned->ffn_norm = p.ffn_norm;
  for (int i = 0; i < grad::kBlockLinears; ++i) {
    tuned->scales.out[i] = p.lin[i].a;
    tuned->scales.in[i] = p.lin[i].b;
  }
  // The next block's inputs: through the tuned block, and through the fp block.
  std::vector<MF> next;
  ForwardAll(d, p, cos, sin, x_q, &next);
  x_q = std::move(next);
  x_fp_ = std::move(target);
  ++layer_;
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

absl::Status BlockFinetuner::ReplayBlock(const LayerWeights& fp, const LayerWeights& q,
                                         const TunedBlock& tuned) {
  QUANTD_RETURN_IF_ERROR(CheckLayer(fp, q));
  const int l = layer_;
  QUANTD_ASSIGN_OR_RETURN(const grad::BlockDims d, grad::BlockDimsFor(cfg_, l));
  Params p = grad::ParamsFromWeights<float>(q);
  auto check = [&](const VectorF& v, const VectorF& like, const char* what, int i) {
    if (v.size() == like.size()) return absl::OkStatus();
    return absl::InvalidArgumentError(internal::Cat("fine-tuning: layer ", l, " tuned ", what,
                                                    i < 0 ? "" : " of ",
                                                    i < 0 ? "" : LinearName(kAllLinears[i]),
                                                    " has ", v.size(), " values, not ",
                                                    like.size()));
  };
  QUANTD_RETURN_IF_ERROR(check(tuned.attn_norm, p.attn_norm, "attention norm", -1));
  QUANTD_RETURN_IF_ERROR(check(tuned.ffn_norm, p.ffn_norm, "ffn norm", -1));
  for (int i = 0; i < grad::kBlockLinears; ++i) {
    QUANTD_RETURN_IF_ERROR(check(tuned.scales.out[i], p.lin[i].a, "output scale", i));
    QUANTD_RETURN_IF_ERROR(check(tuned.scales.in[i], p.lin[i].b, "input scale", i));
  }
  p.attn_norm = tuned.attn_norm;
  p.ffn_norm = tuned.ffn_norm;
  for (int i = 0; i < grad::kBlockLinears; ++i) {
    p.lin[i].a = tuned.scales.out[i];
    p.lin[i].b = tuned.scales.in[i];
  }
  std::vector<MF> next_fp, next_q;
  ForwardAll(d, grad::ParamsFromWeights<float>(fp), cos_, sin_, x_fp_, &next_fp);
  ForwardAll(d, p, cos_, sin_, x_q_, &next_q);
  x_fp_ = std::move(next_fp);
  x_q_ = std::move(next_q);
  ++layer_;
  return absl::OkStatus();
}

absl::Status ApplyTunedBlock(const TunedBlock& t, LayerWeights* lw) {
  grad::BlockParams<float> p = grad::ParamsFromWeights<float>(*lw);
  bool ok = t.attn_norm.size() == p.attn_norm.size() && t.ffn_norm.size() == p.ffn_norm.size();
  for (int i = 0; ok && i < grad::kBlockLinears; ++i) {
    ok = t.scales.out[i].size() == p.lin[i].a.size() && t.scales.in[i].size() == p.lin[i].b.size();
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        "fine-tuning: a tuned block's norms or scales do not match the layer's shapes");
  }
  p.attn_norm = t.attn_norm;
  p.ffn_norm = t.ffn_norm;
  for (int i = 0; i < grad::kBlockLinears; ++i) {
    p.lin[i].a = t.scales.out[i];
    p.lin[i].b = t.scales.in[i];
  }
  grad::WriteParams<float>(p, lw);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<BlockTuneReport>> FinetuneBlocks(
    const LlamaConfig& cfg, const LlamaWeights& fp, LlamaWeights* q,
    absl::Span<const int32_t> calib, const FinetuneOptions& opts,
    std::vector<LayerScales>* scales, const FinetuneProgress& progress, quant::Device* device) {
  QUANTD_RETURN_IF_ERROR(ValidateFinetuneOptions(opts));
  QUANTD_RETURN_IF_ERROR(CheckSameShapes(cfg, fp, *q));
  for (int l = 0; l < cfg.num_layers; ++l) {
    QUANTD_RETURN_IF_ERROR(grad::BlockDimsFor(cfg, l).status());
  }
  MemoryWeightSource fp_src(cfg, fp), q_src(cfg, *q);
  QUANTD_ASSIGN_OR_RETURN(BlockFinetuner f, BlockFinetuner::Start(cfg, fp_src, q_src, calib, opts,
                                                                   device));
  if (scales != nullptr) scales->assign(cfg.num_layers, LayerScales());
  std::vector<BlockTuneReport> reports;
  for (int l = 0; l < cfg.num_layers; ++l) {
    TunedBlock t;
    QUANTD_ASSIGN_OR_RETURN(BlockTuneReport rep, f.TuneBlock(fp.layers[l], q->layers[l], &t));
    QUANTD_RETURN_IF_ERROR(ApplyTunedBlock(t, &q->layers[l]));
    if (scales != nullptr) (*scales)[l] = std::move(t.scales);
    if (progress) progress(rep);
    reports.push_back(std::move(rep));
  }
  return reports;
}

}  // namespace quantd::model
