// End-to-end for the rotation methods (issue 9): quarot and butterfly through quantd, two
// workers and quantctl on the bundled stories260K.
#include <filesystem>

#include "common/file_util.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e_util.h"
#include "tests/process_util.h"
#include "engine/artifact/artifact.h"
#include "engine/model/perplexity.h"
#include "engine/tokenizer/tokens.h"

namespace quantd::testing {
namespace {

using json = nlohmann::json;


class RotationE2E : public SharedDaemonSuite {
 protected:
  // Submits, waits, checks success; returns the published manifest.
  static json Run(const std::string& method, const std::string& bits, const std::string& name) {
    CommandResult r = daemon_->Quantctl({"submit", ExampleModel(), "--calib", ExampleCalib(), "--eval", ExampleEval(),
                                         "--method", method, "--bits", bits, "--name", name,
                                         "--max-calib-seqs", "64", "--wait"});
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err << daemon_->Log();
    auto text = ReadFile(daemon_->data_dir() + "/registry/" + name + "/1/manifest.json");
    EXPECT_TRUE(text.ok()) << r.out << r.err;
    return text.ok() ? json::parse(*text, nullptr, false) : json();
  }
};

TEST_F(RotationE2E, Quarot4Bit) {
  ASSERT_TRUE(daemon_->ok()) << daemon_->Log();
  json m = Run("quarot", "4", "e2e-quarot");
  ASSERT_TRUE(m.is_object());
  EXPECT_EQ(m["method"], "quarot");
  ASSERT_EQ(m["tensors"].size(), 35u);
  const double fp = m["perplexity"]["fp"], q = m["perplexity"]["quantized"];
  EXPECT_NEAR(fp, 5.4540, 5e-3);
  EXPECT_LT(q, 1.25 * fp);  // the gptq 4-bit floor of quality_floors_test
  model::LlamaConfig cfg;
  model::LlamaWeights w;
  EXPECT_NEAR(FetchedPpl(*daemon_, "e2e-quarot", &cfg, &w), q, 1e-6 * q);
  // The artifact carries the rotation: untied head, unit norms, the online Hadamards before
  // down_proj and (across heads) before o_proj.
  EXPECT_FALSE(cfg.tie_word_embeddings);
  EXPECT_EQ(w.online_down.size, 172);
  EXPECT_EQ(w.online_o.size, cfg.num_heads);
  EXPECT_EQ(w.layers[0].attn_norm.minCoeff(), 1.0f);
  // A dense HF export cannot express the online rotation: refused, with the reason.
  CommandResult fh = daemon_->Quantctl(
      {"fetch", "e2e-quarot", "-o", MakeTempDir("fetch-hf") + "/m", "--format", "hf"});
  EXPECT_NE(fh.exit_code, 0);
  EXPECT_NE((fh.out + fh.err).find("QuaRot"), std::string::npos) << fh.out << fh.err;
}

TEST_F(RotationE2E, Butterfly2Bit) {
  ASSERT_TRUE(daemon_->ok()) << daemon_->Log();
  json m = Run("butterfly", "2", "e2e-butterfly");
  ASSERT_TRUE(m.is_object());
  EXPECT_EQ(m["method"], "butterfly");
  ASSERT_EQ(m["tensors"].size(), 35u);
  int butterflies = 0;
  for (const auto& t : m["tensors"]) butterflies += t.value("stored_method", "") == "butterfly";
  EXPECT_GT(butterflies, 17);
  const double q = m["perplexity"]["quantized"];
  EXPECT_TRUE(std::isfinite(q));
  model::LlamaConfig cfg;
  model::LlamaWeights w;
  EXPECT_NEAR(FetchedPpl(*daemon_, "e2e-butterfly", &cfg, &w), q, 1e-6 * q);
}

}  // namespace
}  // namespace quantd::testing
