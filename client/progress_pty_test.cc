// The quantctl binary watching a job through a pseudo-terminal and through a pipe, against a
// fake QuantService that streams a job whose tasks take known times (as quantd sends events: a
// snapshot per lease and per finished task, with the "PHASE DONE/TOTAL" message). Checks what a
// user sees: on a terminal one line redrawn with '\r' whose ETA is within 2x of the real time
// left; in a log a bounded number of lines; both end with the summary and a newline.
#include <chrono>
#include <cstdlib>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proto/quantd.grpc.pb.h"
#include "tests/process_util.h"

namespace quantd::client {
namespace {

namespace v1 = quantd::v1;

struct Phase {
  const char* name;
  int tasks;
  int ms;  // each task's duration
};

// "job-pty": 3 Hessian tasks of 500 ms, 24 quantize tasks of 250 ms, 1 evaluation of 500 ms
// (8 s). "job-45": the 45-task shape of the bundled example, 2.9 s.
std::vector<Phase> PhasesOf(const std::string& id) {
  if (id == "job-pty") return {{"hessian", 3, 500}, {"quantize", 24, 250}, {"evaluate", 1, 500}};
  return {{"hessian", 9, 100}, {"quantize", 35, 50}, {"evaluate", 1, 200}};
}

class FakeQuant final : public v1::QuantService::Service {
  grpc::Status WatchJob(grpc::ServerContext*, const v1::WatchJobRequest* req,
                        grpc::ServerWriter<v1::JobEvent>* w) override {
    const std::vector<Phase> phases = PhasesOf(req->id());
    v1::JobEvent e;
    v1::Job& job = *e.mutable_job();
    job.set_id(req->id());
    job.set_name("m");
    job.set_state(v1::JOB_STATE_RUNNING);
    for (const Phase& p : phases) {
      job.set_tasks_total(job.tasks_total() + p.tasks);
      v1::PhaseTasks* pt = job.add_phase_tasks();
      pt->set_phase(p.name);
      pt->set_tasks_total(p.tasks);
    }
    auto send = [&] {
      job.set_progress(job.state() == v1::JOB_STATE_SUCCEEDED
                           ? 1.0
                           : static_cast<double>(job.tasks_done()) / (job.tasks_total() + 1));
      e.set_message(absl::StrCat(job.phase(), " ", job.tasks_done(), "/", job.tasks_total()));
      return w->Write(e);
    };
    for (int i = 0; i < static_cast<int>(phases.size()); ++i) {
      job.set_phase(phases[i].name);
      for (int t = 0; t < phases[i].tasks; ++t) {
        job.set_tasks_running(1);
        if (!send()) return grpc::Status::CANCELLED;
        std::this_thread::sleep_for(std::chrono::milliseconds(phases[i].ms));
        job.set_tasks_running(0);
        job.set_tasks_done(job.tasks_done() + 1);
        job.mutable_phase_tasks(i)->set_tasks_done(t + 1);
        if (!send()) return grpc::Status::CANCELLED;
      }
    }
    job.set_state(v1::JOB_STATE_SUCCEEDED);
    job.set_phase("done");
    job.set_version(1);
    job.set_progress(1);
    send();
    return grpc::Status::OK;
  }
};

class ProgressPtyTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    quant_ = new FakeQuant;
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    b.RegisterService(quant_);
    server_ = b.BuildAndStart().release();
  }
  static void TearDownTestSuite() {
    server_->Shutdown();
    delete server_;
    delete quant_;
  }
  static std::vector<std::string> Argv(const std::string& job, std::vector<std::string> extra) {
    const char* dir = std::getenv("QUANTD_BINARY_DIR");
    std::vector<std::string> argv = {std::string(dir ? dir : ".") + "/quantctl", "--addr",
                                     "127.0.0.1:" + std::to_string(port_), "watch", job};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
  }

