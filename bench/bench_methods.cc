// quantd-bench methods: the method table of one model in one process. Hessians are captured once
// from the calibration tokens (forward passes with model::HessianCapture, windows of --seq-len),
// then for each method/bits every linear layer is quantized from the same Hessians (matrices in
// parallel, one single-threaded CPU device per thread), and the quantized model's perplexity is
// measured on the evaluation tokens. One JSON line for the fp model, then one per configuration.
// A configuration is METHOD/BITS, or METHOD/BITS/gN for groups of N columns (rtn, gptq, quarot;
// overrides --group-size). Each capture (fp, and the rotated model for quarot) is made by the
// first configuration that needs it; that row reports hessian_seconds. --sequential 1 is GPTQ's
// sequential mode instead: layer by layer, each layer's Hessians are captured through the model
// whose earlier layers are already quantized (forward passes stop after the layer).
// METHOD/bX is a bit budget (quant/bit_budget.h): every matrix is quantized at 2, 3 and 4 bits
// (reusing a METHOD/2.. row of the same run), then per-matrix widths averaging at most X code
// bits per weight are chosen to minimize the summed loss under each objective of
// --budget-weights (one row each): rel = Σ relative proxy loss, abs = Σ tr(E H Eᵀ) (the
// output-error energy), measured = each matrix's measured increase of the calibration NLL when
// it alone is quantized at 2 bits (--sens-tokens of calibration), scaled to the other widths by
// its proxy loss ratio.
//
// Token files are .u16/.u32/.npy; a .txt file is encoded whole with the model's tokenizer and
// no BOS (the GPTQ WikiText-2 convention: the text is one stream). The calibration sequences are
// cut from it by model::CalibrationWindows (--calib-sampling, --calib-seed, --start-token), and
// the Hessians weight each sequence's first token --sink-weight times (model::TokenWeighting),
// and with --massive-ratio R (or a config's MR) each layer's massive-activation tokens too.
#include <omp.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <memory>
#include <tuple>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/bench.h"
#include "bench/bench_budget.h"
#include "common/file_util.h"
#include "nlohmann/json.hpp"
#include "engine/artifact/artifact.h"
#include "engine/artifact/export_gguf.h"
#include "engine/quant/grid_target.h"
#include <filesystem>
#include <map>
#include "engine/model/calibration.h"
#include "engine/model/forward.h"
#include "engine/model/hessian_capture.h"
#include "engine/model/perplexity.h"
#include "engine/model/quarot.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/tokens.h"
#include "engine/quant/bit_budget.h"
#include "engine/quant/device.h"
#include "engine/quant/quantize.h"

