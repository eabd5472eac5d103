// quantd-bench block-grad: one decoder block's forward and backward (engine/model/block_grad.h)
// in fp64 on a model directory, printed as one JSON object, for tests/torch_block_grad_test.py to
// compare with torch autograd through transformers' own decoder layer. The block's parameters
// are the model's layer `--layer` with its norms and every linear's real out/in scales a, b
// (W = diag(a)·W·diag(b)) perturbed away from their starting values, the input x [T x hidden]
// and the output gradient dy are standard normal draws (seeded); the loss is L = Σ y ⊙ dy, so
// the printed gradients are the vector-Jacobian products of dy. Everything the reference needs
// besides the model's weights is printed: x, dy, the norms, a, b, the RoPE tables used (cos, sin
// [T x head_dim/2]), and y, ∂L/∂x, ∂L/∂norms, ∂L/∂a, ∂L/∂b (doubles, round-trip precision).
#include <cstdio>
#include <random>

#include "bench/bench.h"
#include "engine/artifact/artifact.h"
#include "engine/model/block_grad.h"
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

}  // namespace

int RunBlockGrad(const Flags& flags) {
  const std::string dir = flags.Get("model", "");
  auto layer = flags.GetInt("layer", 0), tokens = flags.GetInt("tokens", 16),
       seed = flags.GetInt("seed", 1);
  if (dir.empty() || !layer.ok() || !tokens.ok() || !seed.ok() || *tokens < 1) {
    std::fprintf(stderr,
                 "usage: quantd-bench block-grad --model DIR [--layer 0] [--tokens 16] [--seed 1]\n");
    return 2;
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
  auto dims = model::grad::BlockDimsFor(cfg, l);
  if (!dims.ok()) {
    std::fprintf(stderr, "%s\n", dims.status().ToString().c_str());
    return 1;
  }
  std::mt19937_64 rng(static_cast<uint64_t>(*seed));
  std::normal_distribution<double> normal(0.0, 1.0);
  auto perturb = [&](VD* v, double s) {
    for (Eigen::Index i = 0; i < v->size(); ++i) (*v)(i) *= 1.0 + s * normal(rng);
  };
  model::grad::BlockParams<double> p = model::grad::ParamsFromWeights<double>(w->layers[l]);
  perturb(&p.attn_norm, 0.2);
  perturb(&p.ffn_norm, 0.2);
  for (auto& lin : p.lin) {
    perturb(&lin.a, 0.2);
    perturb(&lin.b, 0.2);
  }
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
                 ga = nlohmann::json::array(), gb = nlohmann::json::array(),
                 names = nlohmann::json::array();
  for (model::Linear lin : model::kAllLinears) {
    const int i = static_cast<int>(lin);
    names.push_back(std::string(model::LinearName(lin)));
    a.push_back(ToJson(p.lin[i].a));
    b.push_back(ToJson(p.lin[i].b));
    ga.push_back(ToJson(g.a[i]));
    gb.push_back(ToJson(g.b[i]));
  }
  nlohmann::json out = {{"layer", l},
                        {"tokens", t},
                        {"linears", names},
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
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace quantd::bench
