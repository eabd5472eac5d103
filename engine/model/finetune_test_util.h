// Checks shared by the fine-tuning tests (finetune_test, finetune_kl_test).
// Thread-safety: not thread-safe (test-only).
#ifndef QUANTD_ENGINE_MODEL_FINETUNE_TEST_UTIL_H_
#define QUANTD_ENGINE_MODEL_FINETUNE_TEST_UTIL_H_

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "engine/model/finetune.h"
#include "engine/model/perplexity.h"
#include "gtest/gtest.h"

namespace quantd::model::testing {

// The tuned weights are diag(out)·W·diag(in) of the untuned ones, for every linear of every
// layer (within 1e-5).
inline void ExpectScaledWeights(const LlamaConfig& cfg, const std::vector<LayerScales>& scales,
                                const LlamaWeights& untuned, const LlamaWeights& tuned) {
  ASSERT_EQ(static_cast<int>(scales.size()), cfg.num_layers);
  for (int l = 0; l < cfg.num_layers; ++l) {
    for (Linear lin : kAllLinears) {
      const int i = static_cast<int>(lin);
      const MatrixF want = scales[l].out[i].asDiagonal() * GetLinear(untuned, l, lin) *
                           scales[l].in[i].asDiagonal();
      EXPECT_LE((want - GetLinear(tuned, l, lin)).cwiseAbs().maxCoeff(), 1e-5f)
          << "layer " << l << " " << LinearName(lin);
    }
  }
}

// Perplexity of the untuned and tuned weights on `eval` (256-token windows); expects the tuned
// one lower. {NaN, NaN} when either evaluation fails (a failure is recorded).
inline std::pair<double, double> ExpectPerplexityDrops(const LlamaConfig& cfg,
                                                       const LlamaWeights& untuned,
                                                       const LlamaWeights& tuned,
                                                       const std::vector<int32_t>& eval) {
  PerplexityOptions popts;
  popts.context = 256;
  auto before = Perplexity(cfg, untuned, eval, popts);
  auto after = Perplexity(cfg, tuned, eval, popts);
  EXPECT_TRUE(before.ok() && after.ok());
  if (!before.ok() || !after.ok()) return {NAN, NAN};
  EXPECT_LT(after->ppl, before->ppl);
  return {before->ppl, after->ppl};
}

}  // namespace quantd::model::testing

#endif  // QUANTD_ENGINE_MODEL_FINETUNE_TEST_UTIL_H_
