// End-to-end for sequential jobs (`--sequential`, GPTQ's layer-by-layer order): one Hessian +
// quantize stage per layer, each layer's Hessians captured through the quantized layers before
// it. Runs quantd with two workers and quantctl on the bundled stories260K (5 layers).
#include <csignal>
#include <map>
#include <regex>

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

std::vector<std::string> Job(const std::string& method, const std::string& bits,
                             const std::string& name, bool sequential) {
  std::vector<std::string> a = {ExampleModel(), "--calib", ExampleCalib(), "--eval", ExampleEval(),
                                "--method", method, "--bits", bits, "--name", name,
                                "--max-calib-seqs", "64"};
  if (sequential) a.push_back("--sequential");
  return a;
}

json Manifest(const std::string& data_dir, const std::string& name) {
  auto text = ReadFile(data_dir + "/registry/" + name + "/1/manifest.json");
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? ParseJson(*text) : json();
}

std::map<std::string, double> ProxyLosses(const json& manifest) {
  std::map<std::string, double> out;
  for (const auto& t : manifest["tensors"]) out[t.value("name", "")] = t.value("proxy_loss", -1.0);
  return out;
}

// A sequential quip 2-bit job, with the coordinator killed (SIGKILL, workers too) in its third
// layer stage and restarted: it resumes, finishes, and beats the one-stage job on the same data.
TEST(SequentialE2E, Quip2BitResumesAcrossACrashAndBeatsOneStage) {
  const std::string data = MakeTempDir("sequential");
  std::string seq_id;
  int seen_done = 0, total = 0;
  {
    Daemon d1(2, {}, data);
    ASSERT_TRUE(d1.ok()) << d1.Log();
    CommandResult one = d1.Quantctl([&] {
      std::vector<std::string> a = {"submit"};
      for (const std::string& s : Job("quip", "2", "one-stage", false)) a.push_back(s);
      a.push_back("--wait");
      return a;
    }());
    ASSERT_EQ(one.exit_code, 0) << one.out << one.err << d1.Log();

    json j = SubmitJson(d1, Job("quip", "2", "sequential", true));
    seq_id = j.value("id", "");
    ASSERT_FALSE(seq_id.empty()) << j.dump();
    // 5 stages of 8 Hessian shards and 7 matrices, plus the fp and quantized evaluations.
    total = j.value("tasks_total", 0);
    EXPECT_EQ(total, 5 * (8 + 7) + 2) << j.dump();
    EXPECT_EQ(j["spec"].value("sequential", false), true) << j.dump();
    // Kill it once stages 0 and 1 (and the fp evaluation) are done.
    json mid = WaitFor(
        d1, seq_id,
        [](const json& s) { return Terminal(s) || s.value("tasks_done", 0) >= 2 * (8 + 7) + 1; },
        900);
    ASSERT_FALSE(Terminal(mid)) << "job finished before the coordinator could be killed";
    ASSERT_GE(mid.value("tasks_done", 0), 2 * (8 + 7) + 1) << "timed out: " << mid.dump();
    EXPECT_EQ(mid.value("layer_stages", 0), 5) << mid.dump();
    EXPECT_GE(mid.value("layer_stage", 0), 2) << mid.dump();  // stages 1 and 2 are done
    seen_done = mid.value("tasks_done", 0);
    d1.Kill(SIGKILL);
  }
  Daemon d2(2, {}, data);
  ASSERT_TRUE(d2.ok()) << d2.Log();
  json done = WaitFor(d2, seq_id, Terminal, 900);
  ASSERT_EQ(done.value("state", ""), "JOB_STATE_SUCCEEDED") << done.dump() << d2.Log();
  EXPECT_EQ(done.value("layer_stage", 0), 0) << done.dump();  // no stage once done
  std::smatch m;
  const std::string log = d2.Log();
  const std::regex re("resuming job " + seq_id + ": ([0-9]+)/([0-9]+) tasks already done");
  ASSERT_TRUE(std::regex_search(log, m, re)) << log;
  EXPECT_GE(std::stoi(m[1]), seen_done);
  EXPECT_EQ(std::stoi(m[2]), total);

  const json one = Manifest(data, "one-stage"), seq = Manifest(data, "sequential");
  ASSERT_TRUE(one.is_object() && seq.is_object());
  ASSERT_EQ(seq["tensors"].size(), 35u);
  EXPECT_EQ(seq["spec"].value("sequential", false), true);
  EXPECT_EQ(one["spec"].value("sequential", true), false);
  // Layer 0 sees the fp model in both jobs: the same Hessians give the same matrices. Every
  // later layer is captured through quantized predecessors, so its Hessians differ.
  const auto lo = ProxyLosses(one), ls = ProxyLosses(seq);
  int later_differ = 0, later = 0;
  for (const auto& [name, loss] : lo) {
    ASSERT_TRUE(ls.count(name)) << name;
    if (name.rfind("model.layers.0.", 0) == 0) {
      EXPECT_EQ(ls.at(name), loss) << name;
    } else {
      ++later;
      later_differ += ls.at(name) != loss;
    }
  }
  EXPECT_EQ(later_differ, later);
  // The point of the mode: at 2 bits, compensating the upstream error lowers perplexity (the
  // bench measured 577 -> 377 on this model; docs/benchmarks.md).
  const double fp = seq["perplexity"]["fp"], p_one = one["perplexity"]["quantized"],
               p_seq = seq["perplexity"]["quantized"];
  EXPECT_NEAR(fp, 5.4540, 5e-3);
  EXPECT_LT(p_seq, 0.9 * p_one) << "sequential " << p_seq << " vs one-stage " << p_one;
  EXPECT_NEAR(FetchedPpl(d2, "sequential"), p_seq, 1e-6 * p_seq);
  std::printf("quip 2-bit: one-stage ppl %.3f, sequential %.3f (fp %.4f); %d/%d tasks done at the "
              "kill\n", p_one, p_seq, fp, seen_done, total);
}

TEST(SequentialE2E, QuarotAndRejectedSpecs) {
  Daemon d(2);
  ASSERT_TRUE(d.ok()) << d.Log();
  // quarot's Hessian tasks rotate the model, then load the quantized (rotated-basis) matrices.
  std::vector<std::string> a = {"submit"};
  for (const std::string& s : Job("quarot", "4", "seq-quarot", true)) a.push_back(s);
  a.push_back("--wait");
  CommandResult r = d.Quantctl(a);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err << d.Log();
  const json m = Manifest(d.data_dir(), "seq-quarot");
  ASSERT_TRUE(m.is_object());
  const double fp = m["perplexity"]["fp"], q = m["perplexity"]["quantized"];
  EXPECT_LT(q, 1.25 * fp);  // the gptq 4-bit floor of quality_floors_test
  EXPECT_NEAR(FetchedPpl(d, "seq-quarot"), q, 1e-6 * q);

  // rtn has no Hessians to capture: refused before anything is stored.
  std::vector<std::string> bad = {"submit"};
  for (const std::string& s : Job("rtn", "4", "seq-rtn", true)) bad.push_back(s);
  CommandResult b = d.Quantctl(bad);
  EXPECT_EQ(b.exit_code, 1) << b.out << b.err;
  EXPECT_NE(b.err.find("INVALID_ARGUMENT"), std::string::npos) << b.err;
  EXPECT_NE(b.err.find("sequential is not supported by rtn"), std::string::npos) << b.err;
}

}  // namespace
}  // namespace quantd::testing
