// Quality floors on the bundled real model (stories260K), calibration = TinyStories stories
// 0-499, evaluation = stories 500-999, 512-token windows. Runs the same libraries the workers
// run, in-process, for every method x bits, and prints the table recorded in
// docs/benchmarks.md. The floors come from the service issue (independent numpy references).
#include <cmath>
#include <cstdio>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/process_util.h"
#include "engine/format/checkpoint.h"
#include "engine/model/config.h"
#include "engine/model/forward.h"
#include "engine/model/hessian_capture.h"
#include "engine/model/perplexity.h"
#include "engine/model/quarot.h"
#include "engine/tokenizer/tokens.h"
#include "engine/model/weights.h"
#include "engine/quant/device.h"
#include "engine/quant/quantize.h"

namespace quantd::testing {
namespace {

constexpr model::Linear kLinears[] = {model::Linear::kQ,    model::Linear::kK, model::Linear::kV,
                                      model::Linear::kO,    model::Linear::kGate,
                                      model::Linear::kUp,   model::Linear::kDown};

struct Outcome {
  std::vector<double> proxy;  // per matrix, in layer-major order
  std::vector<double> rotated_proxy;  // the requested method's own loss (before the baseline guard)
  int guarded = 0;                    // matrices stored as the unrotated gptq baseline
  double mean_proxy = 0;
  double ppl = 0;
  double seconds = 0;
};

TEST(QualityFloors, Stories260K) {
  const std::string dir = SourceDir() + "/examples/stories260K";
  auto cfg = model::LoadLlamaConfig(dir);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  auto ckpt = model::Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  auto fp = model::LoadLlamaWeights(**ckpt, *cfg);
  ASSERT_TRUE(fp.ok());
  auto calib = model::LoadTokenFile(SourceDir() + "/examples/tinystories/calib_stories_0_499.u16");
  auto eval = model::LoadTokenFile(SourceDir() + "/examples/tinystories/eval_stories_500_999.u16");
  ASSERT_TRUE(calib.ok() && eval.ok());

  model::HessianCapture cap(*cfg);
  const size_t len = 512;
  for (size_t s = 0; s + len <= calib->size(); s += len) {
    ASSERT_TRUE(model::Forward(*cfg, *fp, absl::MakeConstSpan(calib->data() + s, len), &cap).ok());
  }
  auto fp_ppl = model::Perplexity(*cfg, *fp, *eval, {});
  ASSERT_TRUE(fp_ppl.ok());
  EXPECT_NEAR(fp_ppl->ppl, 5.4540, 5e-3);

  auto device = quant::MakeCpuDevice(0);
  auto run = [&](const std::string& method, int bits) {
    Outcome o;
    model::LlamaWeights w = *fp;
    quant::QuantSpec spec;
    spec.method = *quant::ParseMethod(method);
    spec.bits = bits;
    const absl::Time start = absl::Now();
    for (int l = 0; l < cfg->num_layers; ++l) {
      for (model::Linear lin : kLinears) {
        const model::LinearGroup g = model::GroupOf(lin);
        MatrixD h = cap.Sum(l, g) / static_cast<double>(cap.Tokens(l, g));
        spec.seed = static_cast<uint64_t>(l * 16 + static_cast<int>(lin));
        const std::string name = model::LinearTensorName(l, lin);
        auto q = quant::QuantizeMatrix(*device, model::GetLinear(*fp, l, lin), h, spec, name);
        EXPECT_TRUE(q.ok()) << name << ": " << q.status();
        if (!q.ok()) return o;
        auto deq = quant::DequantizeMatrix(q->packed);
        EXPECT_TRUE(deq.ok()) << deq.status();
        if (!deq.ok()) return o;
        model::MutableLinear(w, l, lin) = *deq;
        o.proxy.push_back(q->proxy_loss);
        o.rotated_proxy.push_back(q->rotated_proxy_loss);
        o.guarded += q->stored_method != spec.method;
        o.mean_proxy += q->proxy_loss;
      }
    }
    o.seconds = absl::ToDoubleSeconds(absl::Now() - start);
    o.mean_proxy /= o.proxy.size();
    auto p = model::Perplexity(*cfg, w, *eval, {});
    EXPECT_TRUE(p.ok());
    o.ppl = p.ok() ? p->ppl : NAN;
    return o;
  };

  std::map<std::string, Outcome> r;
  for (const auto& [method, bits] : std::vector<std::pair<std::string, int>>{
           {"rtn", 2}, {"rtn", 3}, {"rtn", 4}, {"gptq", 2}, {"gptq", 3}, {"gptq", 4},
           {"quip", 2}, {"quip", 3}, {"quip", 4}, {"quip-sharp", 2}, {"quip-sharp", 3},
           {"quip-sharp", 4}, {"qtip", 2}, {"butterfly", 2}, {"butterfly", 3},
           {"butterfly", 4}}) {
    const std::string key = absl::StrCat(method, "/", bits);
    r[key] = run(method, bits);
    ASSERT_EQ(r[key].proxy.size(), 35u) << key;
  }
  std::printf("\n| method | bits | mean rel. proxy loss | ppl (fp %.4f) | quantize s |\n|---|---|---|---|---|\n",
              fp_ppl->ppl);
  for (const auto& [k, o] : r) {
    std::printf("| %s | %s | %.5f | %.4f | %.2f |\n", k.substr(0, k.find('/')).c_str(),
                k.substr(k.find('/') + 1).c_str(), o.mean_proxy, o.ppl, o.seconds);
    EXPECT_TRUE(std::isfinite(o.ppl)) << k;
  }
  // Per matrix, LDLQ (GPTQ form, no rotation) never loses to RTN at the same bits.
  for (int bits : {2, 3, 4}) {
    const std::string g = absl::StrCat("gptq/", bits), t = absl::StrCat("rtn/", bits);
    for (size_t i = 0; i < 35; ++i) EXPECT_LE(r[g].proxy[i], r[t].proxy[i]) << g << " matrix " << i;
  }
  // The rotated methods (quip, quip-sharp) beat RTN on average, and with the baseline guard
  // (default on) never lose to it per matrix. Their own rotated results alone do lose on a few
  // matrices: layer q/k, whose input energy sits on outlier channels that RTN's per-channel grid
  // keeps and the Hadamard rotation spreads out. Print how many, and how many the guard kept.
  for (int bits : {2, 3, 4}) {
    const std::string t = absl::StrCat("rtn/", bits);
    for (const char* m : {"quip", "quip-sharp", "qtip", "butterfly"}) {
      const std::string rot = absl::StrCat(m, "/", bits);
      if (r.count(rot) == 0) continue;  // qtip runs at 2 bits only (its Viterbi is the slow part)
      for (size_t i = 0; i < 35; ++i) EXPECT_LE(r[rot].proxy[i], r[t].proxy[i]) << rot << " matrix " << i;
      int worse = 0;
      for (size_t i = 0; i < 35; ++i) worse += r[rot].rotated_proxy[i] > r[t].proxy[i];
      std::printf("%s: rotated result above %s on %d of 35 matrices; guard kept gptq on %d\n",
                  rot.c_str(), t.c_str(), worse, r[rot].guarded);
      if (bits == 2) EXPECT_LT(r[rot].mean_proxy, r[t].mean_proxy) << rot;
    }
  }
  // ButterflyQuant (issue 9): the learned butterfly after the RHT against quip's RHT alone, both
  // with the QuIP scalar grid and LDLQ, compared on the methods' own (unguarded) losses.
  for (int bits : {2, 3, 4}) {
    const Outcome& b = r[absl::StrCat("butterfly/", bits)];
    const Outcome& q = r[absl::StrCat("quip/", bits)];
    double mb = 0, mq = 0;
    int below = 0;
    if (bits == 2) std::printf("\n| layer | matrix | quip (RHT) | butterfly | ratio |\n|---|---|---|---|---|\n");
    for (size_t i = 0; i < 35; ++i) {
      mb += b.rotated_proxy[i] / 35;
      mq += q.rotated_proxy[i] / 35;
      below += b.rotated_proxy[i] < q.rotated_proxy[i];
      if (bits == 2) {
        std::printf("| %zu | %s | %.5f | %.5f | %.3f |\n", i / 7,
                    std::string(model::LinearName(kLinears[i % 7])).c_str(), q.rotated_proxy[i],
                    b.rotated_proxy[i], b.rotated_proxy[i] / q.rotated_proxy[i]);
      }
    }
    std::printf("butterfly/%d: mean own proxy %.5f vs quip %.5f; below quip on %d of 35\n", bits,
                mb, mq, below);
    if (bits == 2) EXPECT_LT(mb, mq);
  }

  // QuaRot (issue 9), 4 bits: rotate the model, capture the rotated model's Hessians on the
  // same calibration data, GPTQ every rotated linear, evaluate with the online rotation.
  {
    model::LlamaConfig rcfg = *cfg;
    model::LlamaWeights rw = *fp;
    ASSERT_TRUE(model::ApplyQuarot(&rcfg, &rw, 0).ok());
    model::HessianCapture rcap(rcfg);
    for (size_t s = 0; s + len <= calib->size(); s += len) {
      ASSERT_TRUE(
          model::Forward(rcfg, rw, absl::MakeConstSpan(calib->data() + s, len), &rcap).ok());
    }
    model::LlamaWeights qw = rw;
    quant::QuantSpec spec;
    spec.method = quant::Method::kQuarot;
    spec.bits = 4;
    double mean = 0;
    const absl::Time start = absl::Now();
    for (int l = 0; l < rcfg.num_layers; ++l) {
      for (model::Linear lin : kLinears) {
        const model::LinearGroup g = model::GroupOf(lin);
        const MatrixD h = rcap.Sum(l, g) / static_cast<double>(rcap.Tokens(l, g));
        auto q = quant::QuantizeMatrix(*device, model::GetLinear(rw, l, lin), h, spec,
                                       model::LinearTensorName(l, lin));
        ASSERT_TRUE(q.ok()) << q.status();
        model::MutableLinear(qw, l, lin) = *quant::DequantizeMatrix(q->packed);
        mean += q->proxy_loss / 35;
      }
    }
    const double secs = absl::ToDoubleSeconds(absl::Now() - start);
    auto rot_ppl = model::Perplexity(rcfg, rw, *eval, {});
    auto q_ppl = model::Perplexity(rcfg, qw, *eval, {});
    ASSERT_TRUE(rot_ppl.ok() && q_ppl.ok());
    std::printf("| quarot | 4 | %.5f | %.4f | %.2f |  (rotated fp ppl %.4f)\n", mean, q_ppl->ppl,
                secs, rot_ppl->ppl);
    EXPECT_NEAR(rot_ppl->ppl, fp_ppl->ppl, 1e-3);
    EXPECT_LT(q_ppl->ppl, 1.25 * fp_ppl->ppl);  // the gptq 4-bit floor
  }
  // QTIP's trellis beats QuIP#'s E8P at 2 bits (issue 5).
  EXPECT_LT(r["qtip/2"].mean_proxy, r["quip-sharp/2"].mean_proxy);
  EXPECT_LT(r["quip-sharp/2"].mean_proxy, r["quip/2"].mean_proxy);
  EXPECT_LT(r["quip/2"].mean_proxy, r["gptq/2"].mean_proxy);
  EXPECT_LT(r["gptq/3"].ppl, r["rtn/3"].ppl);
  EXPECT_LT(r["gptq/4"].ppl, 1.25 * fp_ppl->ppl);
  EXPECT_LT(r["quip-sharp/2"].ppl, 0.5 * r["rtn/2"].ppl);
  EXPECT_LT(r["quip-sharp/4"].ppl, 2.0 * fp_ppl->ppl);
}

}  // namespace
}  // namespace quantd::testing
