#include "client/progress.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/output.h"

namespace quantd::client {
namespace {

namespace v1 = quantd::v1;

// Without Job.phase_tasks every task counts as this one kind.
constexpr char kAllTasks[] = "*";

std::string CurrentKind(const v1::Job& job) {
  return job.phase_tasks_size() > 0 ? job.phase() : kAllTasks;
}

std::map<std::string, int> DoneByKind(const v1::Job& job) {
  std::map<std::string, int> done;
  if (job.phase_tasks_size() == 0) {
    done[kAllTasks] = job.tasks_done();
  } else {
    for (const v1::PhaseTasks& p : job.phase_tasks()) done[p.phase()] += p.tasks_done();
  }
  return done;
}

}  // namespace

std::string FormatClock(absl::Duration d) {
  const int64_t s = std::max<int64_t>(0, absl::ToInt64Seconds(d));
  if (s >= 3600) return absl::StrFormat("%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60);
  return absl::StrFormat("%02d:%02d", s / 60, s % 60);
}

// --- EtaEstimator ---

std::vector<std::pair<std::string, int>> EtaEstimator::Left(const v1::Job& job) {
  std::vector<std::pair<std::string, int>> left;
  if (job.phase_tasks_size() == 0) {
    left.emplace_back(kAllTasks, job.tasks_total() - job.tasks_done());
  } else {
    for (const v1::PhaseTasks& p : job.phase_tasks()) {
      left.emplace_back(p.phase(), p.tasks_total() - p.tasks_done());
    }
  }
  return left;
}

void EtaEstimator::Observe(const v1::Job& job, absl::Time now) {
  if (have_last_ && last_.state() == v1::JOB_STATE_RUNNING) {
    // Worker time spent on the last phase: busy workers x time (a server without
    // tasks_running and phase_tasks: wall time, as if one worker).
    const absl::Duration dt = std::max(now - last_time_, absl::ZeroDuration());
    const int busy = last_.phase_tasks_size() > 0 ? last_.tasks_running() : 1;
    stats_[CurrentKind(last_)].busy += dt * busy;
  }
  if (job.phase_tasks_size() > 0) workers_ = std::max(workers_, job.tasks_running());
  std::map<std::string, int> done = DoneByKind(job);
  if (have_last_) {
    for (const auto& [kind, n] : done) {
      auto prev = seen_done_.find(kind);
      const int delta = prev == seen_done_.end() ? 0 : n - prev->second;
      if (delta <= 0) continue;
      KindStats& s = stats_[kind];
      s.done += delta;
      s.busy_at_last_done = s.busy;
      s.last_done = now;
    }
  }
  if (!have_last_ || CurrentKind(job) != CurrentKind(last_) ||
      job.layer_stage() != last_.layer_stage()) {
    phase_entered_ = now;
  }
  seen_done_ = std::move(done);
  last_ = job;
  last_time_ = now;
  have_last_ = true;
}

std::optional<absl::Duration> EtaEstimator::Remaining(absl::Time now) const {
  if (!have_last_ || last_.state() != v1::JOB_STATE_RUNNING) return std::nullopt;
  // The mean task duration of `kind`, when one of its tasks was seen to finish.
  auto duration_of = [this](const std::string& kind) -> std::optional<absl::Duration> {
    auto it = stats_.find(kind);
    if (it == stats_.end() || it->second.done == 0 ||
        it->second.busy_at_last_done <= absl::ZeroDuration()) {
      return std::nullopt;
    }
    return it->second.busy_at_last_done / it->second.done;
  };
  // Over every kind seen: for kinds not seen yet.
  absl::Duration all_busy;
  int all_done = 0;
  for (const auto& [kind, s] : stats_) {
    if (s.done > 0 && s.busy_at_last_done > absl::ZeroDuration()) {
      all_busy += s.busy_at_last_done;
      all_done += s.done;
    }
  }
  if (all_done == 0) return std::nullopt;
  const int workers = std::max(workers_, 1);
  // Tasks run `workers` at a time: n tasks of duration d take d * ceil(n / workers).
  auto waves = [workers](int n) { return (n + workers - 1) / workers; };
  const std::string current = CurrentKind(last_);
  absl::Duration total;
  for (const auto& [kind, left] : Left(last_)) {
    if (left <= 0) continue;
    std::optional<absl::Duration> d = duration_of(kind);
    const bool seen = d.has_value();
    // Hessian and evaluation tasks are both forward passes over token windows: one kind's
    // duration stands in for the other's before it was seen; else the mean over all kinds.
    if (!d && kind == "evaluate") d = duration_of("hessian");
    if (!d && kind == "hessian") d = duration_of("evaluate");
    const absl::Duration task = d.value_or(all_busy / all_done);
    if (kind != current) {
      total += task * waves(left);
      continue;
    }
    // The current phase: the tasks in flight have run since its last completion (or since it
    // began) and have what is left of a task's duration to go; one that is overdue is
    // expected to take half as long again as it already ran.
    absl::Time since = phase_entered_;
    if (seen) since = std::max(since, stats_.at(kind).last_done);
    const absl::Duration ran = std::max(now - since, absl::ZeroDuration());
    const int in_flight = std::min(left, workers);
    total += std::max(task - ran, ran / 2) + task * waves(left - in_flight);
  }
  return total;
}

// --- ProgressRenderer ---

ProgressRenderer::ProgressRenderer(const ProgressStyle& style, absl::Time start)
    : style_(style), start_(start), last_line_(start) {}

std::string ProgressRenderer::Line(absl::Time now) const {
  const v1::Job& j = job_;
  std::vector<std::string> head;
  // A terminal line shows the state only when it is not the usual RUNNING.
  if (!style_.tty || j.state() != v1::JOB_STATE_RUNNING) head.push_back(StateName(j.state()));
  if (!j.phase().empty()) head.push_back(PhaseLabel(j));
  if (j.tasks_total() > 0) {
    head.push_back(absl::StrCat(j.tasks_done(), "/", j.tasks_total(), style_.tty ? "" : " tasks"));
  }
  std::string s = absl::StrJoin(head, " ");
  auto add = [&s](const std::string& part) { absl::StrAppend(&s, s.empty() ? "" : ", ", part); };
  const bool running = j.state() == v1::JOB_STATE_RUNNING;
  if (running && j.tasks_running() > 0) {
    add(absl::StrCat(j.tasks_running(), j.tasks_running() == 1 ? " worker" : " workers", " busy"));
  }
  if (style_.tty) add(absl::StrCat(FormatClock(now - start_), " elapsed"));
  if (running) {
    std::optional<absl::Duration> left = eta_.Remaining(now);
    // Rounded up: "00:00" only when nothing is left.
    add(absl::StrCat("ETA ", left ? FormatClock(absl::Ceil(*left, absl::Seconds(1)))
                                  : std::string("--:--")));
  }
  return s;
}

std::string ProgressRenderer::Redraw(absl::Time now) {
  const double p = std::clamp(job_.progress(), 0.0, 1.0);
  const std::string text = absl::StrCat(absl::StrFormat("%3.0f%% ", 100.0 * p), Line(now));
  const size_t max = static_cast<size_t>(std::max(style_.columns - 1, 10));
  // The bar's width depends only on the terminal (a bar that changed width with the text
  // would jitter): 20 from 100 columns, else 10, none for a sequential job's longer text.
  int bar = style_.columns >= 100 ? 20 : 10;
  if (style_.columns < 100 && job_.layer_stages() > 0) bar = 0;
  std::string line = text;
  if (bar > 0) {
    const int filled = static_cast<int>(p * bar + 0.5);
    line = absl::StrCat("[", std::string(filled, '#'), std::string(bar - filled, '.'), "] ", text);
  }
  if (line.size() > max) line.resize(max);
  if (line == drawn_) return "";
  std::string out = absl::StrCat("\r", line);
  if (line.size() < drawn_.size()) out.append(drawn_.size() - line.size(), ' ');
  drawn_ = line;
  return out;
}

std::string ProgressRenderer::PlainLine(absl::Time now) {
  last_line_ = now;
  return absl::StrCat("[", FormatClock(now - start_), "] ", Line(now), "\n");
}

std::string ProgressRenderer::OnJob(const v1::Job& job, const std::string& message,
                                    absl::Time now) {
  eta_.Observe(job, now);
  job_ = job;
  have_job_ = true;
  std::string out;
  // Servers send "PHASE DONE/TOTAL" with every event: already in the display.
  if (!message.empty() && message != last_message_ &&
      message != absl::StrCat(job.phase(), " ", job.tasks_done(), "/", job.tasks_total())) {
    out += Note(message, now);
  }
  last_message_ = message;
  if (finished_) return out;
  if (style_.tty) return out + Redraw(now);
  const std::string key = absl::StrCat(job.state(), "|", job.phase(), "|", job.layer_stage(), "|",
                                       job.finetune_blocks_done(), "|",
                                       job.finetune_e2e().epochs_run(), "|",
                                       job.finetune_e2e().done());
  if (key != phase_key_) {
    phase_key_ = key;
    out += PlainLine(now);
  }
  return out;
}

std::string ProgressRenderer::OnTick(absl::Time now) {
  if (!have_job_ || finished_) return "";
  if (style_.tty) return Redraw(now);
  if (now - last_line_ >= style_.heartbeat) return PlainLine(now);
  return "";
}

std::string ProgressRenderer::Note(const std::string& text, absl::Time now) {
  if (!style_.tty) return absl::StrCat(text, "\n");
  std::string out;
  if (!drawn_.empty()) out = absl::StrCat("\r", std::string(drawn_.size(), ' '), "\r");
  drawn_.clear();
  absl::StrAppend(&out, text, "\n");
  if (have_job_ && !finished_) out += Redraw(now);
  return out;
}

std::string ProgressRenderer::Finish(absl::Time now) {
  if (finished_) return "";
  std::string out;
  if (style_.tty && have_job_) {
    out = Redraw(now);
    if (!drawn_.empty()) out += "\n";
  }
  finished_ = true;
  return out;
}

std::string RenderProgress(const std::vector<std::pair<absl::Time, v1::Job>>& snapshots,
                           const ProgressStyle& style, absl::Time start, absl::Time end) {
  ProgressRenderer r(style, start);
  std::string out;
  absl::Time tick = start + absl::Seconds(1);
  for (const auto& [when, job] : snapshots) {
    for (; tick < when; tick += absl::Seconds(1)) out += r.OnTick(tick);
    out += r.OnJob(job, "", when);
  }
  for (; tick < end; tick += absl::Seconds(1)) out += r.OnTick(tick);
  return out + r.Finish(end);
}

}  // namespace quantd::client