namespace quantd::bench {
namespace {

constexpr model::Linear kLinears[] = {model::Linear::kQ,    model::Linear::kK, model::Linear::kV,
                                      model::Linear::kO,    model::Linear::kGate,
                                      model::Linear::kUp,   model::Linear::kDown};

}  // namespace

absl::StatusOr<std::vector<int32_t>> LoadBenchTokens(const std::string& path, const std::string& model_dir) {
  if (path.size() > 4 && path.compare(path.size() - 4, 4, ".txt") == 0) {
    auto tok = model::LoadTokenizerForModel(model_dir);
    if (!tok.ok()) return tok.status();
    auto text = ReadFile(path);
    if (!text.ok()) return text.status();
    return (*tok)->Encode(*text, /*bos=*/false);
  }
  return model::LoadTokenFile(path);
}

int RunMethods(const Flags& flags) {
  const std::string dir = flags.Get("model", ""), calib_path = flags.Get("calib", ""),
                    eval_path = flags.Get("eval", "");
  auto seqs = flags.GetInt("calib-seqs", 16), seq_len = flags.GetInt("seq-len", 512),
       eval_tokens = flags.GetInt("eval-tokens", 8192), trellis_l = flags.GetInt("trellis-l", 16),
       group_size = flags.GetInt("group-size", 0), mse_clip = flags.GetInt("mse-clip", 0),
       act_order = flags.GetInt("act-order", 0), sequential = flags.GetInt("sequential", 0);
  auto damp = flags.GetDouble("damp", 0.01);
  // --sink-weight W: the Hessians weight each calibration sequence's first token W times
  // (model::TokenWeighting; default the service's, model::kDefaultSinkWeight; 1 = unweighted, the
  // tables before issue 24). A config's sX overrides it.
  auto sink_weight = flags.GetDouble("sink-weight", model::kDefaultSinkWeight);
  // --massive-ratio R (> 0): "sink+massive", the rows whose max |residual| entering a layer is
  // ≥ R × their sequence's median of it also get the sink weight (model::MassiveRows); 0 = off.
  // A config's MX overrides it.
  auto massive_ratio = flags.GetDouble("massive-ratio", 0);
  const std::string configs = flags.Get("configs", "rtn/2,rtn/3,rtn/4,gptq/2,gptq/3,gptq/4");
  // Bit budget rows (METHOD/bX): the objectives to allocate with, and the calibration tokens the
  // "measured" sensitivity is taken on.
  const std::vector<std::string> budget_weights =
      absl::StrSplit(flags.Get("budget-weights", "abs"), ',', absl::SkipEmpty());
  auto sens_tokens = flags.GetInt("sens-tokens", 1024);
  // --grid: quantize rtn/gptq onto an export format's grid (quant/grid_target.h; bits 0 in a
  // config and no group take the grid's own). --save DIR: write each configuration's quantized
  // model as a native artifact directory DIR/<method>-<bits> (config, packed tensors, tokenizer
  // files, manifest.json with the spec), and with --gguf 1 also DIR/<method>-<bits>.gguf
  // (artifact::ExportGguf, what `quantctl fetch --format gguf` writes).
  auto grid = quant::ParseGridTarget(flags.Get("grid", ""));
  const std::string save_dir = flags.Get("save", "");
  if (!grid.ok()) {
    std::fprintf(stderr, "%s\n", grid.status().ToString().c_str());
    return 2;
  }
  if (dir.empty() || calib_path.empty() || eval_path.empty() || !seqs.ok() || !seq_len.ok() ||
      !eval_tokens.ok() || !trellis_l.ok() || !group_size.ok() || !mse_clip.ok() ||
      !act_order.ok() || !sequential.ok() || !damp.ok() || !sens_tokens.ok() || !sink_weight.ok() ||
      !(*sink_weight > 0) || !massive_ratio.ok() || !(*massive_ratio >= 0) || *seqs < 1 || *seq_len < 2 || *sens_tokens < 2) {
    std::fprintf(stderr,
                 "usage: quantd-bench methods --model DIR --calib TOKENS|TXT --eval TOKENS|TXT "
                 "[--configs rtn/2,gptq/2,quarot/4/g64,gptq/4/g32amd0.1 (a: act order, m: mse clip, dX: "
                 "damp X, sX: sink weight X, MX: massive-token ratio X),quip-sharp/b2.5 (bit budget: 2.5 bits on "
                 "average),...|''] [--sink-weight 16] [--massive-ratio 0] "
                 "[--budget-weights abs,rel,measured] [--sens-tokens 1024] "
                 "[--calib-seqs 16] [--seq-len 512] [--calib-sampling first|random] [--calib-seed 0] "
                 "[--start-token none|auto] [--grid q4_0|...] [--save DIR [--gguf 1]] "
                 "[--eval-tokens 8192 (0 = all)] [--trellis-l 16] [--group-size 0] [--mse-clip 0|1] "
                 "[--act-order 0|1] [--sequential 0|1] [--damp 0.01]  (group size and mse-clip "
                 "apply to rtn, gptq and quarot; act-order to gptq and quarot)\n");
    return 2;
  }
  model::LlamaConfig cfg;
  auto fp = artifact::LoadArtifactWeights(dir, &cfg);
  auto calib = LoadBenchTokens(calib_path, dir), eval = LoadBenchTokens(eval_path, dir);
  for (const absl::Status& s : {fp.status(), calib.status(), eval.status()}) {
    if (!s.ok()) {
      std::fprintf(stderr, "%s\n", s.ToString().c_str());
      return 1;
    }
  }
  const int len = static_cast<int>(std::min<long long>(*seq_len, cfg.max_position_embeddings));
  // --calib-sampling first|random (--calib-seed S): the calibration sequences are the first
  // windows of the stream or windows at seeded random starts (model/calibration.h). --start-token
  // auto|none: auto puts the model's start token (where its tokenizer adds one) at the head of
  // every calibration sequence and evaluation window.
  auto sampling = model::ParseCalibSampling(flags.Get("calib-sampling", "first"));
  auto calib_seed = flags.GetInt("calib-seed", 0);
  const std::string start_mode = flags.Get("start-token", "none");
  if (!sampling.ok() || !calib_seed.ok() || (start_mode != "auto" && start_mode != "none")) {
    std::fprintf(stderr, "bad --calib-sampling, --calib-seed or --start-token (auto|none)\n");
    return 2;
  }
  int32_t start_token = -1;
  if (start_mode == "auto") {
    auto st = model::ServingStartToken(dir);
    if (!st.ok()) {
      std::fprintf(stderr, "%s\n", st.status().ToString().c_str());
      return 1;
    }
    start_token = *st;
  }
  model::CalibWindowOptions wopts;
  wopts.seq_len = len;
  wopts.max_seqs = *seqs;
  wopts.sampling = *sampling;
  wopts.seed = static_cast<uint64_t>(*calib_seed);
  wopts.start_token = start_token;
  auto windows = model::CalibrationWindows(*calib, wopts);
  if (!windows.ok()) {
    std::fprintf(stderr, "%s\n", windows.status().ToString().c_str());
    return 1;
  }
  *calib = std::move(*windows);
  const int nseq = static_cast<int>(calib->size() / len);
  // Hessians of the linears' inputs over the calibration sequences, for one (cfg, weights):
  // every layer's (layer < 0), or only `layer`'s, stopping the forward passes after it.
  auto capture = [&](const model::LlamaConfig& c, const model::LlamaWeights& weights,
                     model::TokenWeighting tw,
                     int layer = -1) -> absl::StatusOr<model::HessianCapture> {
    model::HessianCapture cap(c, layer, tw);
    std::vector<absl::Status> errs(nseq);
#pragma omp parallel for schedule(dynamic, 1)
    for (int s = 0; s < nseq; ++s) {
      errs[s] = model::Forward(c, weights,
                               absl::MakeConstSpan(calib->data() + size_t{1} * s * len, len), &cap)
                    .status();
    }
    for (const absl::Status& s : errs) {
      if (!s.ok()) return s;
    }
    return cap;
  };
  model::PerplexityOptions popts;
  popts.context = std::min(512, cfg.max_position_embeddings);
  popts.max_tokens = *eval_tokens;
  popts.start_token = start_token;
  auto t0 = std::chrono::steady_clock::now();
  auto fp_ppl = model::Perplexity(cfg, *fp, *eval, popts);
  if (!fp_ppl.ok()) {
    std::fprintf(stderr, "%s\n", fp_ppl.status().ToString().c_str());
    return 1;
  }
  nlohmann::json head = {{"model", dir},
                         {"calib_tokens", nseq * len},
                         {"calib_sampling", std::string(model::CalibSamplingName(*sampling))},
                         {"calib_seed", *calib_seed},
                         {"start_token", start_token},
                         {"eval_targets", fp_ppl->targets},
                         {"eval_seconds", Seconds(t0)},
                         {"fp_ppl", fp_ppl->ppl}};
  std::printf("%s\n", head.dump().c_str());
  std::fflush(stdout);

  // (layer, linear) work list and its Hessians, normalized once.
  struct Item {
    int layer;
    model::Linear lin;
  };
  std::vector<Item> items;
  for (int l = 0; l < cfg.num_layers; ++l) {
    for (model::Linear lin : kLinears) items.push_back({l, lin});
  }
  std::vector<std::pair<int, model::Linear>> items_view;
  for (const Item& it : items) items_view.push_back({it.layer, it.lin});
  // Quantized results of the configurations run so far, by config ("quip-sharp/2"): a bit
  // budget row reuses the uniform rows of its method.
  std::map<std::string, Quantized> done;
  std::map<std::string, std::vector<double>> dnll_cache;  // measured sensitivities, by method
  // Each capture (fp or rotated model, sink weight) is made once, by the first config that
  // needs it (its row reports the time).
  std::map<std::tuple<bool, double, double>, std::unique_ptr<model::HessianCapture>> caps;
  bool rotated = false;
  model::LlamaConfig rot_cfg;
  model::LlamaWeights rot_fp;
  // An empty --configs evaluates the fp model only (e.g. a whole-test-set perplexity).
  for (const std::string& c :
       std::vector<std::string>(absl::StrSplit(configs, ',', absl::SkipEmpty()))) {
    std::vector<std::string> mb = absl::StrSplit(c, '/');
    int bits = 0;
    int config_group = -1;  // METHOD/BITS/gN: group size N for this config only
    // Options after the group (METHOD/BITS/[gN][a][m][h][dX]): a = act order, m = mse clip,
    // h = Hessian-weighted grid choice (QuantSpec::hessian_scale), dX = damping X.
    bool config_act = false, config_mse = false, config_hscale = false;
    double config_damp = 0;
    // METHOD/bX: a bit budget of X code bits per weight on average over widths 2, 3, 4.
    double avg_bits = 0;
    if (mb.size() == 2 && mb[1].size() > 1 && mb[1][0] == 'b') {
      if (!absl::SimpleAtod(mb[1].substr(1), &avg_bits) || !(avg_bits >= 2 && avg_bits <= 4)) {
        std::fprintf(stderr, "bad config \"%s\": the budget must be in [2, 4]\n", c.c_str());
        return 2;
      }
      mb[1] = "2";
    }
    double config_sink = 0;     // 0: --sink-weight
    double config_massive = 0;  // 0: --massive-ratio
    auto method = mb.size() == 2 || mb.size() == 3 ? quant::ParseMethod(mb[0])
                                                   : absl::InvalidArgumentError("bad");
    bool bad = !method.ok() || !absl::SimpleAtoi(mb[1], &bits);
    if (!bad && mb.size() == 3) {
      std::string opt = mb[2];
      if (!opt.empty() && opt[0] == 'g') {
        size_t k = 1;
        while (k < opt.size() && std::isdigit(static_cast<unsigned char>(opt[k]))) ++k;
        bad = !absl::SimpleAtoi(opt.substr(1, k - 1), &config_group) || config_group < 1;
        opt = opt.substr(k);
      }
      for (size_t k = 0; k < opt.size() && !bad; ++k) {
        if (opt[k] == 'a') {
          config_act = true;
        } else if (opt[k] == 'm') {
          config_mse = true;
        } else if (opt[k] == 'h') {  // h: Hessian-diagonal-weighted grid choice (hessian_scale)
          config_hscale = true;
        } else if (opt[k] == 'd' || opt[k] == 's' || opt[k] == 'M') {
          // dX: damping X; sX: sink weight X; MX: massive-token ratio X ("sink+massive").
          size_t e = k + 1;
          while (e < opt.size() && (std::isdigit(static_cast<unsigned char>(opt[e])) || opt[e] == '.')) ++e;
          double v = 0;
          bad = !absl::SimpleAtod(opt.substr(k + 1, e - k - 1), &v) || !(v > 0);
          (opt[k] == 'd' ? config_damp : opt[k] == 's' ? config_sink : config_massive) = v;
          k = e - 1;
        } else {
          bad = true;
        }
      }
    }
    if (bad) {
      std::fprintf(stderr, "bad config \"%s\": expected METHOD/BITS[/[gN][a][m][h][dX][sX][MX]]\n", c.c_str());
      return 2;
    }
    quant::QuantSpec spec;
    spec.method = *method;
    spec.bits = bits;
    spec.trellis_l = static_cast<int>(*trellis_l);
    spec.damp = config_damp > 0 ? config_damp : *damp;
    const quant::MethodTraits& traits = quant::TraitsOf(spec.method);
    if (traits.scalar_grid) {
      spec.group_size = config_group > 0 ? config_group : static_cast<int>(*group_size);
      spec.mse_clip = *mse_clip != 0 || config_mse;
      spec.hessian_scale = config_hscale;
    }
    // With groups, act order uses static groups (quant/quantize.h).
    spec.act_order = (*act_order != 0 || config_act) && traits.act_order;
    if (*grid != quant::GridTarget::kDefault) {
      const quant::GridShape shape = quant::GridShapeOf(*grid);
      spec.grid = *grid;
      if (spec.bits == 0) spec.bits = shape.bits;
      if (spec.group_size == 0) spec.group_size = shape.group_size;
    }
    if (absl::Status st = quant::ValidateSpec(spec); !st.ok()) {
      std::fprintf(stderr, "%s: %s\n", c.c_str(), st.ToString().c_str());
      return 2;
    }
    if (avg_bits > 0 && *sequential) {
      std::fprintf(stderr, "%s: a bit budget needs every matrix's losses first (not --sequential)\n",
                   c.c_str());
      return 2;
    }
    // quarot quantizes the rotated model (fused norms, untied head, online Hadamards) with
    // Hessians captured through it, as the service's quarot job does (job_steps.cc).
    const bool rotate = traits.transforms_model;
    double hessian_secs = 0;
    t0 = std::chrono::steady_clock::now();
    if (rotate && !rotated) {
      rot_cfg = cfg;
      rot_fp = *fp;
      if (absl::Status st = model::ApplyQuarot(&rot_cfg, &rot_fp, spec.seed); !st.ok()) {
        std::fprintf(stderr, "%s\n", st.ToString().c_str());
        return 1;
      }
      rotated = true;
    }
    const model::LlamaConfig& mcfg = rotate ? rot_cfg : cfg;
    const model::LlamaWeights& src = rotate ? rot_fp : *fp;
    model::TokenWeighting tw;
    tw.sink_weight = config_sink > 0 ? config_sink : *sink_weight;
    tw.massive_ratio = config_massive > 0 ? config_massive : *massive_ratio;
    std::unique_ptr<model::HessianCapture>& cap_slot =
        caps[{rotate, tw.sink_weight, tw.massive_ratio}];
    if (!*sequential && !cap_slot) {
      auto fc = capture(mcfg, src, tw);
      if (!fc.ok()) {
        std::fprintf(stderr, "%s\n", fc.status().ToString().c_str());
        return 1;
      }
      cap_slot = std::make_unique<model::HessianCapture>(std::move(*fc));
      hessian_secs = Seconds(t0);
    }
    model::LlamaWeights w = src;
    std::vector<double> proxy(items.size());
    std::vector<std::string> packed(items.size());
    std::vector<int> guarded(items.size());
    std::vector<absl::Status> qerr(items.size());
    // Quantizes items [begin, end) from `cap` into w (matrices in parallel).
    auto quantize = [&](size_t begin, size_t end, const model::HessianCapture& cap) {
#pragma omp parallel for schedule(dynamic, 1)
      for (size_t i = begin; i < end; ++i) {
        const auto [l, lin] = items[i];
        const model::LinearGroup g = model::GroupOf(lin);
        MatrixD h = cap.Sum(l, g) / static_cast<double>(cap.Tokens(l, g));
        quant::QuantSpec s = spec;
        s.seed = static_cast<uint64_t>(l * 16 + static_cast<int>(lin));
        auto dev = quant::MakeCpuDevice(1);
        const std::string name = model::LinearTensorName(l, lin);
        auto q = quant::QuantizeMatrix(*dev, model::GetLinear(src, l, lin), h, s, name);
        if (!q.ok()) {
          qerr[i] = q.status();
          continue;
        }
        auto deq = quant::DequantizeMatrix(q->packed);
        if (!deq.ok()) {
          qerr[i] = deq.status();
          continue;
        }
        model::MutableLinear(w, l, lin) = std::move(*deq);
        packed[i] = std::move(q->packed);
        proxy[i] = q->proxy_loss;
        // quarot stores gptq matrices by design; only a rotated method can fall back to gptq.
        guarded[i] = traits.baseline_guard && q->stored_method != spec.method;
      }
    };
    if (avg_bits > 0) {
      const model::HessianCapture& cap = *cap_slot;
      BudgetRun run{mb[0], avg_bits,      &cap,  &mcfg,         &src,        &items_view,
                    budget_weights, *sens_tokens, &*calib, &*eval, popts, hessian_secs};
      auto quantize_at = [&](int b) -> absl::StatusOr<Quantized> {
        spec.bits = b;
        std::fill(qerr.begin(), qerr.end(), absl::OkStatus());
        quantize(0, items.size(), cap);
        for (const absl::Status& s : qerr) {
          if (!s.ok()) return s;
        }
        return Quantized{packed, proxy, guarded};
      };
      const absl::Status st = RunBudget(run, quantize_at, &done, &dnll_cache);
      if (!st.ok()) {
        std::fprintf(stderr, "%s: %s\n", c.c_str(), st.ToString().c_str());
        return 1;
      }
      continue;
    }
    double qsecs = 0;
    if (!*sequential) {
      t0 = std::chrono::steady_clock::now();
      quantize(0, items.size(), *cap_slot);
      qsecs = Seconds(t0);
    } else {
      // GPTQ's sequential mode: layer l's Hessians are captured through the model whose layers
      // before l are already quantized (w), so each layer compensates its inputs' error.
      const size_t per_layer = items.size() / mcfg.num_layers;
      for (int l = 0; l < mcfg.num_layers; ++l) {
        t0 = std::chrono::steady_clock::now();
        auto lc = capture(mcfg, w, tw, l);
        if (!lc.ok()) {
          std::fprintf(stderr, "%s\n", lc.status().ToString().c_str());
          return 1;
        }
        hessian_secs += Seconds(t0);
        t0 = std::chrono::steady_clock::now();
        quantize(l * per_layer, (l + 1) * per_layer, *lc);
        qsecs += Seconds(t0);
      }
    }
    for (const absl::Status& s : qerr) {
      if (!s.ok()) {
        std::fprintf(stderr, "%s: %s\n", c.c_str(), s.ToString().c_str());
        return 1;
      }
    }
    double mean = 0;
    int nguard = 0;
    for (size_t i = 0; i < items.size(); ++i) {
      mean += proxy[i];
      nguard += guarded[i];
    }
    mean /= items.size();
    if (!*sequential) done[c] = {packed, proxy, guarded};
    t0 = std::chrono::steady_clock::now();
    auto p = model::Perplexity(mcfg, w, *eval, popts);
    nlohmann::json out = {{"method", mb[0]},
                          {"bits", spec.bits},
                          {"mean_proxy_loss", mean},
                          {"ppl", p.ok() ? p->ppl : -1.0},
                          {"quantize_seconds", qsecs},
                          {"eval_seconds", Seconds(t0)},
                          {"matrices", items.size()},
                          {"stored_bits_per_weight", StoredBitsPerWeight(packed, src, items_view)},
                          {"guard_kept_gptq", nguard}};
    if (hessian_secs > 0) out["hessian_seconds"] = hessian_secs;
    if (*sequential) out["sequential"] = true;
    if (traits.trellis) out["trellis_l"] = spec.trellis_l;
    if (spec.group_size > 0) out["group_size"] = spec.group_size;
    if (spec.mse_clip) out["mse_clip"] = true;
    if (spec.act_order) out["act_order"] = true;
    if (spec.hessian_scale) out["hessian_scale"] = true;
    if (spec.damp != 0.01) out["damp"] = spec.damp;
    out["sink_weight"] = tw.sink_weight;
    if (tw.Massive()) {
      out["massive_ratio"] = tw.massive_ratio;
      // Rows flagged beyond the position weights, over layers (of the last capture used).
      if (!*sequential) out["massive_flags"] = cap_slot->MassiveFlags();
    }
    if (!save_dir.empty()) {
      if (rotate) {
        std::fprintf(stderr, "--save: quarot artifacts are not written by the bench\n");
        return 2;
      }
      std::map<std::string, std::string> by_name;
      for (size_t i = 0; i < items.size(); ++i) {
        by_name[model::LinearTensorName(items[i].layer, items[i].lin)] = std::move(packed[i]);
      }
      nlohmann::json manifest = {
          {"name", "bench"},
          {"spec", {{"method", mb[0]}, {"bits", spec.bits}, {"group_size", spec.group_size},
                    {"act_order", spec.act_order}, {"grid", std::string(quant::GridTargetName(spec.grid))}}},
          {"perplexity", {{"quantd", p.ok() ? p->ppl : -1.0}}}};
      std::string art = JoinPath(save_dir, absl::StrCat(mb[0], "-", spec.bits));
      if (mb.size() == 3) absl::StrAppend(&art, "-", mb[2]);
      absl::Status st = MakeDirs(art);
      if (st.ok()) st = artifact::WriteArtifactFromWeights(cfg, *fp, by_name, JoinPath(art, "model.safetensors"));
      for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json", "tok512.bin", "tokenizer.bin"}) {
        if (!st.ok() || !std::filesystem::exists(JoinPath(dir, f))) continue;
        auto bytes = ReadFile(JoinPath(dir, f), uint64_t{1} << 30);
        st = bytes.ok() ? WriteFileAtomic(JoinPath(art, f), *bytes) : bytes.status();
      }
      if (st.ok()) st = WriteFileAtomic(JoinPath(art, "manifest.json"), manifest.dump(2) + "\n");
      if (st.ok() && flags.Get("gguf", "0") == "1") {
        auto g = artifact::ExportGguf(art, art + ".gguf");
        st = g.status();
        if (g.ok()) {
          out["gguf"] = {{"path", art + ".gguf"}, {"bytes", g->bytes},
                         {"quantized", g->quantized}, {"fallback_f32", g->fallback_f32}};
        }
      }
      if (!st.ok()) {
        std::fprintf(stderr, "--save %s: %s\n", save_dir.c_str(), st.ToString().c_str());
        return 1;
      }
    }
    std::printf("%s\n", out.dump().c_str());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace quantd::bench
