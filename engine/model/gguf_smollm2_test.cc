// Checks on the real SmolLM2-135M-Instruct converted by scripts/fetch_smollm2.sh. Skips when
// ${QUANTD_CACHE:-$HOME/.cache/quantd}/smollm2-135m/hf is absent (the default CI case).
#include <cstdlib>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/file_util.h"
#include "engine/format/checkpoint.h"
#include "engine/model/config.h"
#include "engine/model/forward.h"
#include "engine/tokenizer/tokenizer_hf.h"
#include "engine/model/test_util.h"
#include "engine/model/weights.h"

namespace quantd::model {
namespace {

TEST(Smollm2Test, ConvertedModelHasTheExpectedShapeAndSpeaksEnglish) {
  const std::string dir = testing::Smollm2Dir();
  if (!FileSize(dir + "/config.json").ok()) {
    GTEST_SKIP() << dir << " absent; run scripts/fetch_smollm2.sh to enable this test";
  }
  auto cfg = LoadLlamaConfig(dir);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(testing::SizesOf(*cfg), (testing::ConfigSizes{576, 1536, 30, 9, 3, 49152}));
  EXPECT_TRUE(cfg->tie_word_embeddings);
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto w = LoadLlamaWeights(**ckpt, *cfg);
  ASSERT_TRUE(w.ok()) << w.status();

  auto tok = HfTokenizer::Load(dir + "/tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = (*tok)->Encode("The capital of France is", /*bos=*/false);
  ASSERT_TRUE(ids.ok()) << ids.status();
  // The same ids the Python `tokenizers` library gives for the written tokenizer.json.
  EXPECT_EQ(*ids, (std::vector<int32_t>{504, 3575, 282, 4649, 314}));

  std::vector<int32_t> seq = *ids;
  for (int step = 0; step < 6; ++step) {
    auto logits = Forward(*cfg, *w, seq);
    ASSERT_TRUE(logits.ok()) << logits.status();
    Eigen::Index best;
    logits->row(logits->rows() - 1).maxCoeff(&best);
    seq.push_back(static_cast<int32_t>(best));
  }
  auto text = (*tok)->Decode(absl::MakeConstSpan(seq).subspan(ids->size()));
  ASSERT_TRUE(text.ok()) << text.status();
  std::printf("greedy continuation: \"The capital of France is%s\"\n", text->c_str());
  EXPECT_NE(text->find("Paris"), std::string::npos) << *text;
}

}  // namespace
}  // namespace quantd::model
