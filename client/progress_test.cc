// The progress display as a pure function of job snapshots and a clock: the time-left estimate
// against synthetic jobs whose task durations are known (so the true time left is known), the
// terminal line redrawn with '\r', and the bounded plain lines of a log.
#include "client/progress.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "client/output.h"
#include "gtest/gtest.h"

namespace quantd::client {
namespace {

namespace v1 = quantd::v1;

struct SimPhase {
  std::string name;
  int tasks;
  double seconds;   // every task of the phase takes this long
  int stage = 0;    // layer stage (1-based) of a sequential job, else 0
};

struct Sim {
  std::vector<std::pair<absl::Time, v1::Job>> snapshots;  // what WatchJob would send
  absl::Time start, end;                                  // end: the last task finished
};

// The events quantd sends for a job whose phases run one after another on `workers` workers:
// a snapshot per phase change, per lease and per finished task; then SUCCEEDED.
Sim Simulate(const std::vector<SimPhase>& phases, int workers, int layer_stages = 0) {
  Sim sim;
  sim.start = absl::FromUnixSeconds(1800000000);
  v1::Job job;
  job.set_id("j");
  job.set_state(v1::JOB_STATE_QUEUED);
  job.set_layer_stages(layer_stages);
  job.mutable_spec()->set_sequential(layer_stages > 0);  // stages of one layer each
  std::vector<std::string> kinds;
  for (const SimPhase& p : phases) {
    job.set_tasks_total(job.tasks_total() + p.tasks);
    if (std::find(kinds.begin(), kinds.end(), p.name) == kinds.end()) {
      kinds.push_back(p.name);
      job.add_phase_tasks()->set_phase(p.name);
    }
  }
  for (const SimPhase& p : phases) {
    for (auto& pt : *job.mutable_phase_tasks()) {
      if (pt.phase() == p.name) pt.set_tasks_total(pt.tasks_total() + p.tasks);
    }
  }
  auto emit = [&](absl::Time t) {
    job.set_progress(job.state() == v1::JOB_STATE_SUCCEEDED
                         ? 1.0
                         : static_cast<double>(job.tasks_done()) / (job.tasks_total() + 1));
    sim.snapshots.emplace_back(t, job);
  };
  emit(sim.start);
  job.set_state(v1::JOB_STATE_RUNNING);
  absl::Time t = sim.start + absl::Milliseconds(200);
  for (const SimPhase& p : phases) {
    job.set_phase(p.name);
    job.set_layer_stage(p.stage);
    emit(t);
    v1::PhaseTasks* pt = nullptr;
    for (auto& x : *job.mutable_phase_tasks()) {
      if (x.phase() == p.name) pt = &x;
    }
    int left = p.tasks;
    while (left > 0) {
      const int wave = std::min(workers, left);
      for (int i = 0; i < wave; ++i) {
        job.set_tasks_running(job.tasks_running() + 1);
        emit(t);
      }
      t += absl::Seconds(p.seconds);
      for (int i = 0; i < wave; ++i) {
        job.set_tasks_running(job.tasks_running() - 1);
        job.set_tasks_done(job.tasks_done() + 1);
        pt->set_tasks_done(pt->tasks_done() + 1);
        emit(t);
      }
      left -= wave;
    }
  }
  sim.end = t;
  job.set_state(v1::JOB_STATE_SUCCEEDED);
  job.set_phase("done");
  job.set_layer_stage(0);
  job.set_progress(1);
  emit(t + absl::Milliseconds(100));
  return sim;
}

// Feeds the snapshots to an estimator and compares its estimate with the true time left every
// 250 ms from `from` on while at least `min_left` remains (near the end any estimate is a large
// factor off a tiny remainder). Returns the worst ratio max(est/true, true/est); also checks
// that an estimate exists once a task has finished and not before.
double WorstEtaRatio(const Sim& sim, absl::Duration min_left, absl::Time from = absl::InfinitePast()) {
  EtaEstimator eta;
  size_t next = 0;
  bool any_done = false;
  double worst = 1;
  for (absl::Time t = sim.start; t < sim.end - min_left; t += absl::Milliseconds(250)) {
    for (; next < sim.snapshots.size() && sim.snapshots[next].first <= t; ++next) {
      eta.Observe(sim.snapshots[next].second, sim.snapshots[next].first);
      any_done = any_done || sim.snapshots[next].second.tasks_done() > 0;
    }
    std::optional<absl::Duration> est = eta.Remaining(t);
    if (!any_done) {
      EXPECT_FALSE(est.has_value()) << "an estimate before any task finished";
      continue;
    }
    if (!est.has_value()) {
      ADD_FAILURE() << "no estimate at " << absl::FormatDuration(t - sim.start);
      continue;
    }
    if (t < from) continue;
    const double truth = absl::ToDoubleSeconds(sim.end - t);
    const double guess = absl::ToDoubleSeconds(*est);
    const double ratio = guess > 0 ? std::max(guess / truth, truth / guess) : 1e9;
    EXPECT_LE(ratio, 2.0) << "at " << absl::FormatDuration(t - sim.start) << ": estimate "
                          << guess << " s, truly " << truth << " s left";
    worst = std::max(worst, ratio);
  }
  return worst;
}

// The shape of the bundled example's 4-bit job with evaluation (45 tasks: 9 Hessian shards and
// fp evaluation windows, 35 weight matrices, 1 evaluation of the quantized model).
std::vector<SimPhase> FortyFiveTasks(double hessian_s, double quantize_s, double evaluate_s) {
  return {{"hessian", 9, hessian_s}, {"quantize", 35, quantize_s}, {"evaluate", 1, evaluate_s}};
}

TEST(EtaEstimator, WithinFactorTwoFromTheFirstFinishedTask) {
  // Tasks of one cost in every phase: the estimate holds from the first completion on, for any
  // number of workers (phases of 9, 35 and 1 tasks use them unevenly).
  for (int workers : {1, 2, 3}) {
    SCOPED_TRACE(workers);
    Sim sim = Simulate(FortyFiveTasks(1.0, 1.0, 1.0), workers);
    EXPECT_LE(WorstEtaRatio(sim, absl::Seconds(3)), 2.0);
  }
}

TEST(EtaEstimator, PhasesOfDifferentCostWithinFactorTwoOnceSeen) {
  // Forward-pass phases (Hessian 4 s, evaluation 5 s a task) and cheap quantize tasks (0.5 s):
  // a phase not seen yet is guessed from the others, so the guess can be far off in the first
  // phase; from the first finished quantize task on, every remaining kind has a measured rate
  // (evaluation from the Hessian one) and the estimate is within 2x.
  for (int workers : {1, 2}) {
    SCOPED_TRACE(workers);
    Sim sim = Simulate(FortyFiveTasks(4.0, 0.5, 5.0), workers);
    const absl::Time quantize_start =
        sim.start + absl::Milliseconds(200) + absl::Seconds(4.0 * ((9 + workers - 1) / workers));
    EXPECT_LE(WorstEtaRatio(sim, absl::Seconds(3), quantize_start + absl::Seconds(0.5)), 2.0);
  }
}

TEST(EtaEstimator, SequentialJobLearnsEachPhaseKind) {
  // Three layer stages with very different task costs: a Hessian task takes 8x a quantize task.
  // From the second stage on every kind is estimated from its own measured rate.
  std::vector<SimPhase> phases;
  for (int s = 1; s <= 3; ++s) {
    phases.push_back({"hessian", 2, 4.0, s});
    phases.push_back({"quantize", 7, 0.5, s});
  }
  phases.push_back({"evaluate", 2, 4.0});
  Sim sim = Simulate(phases, 1, 3);
  const absl::Time stage2 = sim.start + absl::Milliseconds(200) + absl::Seconds(2 * 4.0 + 7 * 0.5);
  EXPECT_LE(WorstEtaRatio(sim, absl::Seconds(4), stage2), 2.0);
}

TEST(EtaEstimator, OldServerWithoutPhaseTasks) {
  Sim sim = Simulate({{"quantize", 20, 1.0}}, 2);
  for (auto& [t, job] : sim.snapshots) {
    job.clear_phase_tasks();
    job.clear_tasks_running();
  }
  EXPECT_LE(WorstEtaRatio(sim, absl::Seconds(2)), 2.0);
}

TEST(EtaEstimator, NoEstimateUnlessRunning) {
  EtaEstimator eta;
  const absl::Time t0 = absl::FromUnixSeconds(1800000000);
  EXPECT_FALSE(eta.Remaining(t0).has_value());
  v1::Job j;
  j.set_state(v1::JOB_STATE_QUEUED);
  j.set_tasks_total(4);
  eta.Observe(j, t0);
  EXPECT_FALSE(eta.Remaining(t0 + absl::Seconds(1)).has_value());
}

TEST(FormatClock, MinutesAndHours) {
  EXPECT_EQ(FormatClock(absl::Seconds(0)), "00:00");
  EXPECT_EQ(FormatClock(absl::Seconds(65.9)), "01:05");
  EXPECT_EQ(FormatClock(absl::Seconds(3723)), "1:02:03");
  EXPECT_EQ(FormatClock(-absl::Seconds(3)), "00:00");
}

TEST(ProgressRenderer, TerminalRedrawsOneLineWithCarriageReturns) {
  Sim sim = Simulate(FortyFiveTasks(1.0, 1.0, 1.0), 2);
  ProgressStyle style;
  style.tty = true;
  style.columns = 80;
  const std::string out = RenderProgress(sim.snapshots, style, sim.start, sim.end + absl::Seconds(1));
  // One line: no newline but the final one; redrawn many times.
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  EXPECT_EQ(out.back(), '\n');
  EXPECT_GT(std::count(out.begin(), out.end(), '\r'), 40);
  // Every drawn state fits the terminal; the last one is the finished job.
  std::vector<std::string> draws = absl::StrSplit(out.substr(0, out.size() - 1), '\r',
                                                  absl::SkipEmpty());
  for (const std::string& d : draws) {
    EXPECT_LE(d.size(), 79u) << d;
    EXPECT_EQ(d.find(']'), 11u) << "the bar keeps its width: " << d;
  }
  EXPECT_EQ(draws.back().rfind("[##########] 100% SUCCEEDED done 45/45, 00:", 0), 0u)
      << draws.back();
  // Mid-job a draw shows the phase, counts, busy workers, elapsed time and the estimate.
  bool seen = false;
  for (const std::string& d : draws) {
    seen = seen || (d.find("quantize 2") != std::string::npos &&
                    d.find("/45, 2 workers busy, 00:") != std::string::npos &&
                    d.find(" elapsed, ETA 00:") != std::string::npos);
  }
  EXPECT_TRUE(seen) << out;
}

TEST(ProgressRenderer, NarrowTerminalTruncates) {
  Sim sim = Simulate({{"quantize", 3, 1.0}}, 1);
  ProgressStyle style;
  style.tty = true;
  style.columns = 40;
  const std::string out = RenderProgress(sim.snapshots, style, sim.start, sim.end);
  std::vector<std::string> draws = absl::StrSplit(out, absl::ByAnyChar("\r\n"), absl::SkipEmpty());
  for (const std::string& d : draws) {
    // A shorter redraw is padded with spaces over the longer one before it.
    EXPECT_LE(std::string(d.substr(0, d.find_last_not_of(' ') + 1)).size(), 39u) << d;
  }
}

TEST(ProgressRenderer, SequentialJobShowsTheLayerStage) {
  std::vector<SimPhase> phases;
  for (int s = 1; s <= 3; ++s) {
    phases.push_back({"hessian", 2, 1.0, s});
    phases.push_back({"quantize", 7, 0.5, s});
  }
  Sim sim = Simulate(phases, 1, 3);
  ProgressStyle style;
  style.tty = true;
  const std::string out = RenderProgress(sim.snapshots, style, sim.start, sim.end);
  // Under 100 columns a sequential job's longer text goes without the bar.
  EXPECT_NE(out.find("\r 46% quantize, layer 2/3 13/27, "), std::string::npos) << out;
  EXPECT_EQ(out.find('['), std::string::npos) << out;
  // In a log each stage's phases are phase changes: 1 + 2 x 3 + 1 lines.
  style.tty = false;
  const std::string log = RenderProgress(sim.snapshots, style, sim.start, sim.end);
  std::vector<std::string> lines = absl::StrSplit(log, '\n', absl::SkipEmpty());
  EXPECT_EQ(lines.size(), 8u) << log;
  EXPECT_NE(log.find("] RUNNING hessian, layer 3/3 18/27 tasks, ETA "), std::string::npos) << log;
}

TEST(ProgressRenderer, LogGetsPhaseLinesAndHeartbeats) {
  // 45 tasks on one worker take 45 s; with a 10 s heartbeat the log has a line per phase change
  // (QUEUED, hessian, quantize, evaluate, SUCCEEDED) and one at most every 10 s.
  Sim sim = Simulate(FortyFiveTasks(1.0, 1.0, 1.0), 1);
  ProgressStyle style;
  style.heartbeat = absl::Seconds(10);
  const std::string out = RenderProgress(sim.snapshots, style, sim.start, sim.end + absl::Seconds(1));
  EXPECT_EQ(out.find('\r'), std::string::npos);
  std::vector<std::string> lines = absl::StrSplit(out, '\n', absl::SkipEmpty());
  EXPECT_LE(lines.size(), 5u + 45u / 10u) << out;
  EXPECT_GE(lines.size(), 5u + 3u) << out;
  EXPECT_EQ(lines.front(), "[00:00] QUEUED 0/45 tasks");
  EXPECT_EQ(lines[1], "[00:00] RUNNING hessian 0/45 tasks, ETA --:--");
  EXPECT_EQ(lines.back(), "[00:45] SUCCEEDED done 45/45 tasks");
  EXPECT_EQ(out.back(), '\n');
  // A heartbeat mid-quantize: counts and an estimate.
  bool heartbeat = false;
  for (const std::string& l : lines) {
    heartbeat = heartbeat || (l.find("RUNNING quantize ") != std::string::npos &&
                              l.find("/45 tasks, 1 worker busy, ETA 00:") != std::string::npos);
  }
  EXPECT_TRUE(heartbeat) << out;
}

TEST(ProgressRenderer, RepeatedEventMessagesAreNotPrinted) {
  const absl::Time t0 = absl::FromUnixSeconds(1800000000);
  ProgressRenderer r(ProgressStyle{}, t0);
  v1::Job j;
  j.set_state(v1::JOB_STATE_RUNNING);
  j.set_phase("hessian");
  j.set_tasks_total(45);
  j.set_tasks_done(1);
  // quantd's "PHASE DONE/TOTAL" message only repeats the counts.
  EXPECT_EQ(r.OnJob(j, "hessian 1/45", t0), "[00:00] RUNNING hessian 1/45 tasks, ETA --:--\n");
  j.set_tasks_done(2);
  EXPECT_EQ(r.OnJob(j, "hessian 2/45", t0 + absl::Seconds(1)), "");
  EXPECT_EQ(r.OnJob(j, "worker w1 lost", t0 + absl::Seconds(2)), "worker w1 lost\n");
}

TEST(ProgressRenderer, NoteOnTerminalKeepsTheBarBelow) {
  const absl::Time t0 = absl::FromUnixSeconds(1800000000);
  ProgressStyle style;
  style.tty = true;
  ProgressRenderer r(style, t0);
  v1::Job j;
  j.set_state(v1::JOB_STATE_RUNNING);
  j.set_phase("quantize");
  j.set_tasks_total(10);
  const std::string first = r.OnJob(j, "", t0);
  ASSERT_EQ(first.front(), '\r');
  const std::string note = r.Note("connection lost; re-attaching", t0);
  // Erase the bar, print the note on its own line, draw the bar again.
  EXPECT_EQ(note.rfind("\r" + std::string(first.size() - 1, ' ') + "\rconnection lost; "
                       "re-attaching\n\r", 0), 0u) << note;
  EXPECT_EQ(r.Finish(t0), "\n");
  EXPECT_EQ(r.Finish(t0), "");
}

}  // namespace
}  // namespace quantd::client

