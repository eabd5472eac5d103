// End-to-end: what `quantctl submit --wait` shows on a terminal and in a log, against a real
// quantd with 2 workers on the bundled model (a 45-task job). On a pseudo-terminal: the job id,
// one progress line redrawn with '\r' (never a line per task), the summary. Through a pipe: a
// line per phase change and heartbeats, a bounded count. The server's Job.phase_tasks add up.
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/e2e_util.h"
#include "tests/process_util.h"

namespace quantd::testing {
namespace {

std::vector<std::string> SubmitWait(const Daemon& d, const std::string& name,
                                    std::vector<std::string> extra) {
  std::vector<std::string> argv = {BinaryDir() + "/quantctl", "--addr", d.addr(), "submit",
                                   ExampleModel(), "--calib", ExampleCalib(), "--eval",
                                   ExampleEval(), "--method", "gptq", "--bits", "4", "--name",
                                   name, "--wait"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

TEST(ProgressE2E, TerminalAndLogOutputOfARealJob) {
  Daemon d(2);
  ASSERT_TRUE(d.ok()) << d.Log();
  // Both jobs at once: the terminal one and the log one share the 2 workers.
  CapturedRun tty, log;
  std::thread t1([&] { tty = RunCaptured(SubmitWait(d, "pty", {}), /*pty=*/true, {}, 900); });
  std::thread t2([&] {
    log = RunCaptured(SubmitWait(d, "log", {"--progress-interval", "5"}), /*pty=*/false, {}, 900);
  });
  t1.join();
  t2.join();

  // Terminal: "ID\r\n", the bar line, "\r\n", the summary, "\r\n" (the terminal maps \n).
  const std::string out = tty.All();
  ASSERT_EQ(tty.exit_code, 0) << out << d.Log();
  std::vector<std::string> lines = absl::StrSplit(out, "\r\n");
  ASSERT_EQ(lines.size(), 4u) << out;
  EXPECT_TRUE(absl::StartsWith(lines[0], "j-")) << out;
  EXPECT_TRUE(absl::StartsWith(lines[2], "job " + lines[0] + " SUCCEEDED: pty version 1, "
                                         "perplexity fp "))
      << out;
  std::vector<std::string> draws = absl::StrSplit(lines[1], '\r', absl::SkipEmpty());
  EXPECT_GT(draws.size(), 10u) << out;
  for (const std::string& dr : draws) EXPECT_LE(dr.size(), 79u) << dr;
  EXPECT_TRUE(absl::StartsWith(draws.back(), "[##########] 100% SUCCEEDED done 45/45, "))
      << draws.back();
  EXPECT_TRUE(absl::StrContains(lines[1], "busy, ")) << "no workers-busy count: " << out;
  EXPECT_TRUE(absl::StrContains(lines[1], " elapsed, ETA ")) << out;

  // Log: no '\r'; the id, a line per phase change, a heartbeat at most every 5 s, the summary.
  const std::string plain = log.All();
  ASSERT_EQ(log.exit_code, 0) << plain << d.Log();
  EXPECT_EQ(plain.find('\r'), std::string::npos) << plain;
  ASSERT_FALSE(plain.empty());
  EXPECT_EQ(plain.back(), '\n');
  std::vector<std::string> plain_lines = absl::StrSplit(plain, '\n', absl::SkipEmpty());
  const double seconds = log.chunks.back().first;
  // id + QUEUED + RUNNING hessian/quantize/evaluate/publish + SUCCEEDED + summary = 8.
  const size_t bound = 8 + static_cast<size_t>(seconds / 5) + 1;
  EXPECT_LE(plain_lines.size(), bound) << plain;
  EXPECT_GE(plain_lines.size(), 5u) << plain;
  for (const std::string& l : plain_lines) {
    // The server's per-event "hessian 3/45" message is never printed on its own.
    EXPECT_FALSE(l.find('[') == std::string::npos && absl::StrContains(l, "/45")) << l;
  }
  EXPECT_TRUE(absl::StartsWith(plain_lines[plain_lines.size() - 2], "["));
  EXPECT_TRUE(absl::StrContains(plain_lines[plain_lines.size() - 2], "SUCCEEDED done 45/45 tasks"))
      << plain;

  // The job's per-phase counts add up to its totals.
  nlohmann::json j = StatusJson(d, lines[0]);
  ASSERT_TRUE(j.is_object());
  int total = 0, done = 0;
  for (const auto& p : j["phase_tasks"]) {
    total += p.value("tasks_total", 0);
    done += p.value("tasks_done", 0);
  }
  EXPECT_EQ(total, 45) << j.dump();
  EXPECT_EQ(done, 45) << j.dump();
  ASSERT_EQ(j["phase_tasks"].size(), 3u) << j.dump();
  EXPECT_EQ(j["phase_tasks"][0]["phase"], "hessian");
  EXPECT_EQ(j["phase_tasks"][1]["phase"], "quantize");
  EXPECT_EQ(j["phase_tasks"][2]["phase"], "evaluate");
  EXPECT_EQ(j["tasks_running"], 0);
}

}  // namespace
}  // namespace quantd::testing
