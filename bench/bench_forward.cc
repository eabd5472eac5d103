// quantd-bench forward: throughput of the CPU forward pass on a model directory, against an
// fp32 GEMM rate measured in the same run.
//  --mode batched (default): the layer-streamed ForwardBatch (streamed_forward.h) over all
//    windows at once, weights read one layer at a time from the checkpoint, logits in vocabulary
//    chunks; the reference rate is Eigen's multi-threaded fp32 GEMM on the same shapes (every
//    linear of a layer and the lm_head, [tokens x in]·[in x out], weighted by their FLOPs),
//    timed before and after the forward and averaged.
//  --mode hessian: the Hessian phase of a calibration task on --device (cpu | cuda:N): the
//    layer-streamed ForwardBatch over every window with a LayerHessianStream (sink weight 16 on
//    each window's first token, as the service's default), all ops on the device's forward ops
//    (engine/quant/device.h). FLOPs: the linears and attention as below (no lm_head) plus the
//    Gram sums T·n² per group (n = hidden twice, heads·head_dim, intermediate). Reported
//    against the device's fp32 and fp64 GEMM peaks (device::MeasureGemmPeakTflops, --peak-n)
//    measured in the same run.
//  --mode reference: model::Forward, one sequence per thread (EIGEN_DONT_PARALLELIZE inside),
//    whole model in memory, against p independent single-threaded GEMMs of the MLP's shape.
//
// FLOPs per window of T tokens, counted as 2 per multiply-add: every linear (q,k,v,o,gate,up,
// down) 2·T·in·out, attention scores and weighted sum 2·2·(T(T+1)/2)·head_dim per head, and the
// lm_head 2·T·hidden·vocab. Norms, RoPE, softmax and SwiGLU are not counted.
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <random>

#include "bench/bench.h"
#include "nlohmann/json.hpp"
#include "engine/artifact/artifact.h"
#include "engine/device/device_registry.h"
#include "engine/model/forward.h"
#include "engine/model/forward_device.h"
#include "engine/model/hessian_capture.h"
#include "engine/model/streamed_forward.h"
#include "engine/tokenizer/tokens.h"