namespace quantd::client {
namespace {

// Issue 27: once every block is tuned, a job with the KL stage shows "finetune e2e", with the
// held-out KL before -> after the latest epoch (heartbeat progress) or -> kept once it is done.
TEST(PhaseLabel, FinetuneE2eShowsTheHeldOutKl) {
  quantd::v1::Job j;
  j.set_phase("finetune");
  j.set_finetune_blocks(30);
  j.set_finetune_blocks_done(12);
  j.mutable_spec()->mutable_finetune()->set_e2e_epochs(2);
  j.mutable_finetune_e2e();
  EXPECT_EQ(PhaseLabel(j), "finetune, block 13/30");
  j.set_finetune_blocks_done(30);
  EXPECT_EQ(PhaseLabel(j), "finetune e2e");
  j.mutable_finetune_e2e()->set_heldout_before(0.3508);
  j.mutable_finetune_e2e()->add_heldout_curve(0.3229);
  j.mutable_finetune_e2e()->set_epochs_run(1);
  EXPECT_EQ(PhaseLabel(j), "finetune e2e (held-out KL 0.3508 -> 0.3229, epoch 1/2)");
  j.mutable_finetune_e2e()->add_heldout_curve(0.3086);
  j.mutable_finetune_e2e()->set_heldout_best(0.3086);
  j.mutable_finetune_e2e()->set_epochs_run(2);
  j.mutable_finetune_e2e()->set_done(true);
  EXPECT_EQ(PhaseLabel(j), "finetune e2e (held-out KL 0.3508 -> 0.3086, epoch 2/2)");
  EXPECT_NE(DescribeJob(j).find("held-out KL 0.35080 -> 0.30860, 2 epochs"), std::string::npos)
      << DescribeJob(j);
}

}  // namespace
}  // namespace quantd::client
