// Every manual backward pass (backward_ops.h, block_grad.h) against central finite differences
// in fp64 on tiny random shapes: the loss is L = Σ R ⊙ f(·) for a fixed random R, so ∂L/∂f = R,
// and each analytic gradient must agree with (L(θ+h) − L(θ−h)) / 2h to a relative 1e-4 (in the
// max norm). A last test checks that chaining the float block forward over stories260K gives
// model::Forward's logits (the blocks compute the model the rest of the engine computes).
#include "engine/model/backward_ops.h"

#include <functional>
#include <random>

#include "engine/model/block_grad.h"
#include "engine/model/forward.h"
#include "engine/model/forward_ops.h"
#include "engine/model/test_util.h"
#include "gtest/gtest.h"

namespace quantd::model::grad {
namespace {

using MD = Mat<double>;
using VD = Vec<double>;

MD Rand(int r, int c, std::mt19937_64* rng, double scale = 1.0) {
  std::normal_distribution<double> n(0.0, scale);
  MD m(r, c);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = n(*rng);
  return m;
}
VD RandV(int n, std::mt19937_64* rng, double mean = 0.0, double scale = 1.0) {
  std::normal_distribution<double> d(mean, scale);
  VD v(n);
  for (Eigen::Index i = 0; i < n; ++i) v(i) = d(*rng);
  return v;
}

// Checks the analytic gradient `g` of `loss` with respect to the `n` doubles at `theta`.
void ExpectGrad(const char* what, double* theta, Eigen::Index n, const double* g,
                const std::function<double()>& loss) {
  std::vector<long> all(n);
  for (Eigen::Index i = 0; i < n; ++i) all[i] = static_cast<long>(i);
  const auto [max_err, max_fd] = testing::CentralDifferenceError(theta, g, all, loss);
  EXPECT_GT(max_fd, 0.0) << what;
  EXPECT_LE(max_err, 1e-4 * max_fd) << what << ": max |analytic − fd| " << max_err
                                    << ", max |fd| " << max_fd;
}

double Dot(const MD& r, const MD& y) { return r.cwiseProduct(y).sum(); }

TEST(BackwardOps, RmsNorm) {
  std::mt19937_64 rng(1);
  MD x = Rand(5, 12, &rng), r = Rand(5, 12, &rng);
  VD w = RandV(12, &rng, 1.0, 0.3);
  const double eps = 1e-5;
  auto loss = [&] {
    MD y;
    VD inv;
    RmsNormForward<double>(x, w, eps, &y, &inv);
    return Dot(r, y);
  };
  MD y, dx;
  VD inv, dw;
  RmsNormForward<double>(x, w, eps, &y, &inv);
  RmsNormBackward<double>(x, w, inv, r, &dx, &dw);
  ExpectGrad("rmsnorm dx", x.data(), x.size(), dx.data(), loss);
  ExpectGrad("rmsnorm dw", w.data(), w.size(), dw.data(), loss);
}

TEST(BackwardOps, RopeMatchesForwardAndInverts) {
  std::mt19937_64 rng(2);
  const int heads = 3, hd = 8, T = 6;
  LlamaConfig cfg;
  cfg.head_dim = hd;
  cfg.rope.theta = 10000.0;
  MatrixF cf, sf;
  ops::RopeTables(cfg, T, &cf, &sf);
  const MD cos = cf.cast<double>(), sin = sf.cast<double>();
  MD x = Rand(T, heads * hd, &rng), r = Rand(T, heads * hd, &rng);
  // Forward equals ops::ApplyRope (fp32 tolerance).
  MD y = x;
  Rope<double>(cos, sin, heads, hd, false, &y);
  MatrixF yf = x.cast<float>();
  ops::ApplyRope(cf, sf, heads, hd, yf);
  EXPECT_LE((yf.cast<double>() - y).cwiseAbs().maxCoeff(), 1e-5);
  auto loss = [&] {
    MD m = x;
    Rope<double>(cos, sin, heads, hd, false, &m);
    return Dot(r, m);
  };
  MD dx = r;
  Rope<double>(cos, sin, heads, hd, true, &dx);
  ExpectGrad("rope dx", x.data(), x.size(), dx.data(), loss);
}

TEST(BackwardOps, CausalAttention) {
  std::mt19937_64 rng(3);
  const int T = 7, hd = 4;
  MD q = Rand(T, hd, &rng), k = Rand(T, hd, &rng), v = Rand(T, hd, &rng), r = Rand(T, hd, &rng);
  auto loss = [&] {
    MD out(T, hd), p;
    AttentionForward<double>(q, k, v, out, &p);
    return Dot(r, out);
  };
  MD out(T, hd), p;
  AttentionForward<double>(q, k, v, out, &p);
  // Forward equals ops::AttentionHead.
  MatrixF of(T, hd), scores;
  ops::AttentionHead(q.cast<float>(), k.cast<float>(), v.cast<float>(), of, &scores);
  EXPECT_LE((of.cast<double>() - out).cwiseAbs().maxCoeff(), 1e-5);
  MD dq = MD::Zero(T, hd), dk = MD::Zero(T, hd), dv = MD::Zero(T, hd);
  AttentionBackward<double>(q, k, v, p, r, dq, dk, dv);
  ExpectGrad("attention dq", q.data(), q.size(), dq.data(), loss);
  ExpectGrad("attention dk", k.data(), k.size(), dk.data(), loss);
  ExpectGrad("attention dv", v.data(), v.size(), dv.data(), loss);
}

TEST(BackwardOps, SiluMul) {
  std::mt19937_64 rng(4);
  MD g = Rand(4, 9, &rng, 2.0), u = Rand(4, 9, &rng), r = Rand(4, 9, &rng);
  auto loss = [&] {
    MD out;
    SiluMulForward<double>(g, u, &out);
    return Dot(r, out);
  };
  MD out, dg, du;
  SiluMulForward<double>(g, u, &out);
  MatrixF gf = g.cast<float>();
  ops::SiluMul(u.cast<float>(), &gf);
  EXPECT_LE((gf.cast<double>() - out).cwiseAbs().maxCoeff(), 1e-5);
  SiluMulBackward<double>(g, u, r, &dg, &du);
  ExpectGrad("silu·mul dg", g.data(), g.size(), dg.data(), loss);
  ExpectGrad("silu·mul du", u.data(), u.size(), du.data(), loss);
}

TEST(BackwardOps, ScaledLinear) {
  std::mt19937_64 rng(5);
  const int N = 6, n = 8, m = 5;
  MD x = Rand(N, n, &rng), c = Rand(m, n, &rng), r = Rand(N, m, &rng);
  VD a = RandV(m, &rng, 1.0, 0.5), b = RandV(n, &rng, 1.0, 0.5);
  auto loss = [&] {
    MD z, y;
    ScaledLinearForward<double>(x, c, a, b, &z, &y);
    return Dot(r, y);
  };
  MD z, y, dx, dw;
  VD da, db;
  ScaledLinearForward<double>(x, c, a, b, &z, &y);
  const MD w = a.asDiagonal() * c * b.asDiagonal();
  EXPECT_LE((y - x * w.transpose()).cwiseAbs().maxCoeff(), 1e-12);
  ScaledLinearBackward<double>(x, c, a, b, z, r, &dx, &da, &db, &dw);
  ExpectGrad("linear dx", x.data(), x.size(), dx.data(), loss);
  ExpectGrad("linear da (sv)", a.data(), a.size(), da.data(), loss);
  ExpectGrad("linear db (su)", b.data(), b.size(), db.data(), loss);
  // dW: the gradient with respect to the whole weight (a = b = 1, C = W).
  MD w1 = w;
  const VD ones_m = VD::Ones(m), ones_n = VD::Ones(n);
  auto loss_w = [&] {
    MD z1, y1;
    ScaledLinearForward<double>(x, w1, ones_m, ones_n, &z1, &y1);
    return Dot(r, y1);
  };
  ExpectGrad("linear dW", w1.data(), w1.size(), dw.data(), loss_w);
}

// The quantized linear in the artifact's own terms: W = diag(sv)·V_mᵀ·W̃·V_n·diag(su) with
// ±1 signs relaxed to reals; C = V_mᵀ W̃ V_n, a = sv, b = su.
TEST(BackwardOps, HadamardSignVectors) {
  std::mt19937_64 rng(6);
  const int N = 5, n = 8, m = 4;
  auto hadamard = [](int k) {
    MD h = MD::Ones(1, 1);
    while (h.rows() < k) {
      MD n2(2 * h.rows(), 2 * h.rows());
      n2 << h, h, h, -h;
      h = n2;
    }
    return MD(h / std::sqrt(static_cast<double>(k)));
  };
  const MD wt = Rand(m, n, &rng), vm = hadamard(m), vn = hadamard(n);
  const MD c = vm.transpose() * wt * vn;
  MD x = Rand(N, n, &rng), r = Rand(N, m, &rng);
  VD sv = RandV(m, &rng).array().sign().matrix(), su = RandV(n, &rng).array().sign().matrix();
  auto loss = [&] {
    const MD w = sv.asDiagonal() * vm.transpose() * wt * vn * su.asDiagonal();
    return Dot(r, x * w.transpose());
  };
  MD z, y, dx;
  VD dsv, dsu;
  ScaledLinearForward<double>(x, c, sv, su, &z, &y);
  ScaledLinearBackward<double>(x, c, sv, su, z, r, &dx, &dsv, &dsu);
  ExpectGrad("quantized linear d(sv)", sv.data(), sv.size(), dsv.data(), loss);
  ExpectGrad("quantized linear d(su)", su.data(), su.size(), dsu.data(), loss);
}

BlockParams<double> RandomBlock(const BlockDims& d, std::mt19937_64* rng) {
  BlockParams<double> p;
  p.attn_norm = RandV(d.hidden, rng, 1.0, 0.2);
  p.ffn_norm = RandV(d.hidden, rng, 1.0, 0.2);
  const int qd = d.heads * d.head_dim, kvd = d.kv_heads * d.head_dim;
  const std::pair<int, int> shapes[kBlockLinears] = {
      {qd, d.hidden}, {kvd, d.hidden}, {kvd, d.hidden}, {d.hidden, qd},
      {d.intermediate, d.hidden}, {d.intermediate, d.hidden}, {d.hidden, d.intermediate}};
  for (int i = 0; i < kBlockLinears; ++i) {
    const auto [out, in] = shapes[i];
    p.lin[i].c = Rand(out, in, rng, 1.0 / std::sqrt(static_cast<double>(in)));
    p.lin[i].a = RandV(out, rng, 1.0, 0.3);
    p.lin[i].b = RandV(in, rng, 1.0, 0.3);
  }
  return p;
}

TEST(BlockGrad, WholeDecoderBlockAgainstFiniteDifferences) {
  std::mt19937_64 rng(7);
  BlockDims d;
  d.hidden = 8;
  d.heads = 4;
  d.kv_heads = 2;
  d.head_dim = 4;
  d.intermediate = 12;
  d.eps = 1e-5;
  d.attn_scale = 0.5;
  const int T = 5;
  LlamaConfig cfg;
  cfg.head_dim = d.head_dim;
  cfg.rope.theta = 100.0;
  MatrixF cf, sf;
  ops::RopeTables(cfg, T, &cf, &sf);
  const MD cos = cf.cast<double>(), sin = sf.cast<double>();
  BlockParams<double> p = RandomBlock(d, &rng);
  MD x = Rand(T, d.hidden, &rng), r = Rand(T, d.hidden, &rng);
  auto loss = [&] {
    BlockCache<double> c;
    MD y;
    BlockForward<double>(d, p, cos, sin, x, &c, &y);
    return Dot(r, y);
  };
  BlockCache<double> c;
  MD y, dx;
  BlockForward<double>(d, p, cos, sin, x, &c, &y);
  BlockGrads<double> g;
  g.Zero(p);
  BlockBackward<double>(d, p, cos, sin, c, r, &g, &dx);
  ExpectGrad("block dx", x.data(), x.size(), dx.data(), loss);
  ExpectGrad("block attn_norm", p.attn_norm.data(), p.attn_norm.size(), g.attn_norm.data(), loss);
  ExpectGrad("block ffn_norm", p.ffn_norm.data(), p.ffn_norm.size(), g.ffn_norm.data(), loss);
  const char* names[kBlockLinears] = {"q", "k", "v", "o", "gate", "up", "down"};
  for (int i = 0; i < kBlockLinears; ++i) {
    SCOPED_TRACE(names[i]);
    ExpectGrad("block a (sv)", p.lin[i].a.data(), p.lin[i].a.size(), g.a[i].data(), loss);
    ExpectGrad("block b (su)", p.lin[i].b.data(), p.lin[i].b.size(), g.b[i].data(), loss);
  }
}

// Chaining BlockForward<float> over the layers, then the final norm and the head, gives the
// logits of model::Forward on stories260K.
TEST(BlockGrad, BlocksReproduceForward) {
  auto m = testing::LoadStories260K();
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> tokens = {1, 72, 19, 310, 44, 7, 400, 12, 99, 3, 250, 18};
  const int T = static_cast<int>(tokens.size());
  auto ref = Forward(m->cfg, m->w, tokens);
  ASSERT_TRUE(ref.ok()) << ref.status();
  MatrixF cos, sin;
  ops::RopeTables(m->cfg, T, &cos, &sin);
  MatrixF x(T, m->cfg.hidden_size);
  for (int t = 0; t < T; ++t) x.row(t) = m->w.embed.row(tokens[t]);
  for (int l = 0; l < m->cfg.num_layers; ++l) {
    auto d = BlockDimsFor(m->cfg, l);
    ASSERT_TRUE(d.ok()) << d.status();
    BlockParams<float> p = ParamsFromWeights<float>(m->w.layers[l]);
    BlockCache<float> c;
    MatrixF y;
    BlockForward<float>(*d, p, cos, sin, x, &c, &y);
    x = std::move(y);
  }
  MatrixF h;
  ops::Norm(m->cfg, x, m->w.final_norm, &h);
  const MatrixF& head = m->cfg.tie_word_embeddings ? m->w.embed : m->w.lm_head;
  const MatrixF logits = h * head.transpose();
  EXPECT_LE((logits - *ref).cwiseAbs().maxCoeff(), 1e-3 * std::max(1.0f, ref->cwiseAbs().maxCoeff()));
}

TEST(BlockGrad, RefusesBlocksItCannotDifferentiate) {
  LlamaConfig cfg;
  cfg.hidden_size = 8;
  cfg.num_heads = cfg.num_kv_heads = 2;
  cfg.head_dim = 4;
  cfg.qkv_bias = true;
  auto d = BlockDimsFor(cfg, 0);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(d.status().message().find("attention biases"), std::string::npos);
}

}  // namespace
}  // namespace quantd::model::grad
