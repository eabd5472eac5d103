#include "engine/model/block_grad.h"

#include "common/status_macros.h"
#include "common/str_util.h"
#include "engine/model/backward_device.h"

namespace quantd::model::grad {
namespace {

constexpr int kQ = 0, kK = 1, kV = 2, kO = 3, kGate = 4, kUp = 5, kDown = 6;
static_assert(static_cast<int>(Linear::kQ) == kQ && static_cast<int>(Linear::kDown) == kDown);

}  // namespace

absl::StatusOr<BlockDims> BlockDimsFor(const LlamaConfig& cfg, int layer) {
  const char* why = nullptr;
  if (cfg.qkv_bias || cfg.o_bias) why = "attention biases";
  if (cfg.qk_norm) why = "q/k norms";
  if (cfg.LayerWindow(layer) > 0) why = "a sliding window";
  if (cfg.attn_softcap > 0) why = "attention soft-capping";
  if (cfg.norm_plus_one) why = "(1 + w) norms";
  if (cfg.sandwich_norms) why = "sandwich norms";
  if (cfg.act != Activation::kSilu) why = "an activation other than SwiGLU";
  if (why != nullptr) {
    return absl::FailedPreconditionError(internal::Cat(
        "fine-tuning supports the plain Llama block only; layer ", layer, " has ", why));
  }
  BlockDims d;
  d.hidden = cfg.hidden_size;
  d.heads = cfg.num_heads;
  d.kv_heads = cfg.num_kv_heads;
  d.head_dim = cfg.head_dim;
  d.intermediate = cfg.intermediate_size;
  d.eps = cfg.rms_norm_eps;
  d.attn_scale = cfg.AttentionScale();
  return d;
}

template <typename T>
void BlockGrads<T>::Zero(const BlockParams<T>& p) {
  attn_norm.setZero(p.attn_norm.size());
  ffn_norm.setZero(p.ffn_norm.size());
  for (int i = 0; i < kBlockLinears; ++i) {
    a[i].setZero(p.lin[i].a.size());
    b[i].setZero(p.lin[i].b.size());
  }
}

template <typename T>
void BlockGrads<T>::Add(const BlockGrads& o) {
  attn_norm += o.attn_norm;
  ffn_norm += o.ffn_norm;
  for (int i = 0; i < kBlockLinears; ++i) {
    a[i] += o.a[i];
    b[i] += o.b[i];
  }
}

template <typename T>
BlockParams<T> ParamsFromWeights(const LayerWeights& lw) {
  BlockParams<T> p;
  p.attn_norm = lw.attn_norm.cast<T>();
  p.ffn_norm = lw.ffn_norm.cast<T>();
  for (Linear l : kAllLinears) {
    ScaledLinear<T>& s = p.lin[static_cast<int>(l)];
    s.c = GetLinear(lw, l).cast<T>();
    s.a = Vec<T>::Ones(s.c.rows());
    s.b = Vec<T>::Ones(s.c.cols());
  }
  return p;
}

template <typename T>
void WriteParams(const BlockParams<T>& p, LayerWeights* lw) {
  lw->attn_norm = p.attn_norm.template cast<float>();
  lw->ffn_norm = p.ffn_norm.template cast<float>();
  for (Linear l : kAllLinears) {
    const ScaledLinear<T>& s = p.lin[static_cast<int>(l)];
    MutableLinear(*lw, l) = (s.a.asDiagonal() * s.c * s.b.asDiagonal()).template cast<float>();
  }
}

template <typename T>
void BlockForward(const BlockDims& d, const BlockParams<T>& p, const Mat<T>& cos,
                  const Mat<T>& sin, const Mat<T>& x, BlockCache<T>* c, Mat<T>* y) {
  const int hd = d.head_dim, group = d.heads / d.kv_heads;
  const Eigen::Index n = x.rows();
  c->x = x;
  RmsNormForward<T>(x, p.attn_norm, static_cast<T>(d.eps), &c->h1, &c->r1);
  ScaledLinearForward<T>(c->h1, p.lin[kQ].c, p.lin[kQ].a, p.lin[kQ].b, &c->z[kQ], &c->q);
  ScaledLinearForward<T>(c->h1, p.lin[kK].c, p.lin[kK].a, p.lin[kK].b, &c->z[kK], &c->k);
  ScaledLinearForward<T>(c->h1, p.lin[kV].c, p.lin[kV].a, p.lin[kV].b, &c->z[kV], &c->v);
  Rope<T>(cos, sin, d.heads, hd, false, &c->q);
  Rope<T>(cos, sin, d.kv_heads, hd, false, &c->k);
  c->q *= static_cast<T>(d.attn_scale);
  c->attn.resize(n, d.heads * hd);
  c->p.resize(d.heads);
  for (int h = 0; h < d.heads; ++h) {
    const int kvh = h / group;
    AttentionForward<T>(c->q.middleCols(h * hd, hd), c->k.middleCols(kvh * hd, hd),
                        c->v.middleCols(kvh * hd, hd), c->attn.middleCols(h * hd, hd), &c->p[h]);
  }
  Mat<T> o;
  ScaledLinearForward<T>(c->attn, p.lin[kO].c, p.lin[kO].a, p.lin[kO].b, &c->z[kO], &o);
  c->x2 = x + o;
  RmsNormForward<T>(c->x2, p.ffn_norm, static_cast<T>(d.eps), &c->h2, &c->r2);
  ScaledLinearForward<T>(c->h2, p.lin[kGate].c, p.lin[kGate].a, p.lin[kGate].b, &c->z[kGate],
                         &c->g);
  ScaledLinearForward<T>(c->h2, p.lin[kUp].c, p.lin[kUp].a, p.lin[kUp].b, &c->z[kUp], &c->u);
  SiluMulForward<T>(c->g, c->u, &c->act);
  Mat<T> down;
  ScaledLinearForward<T>(c->act, p.lin[kDown].c, p.lin[kDown].a, p.lin[kDown].b, &c->z[kDown],
                         &down);
  *y = c->x2 + down;
}

template <typename T>
absl::Status BlockBackwardOn(const BlockDims& d, const BlockParams<T>& p, const Mat<T>& cos,
                             const Mat<T>& sin, const BlockCache<T>& c, const Mat<T>& dy,
                             BlockGrads<T>* g, Mat<T>* dx, quant::BackwardOps* dev) {
  OpsOn<T> ops(dev);
  const int hd = d.head_dim;
  auto lin = [&](int i, const Mat<T>& in, const Mat<T>& dout, Mat<T>* din) {
    return ops.Linear(in, p.lin[i].c, p.lin[i].a, p.lin[i].b, c.z[i], dout, din, &g->a[i],
                      &g->b[i]);
  };
  // MLP: y = x2 + down(silu(gate(h2)) ⊙ up(h2)), h2 = norm(x2).
  Mat<T> dact, dg, du, dh2, dx2 = dy;
  QUANTD_RETURN_IF_ERROR(lin(kDown, c.act, dy, &dact));
  QUANTD_RETURN_IF_ERROR(ops.SiluMul(c.g, c.u, dact, &dg, &du));
  QUANTD_RETURN_IF_ERROR(lin(kGate, c.h2, dg, &dh2));
  QUANTD_RETURN_IF_ERROR(lin(kUp, c.h2, du, &dh2));
  QUANTD_RETURN_IF_ERROR(ops.RmsNorm(c.x2, p.ffn_norm, c.r2, dh2, &dx2, &g->ffn_norm));
  // Attention: x2 = x + o(attn(rope(q(h1)), rope(k(h1)), v(h1))), h1 = norm(x).
  Mat<T> dattn;
  QUANTD_RETURN_IF_ERROR(lin(kO, c.attn, dx2, &dattn));
  Mat<T> dq, dk, dv;
  QUANTD_RETURN_IF_ERROR(
      ops.Attention(c.q, c.k, c.v, c.p, dattn, d.heads, d.kv_heads, hd, &dq, &dk, &dv));
  dq *= static_cast<T>(d.attn_scale);
  QUANTD_RETURN_IF_ERROR(ops.Rope(cos, sin, d.heads, hd, &dq));
  QUANTD_RETURN_IF_ERROR(ops.Rope(cos, sin, d.kv_heads, hd, &dk));
  Mat<T> dh1;
  QUANTD_RETURN_IF_ERROR(lin(kQ, c.h1, dq, &dh1));
  QUANTD_RETURN_IF_ERROR(lin(kK, c.h1, dk, &dh1));
  QUANTD_RETURN_IF_ERROR(lin(kV, c.h1, dv, &dh1));
  Mat<T> dxn = dx2;
  QUANTD_RETURN_IF_ERROR(ops.RmsNorm(c.x, p.attn_norm, c.r1, dh1, &dxn, &g->attn_norm));
  if (dx != nullptr) *dx = std::move(dxn);
  return absl::OkStatus();
}

template <typename T>
void BlockBackward(const BlockDims& d, const BlockParams<T>& p, const Mat<T>& cos,
                   const Mat<T>& sin, const BlockCache<T>& c, const Mat<T>& dy,
                   BlockGrads<T>* g, Mat<T>* dx) {
  // backward_ops.h's code directly: cannot fail.
  BlockBackwardOn<T>(d, p, cos, sin, c, dy, g, dx, nullptr).IgnoreError();
}

#define QUANTD_BLOCK_INSTANTIATE(T)                                                             \
  template struct BlockGrads<T>;                                                                \
  template BlockParams<T> ParamsFromWeights<T>(const LayerWeights&);                            \
  template void WriteParams<T>(const BlockParams<T>&, LayerWeights*);                           \
  template void BlockForward<T>(const BlockDims&, const BlockParams<T>&, const Mat<T>&,         \
                                const Mat<T>&, const Mat<T>&, BlockCache<T>*, Mat<T>*);         \
  template void BlockBackward<T>(const BlockDims&, const BlockParams<T>&, const Mat<T>&,        \
                                 const Mat<T>&, const BlockCache<T>&, const Mat<T>&,            \
                                 BlockGrads<T>*, Mat<T>*);                                     \
  template absl::Status BlockBackwardOn<T>(const BlockDims&, const BlockParams<T>&,             \
                                           const Mat<T>&, const Mat<T>&, const BlockCache<T>&,  \
                                           const Mat<T>&, BlockGrads<T>*, Mat<T>*,              \
                                           quant::BackwardOps*);

QUANTD_BLOCK_INSTANTIATE(float)
QUANTD_BLOCK_INSTANTIATE(double)
#undef QUANTD_BLOCK_INSTANTIATE

}  // namespace quantd::model::grad
