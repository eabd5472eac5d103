// Helpers shared by the end-to-end tests: the bundled example model and data, and quantctl calls
// that return the JSON documents of `--json` (docs/cli.md). Header-only: gtest assertions inside.
// Thread-safety: not thread-safe (test-only).
#ifndef QUANTD_TESTS_E2E_UTIL_H_
#define QUANTD_TESTS_E2E_UTIL_H_

#include <chrono>
#include <cmath>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "engine/artifact/artifact.h"
#include "engine/model/perplexity.h"
#include "engine/tokenizer/tokens.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/process_util.h"

namespace quantd::testing {

inline std::string ExampleModel() { return SourceDir() + "/examples/stories260K"; }
inline std::string ExampleCalib() {
  return SourceDir() + "/examples/tinystories/calib_stories_0_499.u16";
}
inline std::string ExampleEval() {
  return SourceDir() + "/examples/tinystories/eval_stories_500_999.u16";
}

// Parses without throwing; a discarded value on malformed input.
inline nlohmann::json ParseJson(const std::string& s) {
  return nlohmann::json::parse(s, nullptr, /*allow_exceptions=*/false);
}

// `quantctl submit ARGS --json` (not waiting): the job. A failed submit is a test failure.
inline nlohmann::json SubmitJson(const Daemon& d, std::vector<std::string> args) {
  std::vector<std::string> a = {"submit"};
  a.insert(a.end(), args.begin(), args.end());
  a.push_back("--json");
  CommandResult r = d.Quantctl(a);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  nlohmann::json j = ParseJson(r.out);
  EXPECT_FALSE(j.is_discarded()) << r.out;
  return j;
}

// `quantctl status ID --json`: the job, or null JSON when the call fails (callers that poll
// decide whether that is an error).
inline nlohmann::json StatusJson(const Daemon& d, const std::string& id) {
  CommandResult r = d.Quantctl({"status", id, "--json"}, 30);
  return r.exit_code == 0 ? ParseJson(r.out) : nlohmann::json();
}

// True for a job (status JSON) in a terminal state.
inline bool Terminal(const nlohmann::json& job) {
  if (!job.is_object()) return false;
  const std::string s = job.value("state", "");
  return s == "JOB_STATE_SUCCEEDED" || s == "JOB_STATE_FAILED" || s == "JOB_STATE_CANCELLED";
}

// Polls `quantctl status` until `pred` holds or `timeout_s` (times TimeoutScale()) passes;
// returns the last status (null JSON if none could be read). Callers assert on it.
inline nlohmann::json WaitFor(const Daemon& d, const std::string& id,
                              const std::function<bool(const nlohmann::json&)>& pred,
                              int timeout_s = 600) {
  nlohmann::json j;
  const auto end =
      std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s * TimeoutScale());
  while (std::chrono::steady_clock::now() < end) {
    j = StatusJson(d, id);
    if (j.is_object() && pred(j)) return j;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return j;
}

// A suite whose tests share one quantd with two local workers (daemon_), started before its
// first test and stopped after its last.
class SharedDaemonSuite : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { daemon_ = new Daemon(2); }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
  }
  static inline Daemon* daemon_ = nullptr;
};

// The perplexity on ExampleEval() (default evaluation options) of the artifact directory `dir`,
// computed here; NAN, with a test failure, when it cannot be evaluated. `cfg` and `w`, when
// given, receive the loaded config and weights.
inline double ArtifactPpl(const std::string& dir, model::LlamaConfig* cfg = nullptr,
                          model::LlamaWeights* w = nullptr) {
  model::LlamaConfig c;
  auto weights = artifact::LoadArtifactWeights(dir, &c);
  EXPECT_TRUE(weights.ok()) << weights.status();
  auto tokens = model::LoadTokenFile(ExampleEval());
  EXPECT_TRUE(tokens.ok()) << tokens.status();
  if (!weights.ok() || !tokens.ok()) return NAN;
  auto ppl = model::Perplexity(c, *weights, *tokens, {});
  EXPECT_TRUE(ppl.ok()) << ppl.status();
  if (cfg != nullptr) *cfg = c;
  if (w != nullptr) *w = std::move(*weights);
  return ppl.ok() ? ppl->ppl : NAN;
}

// `quantctl fetch NAME -o DIR` (checksums verified) into a fresh directory, then ArtifactPpl.
inline double FetchedPpl(const Daemon& d, const std::string& name,
                         model::LlamaConfig* cfg = nullptr, model::LlamaWeights* w = nullptr) {
  const std::string out = MakeTempDir("fetch") + "/model";
  CommandResult f = d.Quantctl({"fetch", name, "-o", out});
  EXPECT_EQ(f.exit_code, 0) << f.out << f.err;
  return ArtifactPpl(out, cfg, w);
}

}  // namespace quantd::testing

#endif  // QUANTD_TESTS_E2E_UTIL_H_
