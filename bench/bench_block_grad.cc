// quantd-bench block-grad: one decoder block's forward and backward (engine/model/block_grad.h)
// in fp64 on a model directory, printed as one JSON object, for tests/torch_block_grad_test.py to
// compare with torch autograd through transformers' own decoder layer. The block's parameters
// are the model's layer `--layer` with its norms and every linear's real out/in scales a, b
// (W = diag(a)·W·diag(b)) perturbed away from their starting values, the input x [T x hidden]
// and the output gradient dy are standard normal draws (seeded); the loss is L = Σ y ⊙ dy, so
// the printed gradients are the vector-Jacobian products of dy. Everything the reference needs
// besides the model's weights is printed: x, dy, the norms, a, b, the RoPE tables used (cos, sin
// [T x head_dim/2]), and y, ∂L/∂x, ∂L/∂norms, ∂L/∂a, ∂L/∂b (doubles, round-trip precision).
// --kl 1 does the same for the end-to-end loss (finetune_e2e.h): every block's norms and a, b,
// the final norm and the head perturbed, seeded random tokens, L = Σ_t KL(p_fp,t ‖ p_t) with
// p_fp the unperturbed model's distribution; prints the tokens, the parameters, L and every
// gradient (per layer), so the reference computes p_fp itself.
// --device cpu|cuda:N (block check only) also runs the block in fp32 with its backward's ops on
// that device (model/backward_device.h) and adds "device_check": the device's name and, per
// gradient, max |fp32 − fp64| / max |fp64| (the fp64 figures printed are the CPU's either way).
#include <cstdio>
#include <random>

#include "bench/bench.h"
#include "engine/artifact/artifact.h"
#include "engine/model/backward_device.h"
#include "engine/model/block_grad.h"
#include "engine/model/finetune_e2e.h"
#include "engine/model/forward_ops.h"
#include "nlohmann/json.hpp"