namespace quantd::bench {
namespace {

double WindowFlops(const model::LlamaConfig& c, double t) {
  const double q = static_cast<double>(c.num_heads) * c.head_dim;
  const double kv = static_cast<double>(c.num_kv_heads) * c.head_dim;
  const double d = c.hidden_size, ff = c.intermediate_size;
  const double linears = 2 * t * (d * q + 2 * d * kv + q * d + 3 * d * ff);
  const double attention = 2 * 2 * (t * (t + 1) / 2) * c.head_dim * c.num_heads;
  return c.num_layers * (linears + attention) + 2 * t * d * c.vocab_size;
}

// The result line both modes print: the model, the run and the rate against the GEMM reference
// (the mode adds its own fields; keys print sorted).
nlohmann::json Report(const char* mode, const std::string& dir, const model::LlamaConfig& cfg,
                      size_t tokens, int ctx, int p, double secs, double gflops,
                      double gemm_gflops) {
  return {{"mode", mode},
          {"model", dir},
          {"params_hidden", cfg.hidden_size},
          {"layers", cfg.num_layers},
          {"vocab", cfg.vocab_size},
          {"tokens", tokens},
          {"context", ctx},
          {"threads", p},
          {"seconds", secs},
          {"tokens_per_s", tokens / secs},
          {"gflops", gflops},
          {"gemm_gflops", gemm_gflops},
          {"ratio", gflops / gemm_gflops}};
}

}  // namespace

// Eigen's fp32 GEMM rate (GFLOP/s, p threads) over the shapes of ForwardBatch's products for
// `rows` tokens: each distinct linear shape and the lm_head, timed once each after a warm-up,
// FLOP-weighted by how often the model runs them.
double BatchedGemmRate(const model::LlamaConfig& c, int64_t rows, int p) {
  Eigen::setNbThreads(p);
  const int q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  const int d = c.hidden_size, ff = c.intermediate_size;
  struct Shape {
    int in, out;
    double count;
  };
  const std::vector<Shape> shapes = {{d, q, 1.0 * c.num_layers},      {d, kv, 2.0 * c.num_layers},
                                     {q, d, 1.0 * c.num_layers},      {d, ff, 2.0 * c.num_layers},
                                     {ff, d, 1.0 * c.num_layers},     {d, std::min(c.vocab_size, 8192), 0}};
  double flops = 0, secs = 0;
  for (const Shape& s : shapes) {
    const MatrixF a = MatrixF::Random(rows, s.in), w = MatrixF::Random(s.out, s.in);
    MatrixF out(rows, s.out);
    out.noalias() = a * w.transpose();  // warm-up
    auto t0 = std::chrono::steady_clock::now();
    out.noalias() = a * w.transpose();
    const double t = Seconds(t0);
    const double f = 2.0 * rows * s.in * s.out;
    // The lm_head row stands for the whole vocabulary once.
    const double weight = s.count > 0 ? s.count : static_cast<double>(c.vocab_size) / s.out;
    flops += weight * f;
    secs += weight * t;
  }
  Eigen::setNbThreads(1);
  return flops / secs / 1e9;
}

int RunForwardBatched(const Flags& flags, const std::string& dir, std::vector<int32_t> ids,
                      int ctx, int p) {
  model::LlamaConfig cfg;
  auto src = artifact::OpenArtifactSource(dir, &cfg);
  if (!src.ok()) return Fail(src.status());
  for (int32_t& id : ids) id %= cfg.vocab_size;
  ctx = std::min(ctx, cfg.max_position_embeddings);
  std::vector<absl::Span<const int32_t>> seqs;
  double flops = 0;
  for (size_t b = 0; b < ids.size(); b += ctx) {
    const size_t n = std::min<size_t>(ctx, ids.size() - b);
    seqs.emplace_back(ids.data() + b, n);
    flops += WindowFlops(cfg, static_cast<double>(n));
  }
  // The GEMM reference is timed before and after the forward and averaged, so that a load
  // change on a shared machine biases the ratio less.
  const double gemm_before = BatchedGemmRate(cfg, static_cast<int64_t>(ids.size()), p);
  omp_set_num_threads(p);
  auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<MatrixF> hidden = model::ForwardBatch(cfg, **src, seqs);
  double sink = 0;
  absl::Status s = hidden.status();
  if (s.ok()) {
    s = model::ForEachLogitsChunk(cfg, **src, *hidden, 0, [&](int, const MatrixF& logits) {
      sink += logits(0, 0);
      return absl::OkStatus();
    });
  }
  const double secs = Seconds(t0);
  if (!s.ok()) return Fail(s);
  const double gemm_after = BatchedGemmRate(cfg, static_cast<int64_t>(ids.size()), p);
  const double gemm_gflops = (gemm_before + gemm_after) / 2;
  const double gflops = flops / secs / 1e9;
  nlohmann::json out = Report("batched", dir, cfg, ids.size(), ctx, p, secs, gflops, gemm_gflops);
  out["gemm_gflops_before"] = gemm_before;
  out["gemm_gflops_after"] = gemm_after;
  out["sequences"] = seqs.size();
  out["checksum"] = sink;
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

int RunForwardHessian(const Flags& flags, const std::string& dir, std::vector<int32_t> ids,
                      int ctx, int p) {
  const std::string spec = flags.Get("device", "cpu");
  absl::StatusOr<std::unique_ptr<quant::Device>> dev = device::MakeDevice(spec, p);
  model::LlamaConfig cfg;
  auto src = artifact::OpenArtifactSource(dir, &cfg);
  if (!dev.ok() || !src.ok()) {
    std::fprintf(stderr, "%s\n",
                 (!dev.ok() ? dev.status() : src.status()).ToString().c_str());
    return 1;
  }
  for (int32_t& id : ids) id %= cfg.vocab_size;
  ctx = std::min(ctx, cfg.max_position_embeddings);
  std::vector<absl::Span<const int32_t>> seqs;
  std::vector<int64_t> lengths;
  double flops = 0;
  const double q = static_cast<double>(cfg.num_heads) * cfg.head_dim;
  const double d = cfg.hidden_size, ff = cfg.intermediate_size;
  for (size_t b = 0; b < ids.size(); b += ctx) {
    const size_t n = std::min<size_t>(ctx, ids.size() - b);
    seqs.emplace_back(ids.data() + b, n);
    lengths.push_back(static_cast<int64_t>(n));
    const double t = static_cast<double>(n);
    flops += WindowFlops(cfg, t) - 2 * t * d * cfg.vocab_size +
             cfg.num_layers * t * (2 * d * d + q * q + ff * ff);
  }
  omp_set_num_threads(p);
  absl::StatusOr<model::ForwardOpsSession> session = model::ForwardOpsSession::Open(dev->get());
  if (!session.ok()) {
    std::fprintf(stderr, "%s\n", session.status().ToString().c_str());
    return 1;
  }
  double checksum = 0;
  model::LayerHessianStream stream(
      cfg, 0, cfg.num_layers,
      [&](int, model::LinearGroup, const MatrixD& sum, int64_t) {
        checksum += sum(0, 0);
        return absl::OkStatus();
      },
      model::RowWeights(lengths, model::TokenWeighting{model::kDefaultSinkWeight, 1}));
  auto t0 = std::chrono::steady_clock::now();
  absl::Status s = model::ForwardBatch(cfg, **src, seqs, &stream, &session->ops()).status();
  const double secs = Seconds(t0);
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  const long long peak_n = flags.GetInt("peak-n", spec == "cpu" ? 1024 : 8192).value_or(1024);
  absl::StatusOr<double> peak32 =
      device::MeasureGemmPeakTflops(spec, static_cast<int>(peak_n), false, p);
  absl::StatusOr<double> peak64 =
      device::MeasureGemmPeakTflops(spec, static_cast<int>(peak_n), true, p);
  const double tflops = flops / secs / 1e12;
  nlohmann::json out = {{"mode", "hessian"},
                        {"device", (*dev)->name()},
                        {"forward_ops", session->ops().name()},
                        {"model", dir},
                        {"params_hidden", cfg.hidden_size},
                        {"layers", cfg.num_layers},
                        {"tokens", ids.size()},
                        {"sequences", seqs.size()},
                        {"context", ctx},
                        {"threads", p},
                        {"seconds", secs},
                        {"tflops", tflops},
                        {"checksum", checksum}};
  if (peak32.ok()) {
    out["gemm_peak_fp32_tflops"] = *peak32;
    out["ratio_fp32_peak"] = tflops / *peak32;
  }
  if (peak64.ok()) out["gemm_peak_fp64_tflops"] = *peak64;
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

int RunForward(const Flags& flags) {
  const std::string dir = flags.Get("model", "");
  absl::StatusOr<long long> tokens = flags.GetInt("tokens", 2048);
  absl::StatusOr<long long> context = flags.GetInt("context", 512);
  absl::StatusOr<long long> threads = flags.GetInt("threads", 0);
  if (dir.empty() || !tokens.ok() || !context.ok() || !threads.ok() || *tokens < 2 ||
      *context < 2 || *threads < 0) {
    std::fprintf(stderr, "usage: quantd-bench forward --model DIR [--tokens N] [--context T] "
                         "[--threads P] [--data TOKENS] [--mode batched|hessian|reference] "
                         "[--device cpu|cuda:N] [--peak-n N]\n");
    return 2;
  }
  const std::string mode = flags.Get("mode", "batched");
  if (mode != "batched" && mode != "reference" && mode != "hessian") {
    std::fprintf(stderr, "--mode must be batched, hessian or reference, got %s\n", mode.c_str());
    return 2;
  }
  std::vector<int32_t> ids;
  if (flags.Has("data")) {
    auto t = model::LoadTokenFile(flags.Get("data", ""));
    if (!t.ok()) return Fail(t.status());
    ids = std::move(*t);
    ids.resize(std::min<size_t>(ids.size(), static_cast<size_t>(*tokens)));
  } else {
    std::mt19937 rng(1);
    std::uniform_int_distribution<int32_t> pick(0, 1 << 30);
    ids.resize(static_cast<size_t>(*tokens));
    for (int32_t& id : ids) id = pick(rng);  // reduced modulo the vocabulary below
  }
  const int p = *threads > 0 ? static_cast<int>(*threads) : omp_get_max_threads();
  if (mode == "batched") return RunForwardBatched(flags, dir, std::move(ids), *context, p);
  if (mode == "hessian") return RunForwardHessian(flags, dir, std::move(ids), *context, p);
  model::LlamaConfig cfg;
  absl::StatusOr<model::LlamaWeights> w = artifact::LoadArtifactWeights(dir, &cfg);
  if (!w.ok()) return Fail(w.status());
  for (int32_t& id : ids) id %= cfg.vocab_size;
  const int ctx = static_cast<int>(std::min<long long>(*context, cfg.max_position_embeddings));
  const int windows = static_cast<int>((ids.size() + ctx - 1) / ctx);
  double flops = 0;
  for (int i = 0; i < windows; ++i) {
    flops += WindowFlops(cfg, std::min<size_t>(ctx, ids.size() - static_cast<size_t>(i) * ctx));
  }

  // Forward: windows spread over p threads, one sequence per thread at a time.
  std::vector<absl::Status> errors(windows);
  auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel for num_threads(p) schedule(dynamic, 1)
  for (int i = 0; i < windows; ++i) {
    const size_t b = static_cast<size_t>(i) * ctx, n = std::min<size_t>(ctx, ids.size() - b);
    auto logits = model::Forward(cfg, *w, absl::MakeConstSpan(ids.data() + b, n));
    if (!logits.ok()) errors[i] = logits.status();
  }
  const double secs = Seconds(t0);
  for (const absl::Status& s : errors) {
    if (!s.ok()) return Fail(s);
  }

  // Peak: p independent single-threaded fp32 GEMMs of the MLP's shape [ctx×d]·[d×ff], as many
  // as there were windows' worth of work (at least 3 rounds so the timing is not noise).
  const int d = cfg.hidden_size, ff = cfg.intermediate_size;
  const int rounds = std::max(3, windows);
  double gemm_secs = 0;
  {
    Eigen::setNbThreads(1);
    std::vector<MatrixF> a(p, MatrixF::Random(ctx, d)), bm(p, MatrixF::Random(d, ff)),
        c(p, MatrixF(ctx, ff));
    auto g0 = std::chrono::steady_clock::now();
#pragma omp parallel for num_threads(p) schedule(dynamic, 1)
    for (int r = 0; r < rounds * p; ++r) {
      const int tid = omp_get_thread_num();
      c[tid].noalias() = a[tid] * bm[tid];
    }
    gemm_secs = Seconds(g0);
  }
  const double gemm_gflops = 2.0 * ctx * d * ff * rounds * p / gemm_secs / 1e9;
  const double gflops = flops / secs / 1e9;
  const nlohmann::json out =
      Report("reference", dir, cfg, ids.size(), ctx, p, secs, gflops, gemm_gflops);
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace quantd::bench
