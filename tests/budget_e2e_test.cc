// End-to-end for the bit budget (issue 24): `quantctl submit --avg-bits` through quantd and two
// workers on the bundled stories260K. The job quantizes every matrix at 2, 3 and 4 bits, keeps
// one width per matrix within the budget, and the manifest records the allocation.
#include <cmath>
#include <map>

#include "common/file_util.h"
#include "engine/artifact/artifact.h"
#include "engine/format/safetensors.h"
#include "engine/model/perplexity.h"
#include "engine/quant/quantize.h"
#include "engine/tokenizer/tokens.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e_util.h"
#include "tests/process_util.h"

namespace quantd::testing {
namespace {

using json = nlohmann::json;

TEST(BudgetE2E, BudgetedJobMeetsItsBudgetAndBeatsUniformTwoBits) {
  Daemon daemon(2);
  ASSERT_TRUE(daemon.ok()) << daemon.Log();
  auto submit = [&](std::vector<std::string> extra, const std::string& name) {
    std::vector<std::string> a = {"submit", ExampleModel(), "--calib", ExampleCalib(), "--eval",
                                  ExampleEval(), "--method", "quip-sharp", "--name", name,
                                  "--max-calib-seqs", "16"};
    a.insert(a.end(), extra.begin(), extra.end());
    return daemon.Quantctl(a);
  };
  // Out-of-range and conflicting budgets are refused at submit, naming the value.
  CommandResult high = submit({"--avg-bits", "4.5"}, "e2e-bad");
  EXPECT_NE(high.exit_code, 0);
  EXPECT_NE(high.err.find("avg_bits 4.5 is outside [2, 4]"), std::string::npos) << high.err;
  EXPECT_NE(high.err.find("INVALID_ARGUMENT"), std::string::npos) << high.err;
  CommandResult both = submit({"--avg-bits", "2.5", "--bits", "3"}, "e2e-bad");
  EXPECT_NE(both.exit_code, 0);
  EXPECT_NE(both.err.find("bits 3 and avg_bits 2.5"), std::string::npos) << both.err;
  CommandResult weight = submit({"--avg-bits", "2.5", "--budget-weight", "fisher"}, "e2e-bad");
  EXPECT_NE(weight.exit_code, 0);
  EXPECT_NE(weight.err.find("fisher"), std::string::npos) << weight.err;

  CommandResult r = submit({"--avg-bits", "2.5", "--wait"}, "e2e-budget");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err << daemon.Log();
  CommandResult u = submit({"--bits", "2", "--wait"}, "e2e-uniform2");
  ASSERT_EQ(u.exit_code, 0) << u.out << u.err << daemon.Log();
  auto text = ReadFile(daemon.data_dir() + "/registry/e2e-budget/1/manifest.json");
  ASSERT_TRUE(text.ok());
  const json m = json::parse(*text, nullptr, false);
  ASSERT_TRUE(m.is_object());
  EXPECT_EQ(m["spec"]["avg_bits"], 2.5);
  EXPECT_EQ(m["spec"]["budget_weight"], "rel");
  const json& b = m["bit_budget"];
  ASSERT_TRUE(b.is_object()) << m.dump(2);
  EXPECT_LE(b["code_bits_per_weight"].get<double>(), 2.5);
  EXPECT_GT(b["code_bits_per_weight"].get<double>(), 2.3);  // the budget is spent, not ignored
  EXPECT_TRUE(m["export_formats"].empty());

  // The artifact holds what the manifest says: each packed matrix's own header has the bits
  // recorded for it, and those bits average within the budget.
  const std::string out = MakeTempDir("fetch-budget") + "/model";
  CommandResult f = daemon.Quantctl({"fetch", "e2e-budget", "-o", out});
  ASSERT_EQ(f.exit_code, 0) << f.out << f.err;
  auto st = model::SafetensorsFile::Open(out + "/model.safetensors");
  ASSERT_TRUE(st.ok()) << st.status();
  ASSERT_EQ(m["tensors"].size(), 35u);
  double code_bits = 0, weights = 0;
  std::map<int, int> at_bits;
  for (const json& t : m["tensors"]) {
    auto q = (*st)->Get(t["stored_as"].get<std::string>());
    ASSERT_TRUE(q.ok()) << t.dump();
    auto info = quant::InspectPacked(
        std::string_view(reinterpret_cast<const char*>(q->data.data()), q->data.size()));
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->bits, t["bits"].get<int>()) << t.dump();
    code_bits += static_cast<double>(info->bits) * info->m * info->n;
    weights += static_cast<double>(info->m) * info->n;
    ++at_bits[info->bits];
  }
  EXPECT_LE(code_bits / weights, 2.5);
  EXPECT_DOUBLE_EQ(code_bits / weights, b["code_bits_per_weight"].get<double>());
  for (const auto& [bits, count] : at_bits) {
    EXPECT_EQ(b["matrices_at_bits"][std::to_string(bits)].get<int>(), count);
  }
  EXPECT_GE(at_bits.size(), 2u);  // mixed widths
  // The fetched artifact evaluates to the job's perplexity, and 2.5 bits beat uniform 2 bits.
  const double q = m["perplexity"]["quantized"];
  EXPECT_NEAR(ArtifactPpl(out), q, 1e-6 * q);
  auto utext = ReadFile(daemon.data_dir() + "/registry/e2e-uniform2/1/manifest.json");
  ASSERT_TRUE(utext.ok());
  const double uniform2 = json::parse(*utext)["perplexity"]["quantized"];
  EXPECT_LT(q, uniform2);
  std::printf("stories260K quip-sharp: uniform 2-bit ppl %.4f, budget 2.5 ppl %.4f (%.4f code "
              "bits, %.4f stored bits per weight)\n",
              uniform2, q, b["code_bits_per_weight"].get<double>(),
              b["stored_bits_per_weight"].get<double>());
}

}  // namespace
}  // namespace quantd::testing