namespace quantd::bench {
namespace {

using MD = model::grad::Mat<double>;
using VD = model::grad::Vec<double>;

nlohmann::json ToJson(const MD& m) {
  nlohmann::json rows = nlohmann::json::array();
  for (Eigen::Index r = 0; r < m.rows(); ++r) {
    rows.push_back(std::vector<double>(m.row(r).data(), m.row(r).data() + m.cols()));
  }
  return rows;
}
nlohmann::json ToJson(const VD& v) { return std::vector<double>(v.data(), v.data() + v.size()); }

// The norms and scales of a block (params or gradients: same member names for the norms).
template <typename B>
nlohmann::json NormsJson(const B& b) {
  return {{"attn_norm", ToJson(b.attn_norm)}, {"ffn_norm", ToJson(b.ffn_norm)}};
}

void Perturb(std::mt19937_64* rng, double s, VD* v) {
  std::normal_distribution<double> normal(0.0, 1.0);
  for (Eigen::Index i = 0; i < v->size(); ++i) (*v)(i) *= 1.0 + s * normal(*rng);
}

void PerturbBlock(std::mt19937_64* rng, model::grad::BlockParams<double>* p) {
  Perturb(rng, 0.2, &p->attn_norm);
  Perturb(rng, 0.2, &p->ffn_norm);
  for (auto& lin : p->lin) {
    Perturb(rng, 0.2, &lin.a);
    Perturb(rng, 0.2, &lin.b);
  }
}

nlohmann::json LinearNames() {
  nlohmann::json names = nlohmann::json::array();
  for (model::Linear lin : model::kAllLinears) names.push_back(std::string(model::LinearName(lin)));
  return names;
}

// --kl 1: the whole model's KL gradient (see the file comment).
int ModelKl(const model::LlamaConfig& cfg, const model::LlamaWeights& w, int t, uint64_t seed) {
  auto dims = model::grad::ModelDimsFor(cfg);
  if (!dims.ok()) {
    std::fprintf(stderr, "%s\n", dims.status().ToString().c_str());
    return 1;
  }
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> tok(0, cfg.vocab_size - 1);
  std::vector<int> tokens(t);
  for (int& v : tokens) v = tok(rng);
  model::grad::ModelParams<double> ref;
  for (const auto& lw : w.layers) ref.blocks.push_back(model::grad::ParamsFromWeights<double>(lw));
  ref.final_norm = w.final_norm.cast<double>();
  ref.head = (cfg.tie_word_embeddings ? w.embed : w.lm_head).cast<double>();
  MD x0(t, cfg.hidden_size);
  for (int i = 0; i < t; ++i) x0.row(i) = w.embed.row(tokens[i]).cast<double>();
  MatrixF cosf, sinf;
  model::ops::RopeTables(cfg, t, &cosf, &sinf);
  const MD cos = cosf.cast<double>(), sin = sinf.cast<double>();
  MD ref_logp;
  model::grad::SequenceLogProbs<double>(*dims, ref, cos, sin, x0, &ref_logp);
  model::grad::ModelParams<double> p = ref;
  for (auto& b : p.blocks) PerturbBlock(&rng, &b);
  Perturb(&rng, 0.2, &p.final_norm);
  std::normal_distribution<double> normal(0.0, 0.2);
  for (Eigen::Index i = 0; i < p.head.size(); ++i) p.head.data()[i] *= 1.0 + normal(rng);
  model::grad::ModelGrads<double> g;
  g.Zero(p, true);
  const double kl = model::grad::SequenceKl<double>(*dims, p, cos, sin, x0, ref_logp, 1.0, &g);
  nlohmann::json layers = nlohmann::json::array();
  for (size_t l = 0; l < p.blocks.size(); ++l) {
    nlohmann::json a = nlohmann::json::array(), b = nlohmann::json::array(),
                   ga = nlohmann::json::array(), gb = nlohmann::json::array();
    for (int i = 0; i < model::grad::kBlockLinears; ++i) {
      a.push_back(ToJson(p.blocks[l].lin[i].a));
      b.push_back(ToJson(p.blocks[l].lin[i].b));
      ga.push_back(ToJson(g.blocks[l].a[i]));
      gb.push_back(ToJson(g.blocks[l].b[i]));
    }
    nlohmann::json pj = NormsJson(p.blocks[l]), gj = NormsJson(g.blocks[l]);
    pj["a"] = a;
    pj["b"] = b;
    gj["a"] = ga;
    gj["b"] = gb;
    layers.push_back({{"params", pj}, {"grad", gj}});
  }
  nlohmann::json out = {{"tokens", tokens},
                        {"linears", LinearNames()},
                        {"cos", ToJson(cos)},
                        {"sin", ToJson(sin)},
                        {"layers", layers},
                        {"final_norm", ToJson(p.final_norm)},
                        {"head", ToJson(p.head)},
                        {"kl", kl},
                        {"grad", {{"final_norm", ToJson(g.final_norm)}, {"head", ToJson(g.head)}}}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

// Runs the block in fp32 with the backward's ops on `dev` and compares its gradients with the
// fp64 ones (see the file comment).
absl::StatusOr<nlohmann::json> DeviceCheck(quant::Device& dev, const model::grad::BlockDims& d,
                                           const model::grad::BlockParams<double>& p,
                                           const MD& cos, const MD& sin, const MD& x,
                                           const MD& dy, const model::grad::BlockGrads<double>& g,
                                           const MD& dx) {
  using MF = model::grad::Mat<float>;
  model::grad::BlockParams<float> pf;
  pf.attn_norm = p.attn_norm.cast<float>();
  pf.ffn_norm = p.ffn_norm.cast<float>();
  for (int i = 0; i < model::grad::kBlockLinears; ++i) {
    pf.lin[i] = {p.lin[i].c.cast<float>(), p.lin[i].a.cast<float>(), p.lin[i].b.cast<float>()};
  }
  auto session = model::BackwardOpsSession::Open(&dev);
  if (!session.ok()) return session.status();
  const MF cosf = cos.cast<float>(), sinf = sin.cast<float>();
  model::grad::BlockCache<float> cache;
  MF y, dxf;
  model::grad::BlockForward<float>(d, pf, cosf, sinf, x.cast<float>(), &cache, &y);
  model::grad::BlockGrads<float> gf;
  gf.Zero(pf);
  absl::Status st = model::grad::BlockBackwardOn<float>(d, pf, cosf, sinf, cache,
                                                        dy.cast<float>(), &gf, &dxf,
                                                        &session->ops());
  if (!st.ok()) return st;
  nlohmann::json err;
  double worst = 0;
  auto rel = [&](const std::string& what, const auto& got, const auto& want) {
    const double scale = want.cwiseAbs().maxCoeff();
    const double e = (got.template cast<double>() - want).cwiseAbs().maxCoeff() /
                     (scale > 0 ? scale : 1.0);
    err[what] = e;
    worst = std::max(worst, e);
  };
  rel("x", dxf, dx);
  rel("attn_norm", gf.attn_norm, g.attn_norm);
  rel("ffn_norm", gf.ffn_norm, g.ffn_norm);
  for (model::Linear lin : model::kAllLinears) {
    const int i = static_cast<int>(lin);
    rel(std::string(model::LinearName(lin)) + ".a", gf.a[i], g.a[i]);
    rel(std::string(model::LinearName(lin)) + ".b", gf.b[i], g.b[i]);
  }
  return nlohmann::json{
      {"device", session->ops().name()}, {"max_rel_err", err}, {"worst_rel_err", worst}};
}

}  // namespace

int RunBlockGrad(const Flags& flags) {
  const std::string dir = flags.Get("model", "");
  auto layer = flags.GetInt("layer", 0), tokens = flags.GetInt("tokens", 16),
       seed = flags.GetInt("seed", 1), kl = flags.GetInt("kl", 0);
  if (dir.empty() || !layer.ok() || !tokens.ok() || !seed.ok() || !kl.ok() || *tokens < 1) {
    std::fprintf(stderr,
                 "usage: quantd-bench block-grad --model DIR [--layer 0] [--tokens 16] [--seed 1] "
                 "[--kl 0|1] [--device cpu|cuda:N]\n");
    return 2;
  }
  std::unique_ptr<quant::Device> dev;
  if (!flags.Get("device", "").empty()) {
    if (*kl != 0) {
      std::fprintf(stderr, "--device applies to the block check (--kl 0)\n");
      return 2;
    }
    dev = DeviceFromFlags(flags);
    if (dev == nullptr) return 1;
  }
  model::LlamaConfig cfg;
  auto w = artifact::LoadArtifactWeights(dir, &cfg);
  if (!w.ok()) {
    std::fprintf(stderr, "%s\n", w.status().ToString().c_str());
    return 1;
  }
  if (*layer < 0 || *layer >= cfg.num_layers || *tokens > cfg.max_position_embeddings) {
    std::fprintf(stderr, "--layer %lld not in 0..%d or --tokens %lld over %d positions\n",
                 static_cast<long long>(*layer), cfg.num_layers - 1,
                 static_cast<long long>(*tokens), cfg.max_position_embeddings);
    return 2;
  }
  const int l = static_cast<int>(*layer), t = static_cast<int>(*tokens);
  if (*kl != 0) return ModelKl(cfg, *w, t, static_cast<uint64_t>(*seed));
  auto dims = model::grad::BlockDimsFor(cfg, l);
  if (!dims.ok()) {
    std::fprintf(stderr, "%s\n", dims.status().ToString().c_str());
    return 1;
  }
  std::mt19937_64 rng(static_cast<uint64_t>(*seed));
  std::normal_distribution<double> normal(0.0, 1.0);
  model::grad::BlockParams<double> p = model::grad::ParamsFromWeights<double>(w->layers[l]);
  PerturbBlock(&rng, &p);
  MD x(t, cfg.hidden_size), dy(t, cfg.hidden_size);
  for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = normal(rng);
  for (Eigen::Index i = 0; i < dy.size(); ++i) dy.data()[i] = normal(rng);
  MatrixF cosf, sinf;
  model::ops::RopeTables(cfg, t, &cosf, &sinf);
  const MD cos = cosf.cast<double>(), sin = sinf.cast<double>();

  model::grad::BlockCache<double> cache;
  MD y, dx;
  model::grad::BlockForward<double>(*dims, p, cos, sin, x, &cache, &y);
  model::grad::BlockGrads<double> g;
  g.Zero(p);
  model::grad::BlockBackward<double>(*dims, p, cos, sin, cache, dy, &g, &dx);

  nlohmann::json a = nlohmann::json::array(), b = nlohmann::json::array(),
                 ga = nlohmann::json::array(), gb = nlohmann::json::array();
  for (model::Linear lin : model::kAllLinears) {
    const int i = static_cast<int>(lin);
    a.push_back(ToJson(p.lin[i].a));
    b.push_back(ToJson(p.lin[i].b));
    ga.push_back(ToJson(g.a[i]));
    gb.push_back(ToJson(g.b[i]));
  }
  nlohmann::json out = {{"layer", l},
                        {"tokens", t},
                        {"linears", LinearNames()},
                        {"cos", ToJson(cos)},
                        {"sin", ToJson(sin)},
                        {"x", ToJson(x)},
                        {"dy", ToJson(dy)},
                        {"attn_norm", ToJson(p.attn_norm)},
                        {"ffn_norm", ToJson(p.ffn_norm)},
                        {"a", a},
                        {"b", b},
                        {"y", ToJson(y)},
                        {"grad",
                         {{"x", ToJson(dx)},
                          {"attn_norm", ToJson(g.attn_norm)},
                          {"ffn_norm", ToJson(g.ffn_norm)},
                          {"a", ga},
                          {"b", gb}}}};
  if (dev != nullptr) {
    auto check = DeviceCheck(*dev, *dims, p, cos, sin, x, dy, g, dx);
    if (!check.ok()) return Fail(check.status());
    out["device_check"] = *check;
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace quantd::bench
