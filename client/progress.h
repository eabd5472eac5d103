// quantctl's live progress display for `watch` and `submit --wait` (docs/cli.md, "Progress"):
// an estimate of the time left from the task rates observed in each phase, and a renderer that
// turns job snapshots and the passing of time into output text. On a terminal that text is one
// line redrawn in place with '\r'; in a log it is a line per phase change plus a heartbeat line
// every `heartbeat`. Pure: the caller supplies the clock and writes the returned text.
// Thread-safety: not thread-safe; one instance per watch, the caller serializes calls.
#ifndef QUANTD_CLIENT_PROGRESS_H_
#define QUANTD_CLIENT_PROGRESS_H_

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "proto/quantd.pb.h"

namespace quantd::client {

// Estimates the time until a job's tasks are done from the snapshots a watcher sees. For each
// kind of phase ("hessian", "quantize", "evaluate"; Job.phase_tasks) it measures the mean task
// duration: worker time (Job.tasks_running x time) spent while the job was in that phase, per
// task finished. With W the most workers seen busy at once, n tasks left of a kind take
// duration x ceil(n / W); in the current phase the tasks in flight are credited with the time
// since its last completion. A kind not seen yet takes the duration of the other forward-pass
// kind (hessian <-> evaluate), else the mean over all kinds seen. A server without
// phase_tasks / tasks_running: all tasks are one kind, run one at a time.
class EtaEstimator {
 public:
  // `now` is the watcher's clock; calls come in time order.
  void Observe(const quantd::v1::Job& job, absl::Time now);
  // The estimated time left at `now`; nullopt while no task has finished since watching began
  // or the job is not RUNNING.
  std::optional<absl::Duration> Remaining(absl::Time now) const;

 private:
  struct KindStats {
    absl::Duration busy;               // worker time observed in this kind of phase
    absl::Duration busy_at_last_done;  // `busy` when its last task finished
    int done = 0;                      // completions observed
    absl::Time last_done;
  };
  // (kind, tasks left) for `job`.
  static std::vector<std::pair<std::string, int>> Left(const quantd::v1::Job& job);

  std::map<std::string, KindStats> stats_;
  std::map<std::string, int> seen_done_;  // per kind, as of the last snapshot
  absl::Time phase_entered_;              // when the current phase (and layer stage) began
  int workers_ = 0;                       // the most tasks_running seen
  bool have_last_ = false;
  quantd::v1::Job last_;
  absl::Time last_time_;
};

// How progress is shown.
struct ProgressStyle {
  bool tty = false;  // one line redrawn with '\r' (else plain lines)
  // Plain lines: a heartbeat line when this long passed since the last line. Default: 30 s.
  absl::Duration heartbeat = absl::Seconds(30);
  int columns = 80;  // terminal width; the redrawn line is kept shorter. Default: 80.
};

// Turns snapshots, ticks and notes into the text to write (possibly empty).
class ProgressRenderer {
 public:
  ProgressRenderer(const ProgressStyle& style, absl::Time start);
  // A job snapshot received at `now` (WatchJob event). `message` is the event's message:
  // shown on its own line unless it only repeats the phase and task counts.
  std::string OnJob(const quantd::v1::Job& job, const std::string& message, absl::Time now);
  // Time passed without a snapshot: a terminal's elapsed time and estimate are redrawn; a plain
  // log gets a heartbeat line when one is due. Call about once a second.
  std::string OnTick(absl::Time now);
  // A line of its own (e.g. "re-attaching"); on a terminal the bar is redrawn below it.
  std::string Note(const std::string& text, absl::Time now);
  // Ends the display: on a terminal the bar's final state and a newline; idempotent.
  std::string Finish(absl::Time now);

 private:
  // The status text without the bar: state, phase, tasks, busy workers, elapsed (tty), ETA.
  std::string Line(absl::Time now) const;
  std::string Redraw(absl::Time now);      // tty: '\r' + bar line, when it changed
  std::string PlainLine(absl::Time now);   // non-tty: one line with '\n'

  ProgressStyle style_;
  absl::Time start_;
  EtaEstimator eta_;
  bool have_job_ = false;
  quantd::v1::Job job_;
  std::string drawn_;       // tty: the line on screen now ("" = none)
  std::string phase_key_;   // state + phase + layer stage of the last plain line
  absl::Time last_line_;    // when the last plain line was written
  std::string last_message_;
  bool finished_ = false;
};

// "00:42", "12:05", "1:02:03".
std::string FormatClock(absl::Duration d);

// The whole display for `snapshots` (receive time, job) of one watch that began at `start`
// and ended at `end`, with a tick every second between them and Finish at `end`: what
// quantctl prints, as a pure function (tests, docs).
std::string RenderProgress(const std::vector<std::pair<absl::Time, quantd::v1::Job>>& snapshots,
                           const ProgressStyle& style, absl::Time start, absl::Time end);

}  // namespace quantd::client

#endif  // QUANTD_CLIENT_PROGRESS_H_