  static FakeQuant* quant_;
  static grpc::Server* server_;
  static int port_;
};
FakeQuant* ProgressPtyTest::quant_ = nullptr;
grpc::Server* ProgressPtyTest::server_ = nullptr;
int ProgressPtyTest::port_ = 0;

TEST_F(ProgressPtyTest, TerminalGetsOneRedrawnLineWithAnHonestEta) {
  testing::CapturedRun run = testing::RunCaptured(Argv("job-pty", {}), /*pty=*/true, {}, 120);
  ASSERT_EQ(run.exit_code, 0) << run.All();
  const std::string all = run.All();
  // The terminal turns "\n" into "\r\n": exactly two line ends, the bar's and the summary's.
  std::vector<std::string> lines = absl::StrSplit(all, "\r\n");
  ASSERT_EQ(lines.size(), 3u) << all;
  EXPECT_EQ(lines[2], "");
  EXPECT_EQ(lines[1], "job job-pty SUCCEEDED: m version 1, no perplexity evaluation");
  // The bar line: many redraws, none a per-task line, the last the finished job.
  std::vector<std::string> draws = absl::StrSplit(lines[0], '\r', absl::SkipEmpty());
  EXPECT_GT(draws.size(), 28u) << all;
  EXPECT_EQ(draws.back().rfind("[##########] 100% SUCCEEDED done 28/28, 00:0", 0), 0u) << all;
  EXPECT_EQ(all.find("quantize 5/28\r"), std::string::npos) << "the event message was printed";

  // Each draw's ETA against the real time left (the arrival of the final draw). Checked from
  // the first finished quantize task on (before it the quantize rate is a guess from the
  // Hessian one) while at least 3 s remain (ETA is shown in whole seconds).
  double end_s = 0;
  for (const auto& [at, bytes] : run.chunks) {
    if (bytes.find("SUCCEEDED") != std::string::npos) end_s = at;
  }
  ASSERT_GT(end_s, 7.0);
  const std::regex eta_re(R"(quantize (\d+)/28, .*ETA (\d\d):(\d\d))");
  int checked = 0;
  for (const auto& [at, bytes] : run.chunks) {
    for (absl::string_view dv : absl::StrSplit(bytes, '\r', absl::SkipEmpty())) {
      const std::string d(dv);
      std::smatch m;
      if (!std::regex_search(d, m, eta_re) || std::stoi(m[1]) < 4) continue;
      const double truth = end_s - at;
      if (truth < 3.0) continue;
      const double eta = std::stoi(m[2]) * 60 + std::stoi(m[3]);
      EXPECT_LE(eta, 2 * truth) << d << " with " << truth << " s left";
      EXPECT_GE(eta, truth / 2) << d << " with " << truth << " s left";
      ++checked;
    }
  }
  EXPECT_GT(checked, 5) << all;
}

TEST_F(ProgressPtyTest, LogGetsBoundedLines) {
  testing::CapturedRun run = testing::RunCaptured(
      Argv("job-45", {"--progress-interval", "1"}), /*pty=*/false, {}, 120);
  ASSERT_EQ(run.exit_code, 0) << run.All();
  const std::string all = run.All();
  EXPECT_EQ(all.find('\r'), std::string::npos) << all;
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all.back(), '\n');
  std::vector<std::string> lines = absl::StrSplit(all, '\n', absl::SkipEmpty());
  // 45 tasks, about 3 s: a line per phase (hessian, quantize, evaluate, SUCCEEDED), a heartbeat
  // a second, the summary; before, a line per event (90 and more).
  EXPECT_GE(lines.size(), 5u) << all;
  EXPECT_LE(lines.size(), 12u) << all;
  EXPECT_EQ(lines.front(), "[00:00] RUNNING hessian 0/45 tasks, 1 worker busy, ETA --:--") << all;
  EXPECT_EQ(lines.back(), "job job-45 SUCCEEDED: m version 1, no perplexity evaluation");
  EXPECT_EQ(all.find("hessian 1/45\n"), std::string::npos) << all;
}

}  // namespace
}  // namespace quantd::client
