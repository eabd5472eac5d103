"""The watch progress display of quantd_client.py, the same as quantctl's (client/progress.h,
docs/cli.md "Progress"): on a terminal one line redrawn in place with '\\r'; in a log a line per
phase change plus a heartbeat line every `heartbeat_s`; both with the time left estimated from
the task rates observed in each phase.

Pure: no gRPC, no clock of its own. Jobs are quantd.v1.Job messages (or any object with their
fields); times are seconds on the caller's clock. Not thread-safe: one instance per watch.
"""

import math

_ALL = "*"  # without Job.phase_tasks every task is one kind
_STATES = {0: "UNSPECIFIED", 1: "QUEUED", 2: "RUNNING", 3: "SUCCEEDED", 4: "FAILED",
           5: "CANCELLED"}
_RUNNING = 2


def _phase_tasks(job):
    return list(getattr(job, "phase_tasks", []) or [])


def _current_kind(job):
    return job.phase if _phase_tasks(job) else _ALL


def _done_by_kind(job):
    pts = _phase_tasks(job)
    if not pts:
        return {_ALL: job.tasks_done}
    done = {}
    for p in pts:
        done[p.phase] = done.get(p.phase, 0) + p.tasks_done
    return done


def _left(job):
    pts = _phase_tasks(job)
    if not pts:
        return [(_ALL, job.tasks_total - job.tasks_done)]
    return [(p.phase, p.tasks_total - p.tasks_done) for p in pts]


def state_name(state):
    return _STATES.get(int(state), "STATE_%d" % int(state))


def format_clock(seconds):
    """"00:42", "12:05", "1:02:03"."""
    s = max(0, int(seconds))
    if s >= 3600:
        return "%d:%02d:%02d" % (s // 3600, (s // 60) % 60, s % 60)
    return "%02d:%02d" % (s // 60, s % 60)


class EtaEstimator:
    """Time left from per-phase task durations: worker time (tasks_running x time) spent in a
    kind of phase per task finished; n tasks left take duration x ceil(n / W), W the most
    workers seen busy; the current phase's tasks in flight are credited with the time since its
    last completion. An unseen kind takes the other forward-pass kind's duration (hessian <->
    evaluate), else the mean over all kinds seen. The algorithm of client/progress.cc."""

    def __init__(self):
        self._stats = {}  # kind -> [busy, busy_at_last_done, done, last_done]
        self._seen_done = {}
        self._phase_entered = 0.0
        self._workers = 0
        self._last = None
        self._last_time = 0.0

    def observe(self, job, now):
        last = self._last
        if last is not None and last.state == _RUNNING:
            dt = max(now - self._last_time, 0.0)
            busy = getattr(last, "tasks_running", 0) if _phase_tasks(last) else 1
            self._stats.setdefault(_current_kind(last), [0.0, 0.0, 0, 0.0])[0] += dt * busy
        if _phase_tasks(job):
            self._workers = max(self._workers, getattr(job, "tasks_running", 0))
        done = _done_by_kind(job)
        if last is not None:
            for kind, n in done.items():
                delta = n - self._seen_done[kind] if kind in self._seen_done else 0
                if delta <= 0:
                    continue
                s = self._stats.setdefault(kind, [0.0, 0.0, 0, 0.0])
                s[2] += delta
                s[1] = s[0]
                s[3] = now
        if (last is None or _current_kind(job) != _current_kind(last)
                or job.layer_stage != last.layer_stage):
            self._phase_entered = now
        self._seen_done = done
        self._last = job
        self._last_time = now

    def remaining(self, now):
        """Seconds left, or None while no task has finished or the job is not RUNNING."""
        if self._last is None or self._last.state != _RUNNING:
            return None

        def duration_of(kind):
            s = self._stats.get(kind)
            if s is None or s[2] == 0 or s[1] <= 0:
                return None
            return s[1] / s[2]

        seen = [s for s in self._stats.values() if s[2] > 0 and s[1] > 0]
        if not seen:
            return None
        mean_all = sum(s[1] for s in seen) / sum(s[2] for s in seen)
        workers = max(self._workers, 1)

        def waves(n):
            return (n + workers - 1) // workers

        current = _current_kind(self._last)
        total = 0.0
        for kind, left in _left(self._last):
            if left <= 0:
                continue
            d = duration_of(kind)
            was_seen = d is not None
            if d is None and kind == "evaluate":
                d = duration_of("hessian")
            if d is None and kind == "hessian":
                d = duration_of("evaluate")
            task = mean_all if d is None else d
            if kind != current:
                total += task * waves(left)
                continue
            since = self._phase_entered
            if was_seen:
                since = max(since, self._stats[kind][3])
            ran = max(now - since, 0.0)
            in_flight = min(left, workers)
            total += max(task - ran, ran / 2) + task * waves(left - in_flight)
        return total


class ProgressRenderer:
    """Turns job snapshots, ticks and notes into the text to write (possibly "")."""

    def __init__(self, tty, start, heartbeat_s=30.0, columns=80):
        self.tty = tty
        self.start = start
        self.heartbeat_s = heartbeat_s
        self.columns = columns or 80
        self._eta = EtaEstimator()
        self._job = None
        self._drawn = ""
        self._phase_key = None
        self._last_line = start
        self._last_message = ""
        self._finished = False

    def _line(self, now):
        j = self._job
        head = []
        if not self.tty or j.state != _RUNNING:
            head.append(state_name(j.state))
        if j.phase:
            head.append("%s, layer %d/%d" % (j.phase, j.layer_stage, j.layer_stages)
                        if j.layer_stage > 0 else j.phase)
        if j.tasks_total > 0:
            head.append("%d/%d%s" % (j.tasks_done, j.tasks_total, "" if self.tty else " tasks"))
        parts = [" ".join(head)] if head else []
        running = j.state == _RUNNING
        busy = getattr(j, "tasks_running", 0)
        if running and busy > 0:
            parts.append("%d %s busy" % (busy, "worker" if busy == 1 else "workers"))
        if self.tty:
            parts.append("%s elapsed" % format_clock(now - self.start))
        if running:
            left = self._eta.remaining(now)
            parts.append("ETA " + (format_clock(math.ceil(left)) if left is not None
                                   else "--:--"))
        return ", ".join(parts)

    def _redraw(self, now):
        p = min(max(self._job.progress, 0.0), 1.0)
        text = "%3.0f%% %s" % (100.0 * p, self._line(now))
        bar = 20 if self.columns >= 100 else 10
        if self.columns < 100 and self._job.layer_stages > 0:
            bar = 0
        line = text
        if bar > 0:
            filled = int(p * bar + 0.5)
            line = "[%s%s] %s" % ("#" * filled, "." * (bar - filled), text)
        line = line[:max(self.columns - 1, 10)]
        if line == self._drawn:
            return ""
        out = "\r" + line + " " * max(len(self._drawn) - len(line), 0)
        self._drawn = line
        return out

    def _plain_line(self, now):
        self._last_line = now
        return "[%s] %s\n" % (format_clock(now - self.start), self._line(now))

    def on_job(self, job, message, now):
        self._eta.observe(job, now)
        self._job = job
        out = ""
        # quantd sends "PHASE DONE/TOTAL" with every event: already in the display.
        if (message and message != self._last_message and
                message != "%s %d/%d" % (job.phase, job.tasks_done, job.tasks_total)):
            out += self.note(message, now)
        self._last_message = message
        if self._finished:
            return out
        if self.tty:
            return out + self._redraw(now)
        key = (job.state, job.phase, job.layer_stage)
        if key != self._phase_key:
            self._phase_key = key
            out += self._plain_line(now)
        return out

    def on_tick(self, now):
        if self._job is None or self._finished:
            return ""
        if self.tty:
            return self._redraw(now)
        if now - self._last_line >= self.heartbeat_s:
            return self._plain_line(now)
        return ""

    def note(self, text, now):
        if not self.tty:
            return text + "\n"
        out = "\r" + " " * len(self._drawn) + "\r" if self._drawn else ""
        self._drawn = ""
        out += text + "\n"
        if self._job is not None and not self._finished:
            out += self._redraw(now)
        return out

    def finish(self, now):
        if self._finished:
            return ""
        out = ""
        if self.tty and self._job is not None:
            out = self._redraw(now)
            if self._drawn:
                out += "\n"
        self._finished = True
        return out


def render(snapshots, tty, start, end, heartbeat_s=30.0, columns=80):
    """The whole display for [(time, job), ...] with a tick every second: a pure function."""
    r = ProgressRenderer(tty, start, heartbeat_s, columns)
    out = []
    tick = start + 1.0
    for when, job in snapshots:
        while tick < when:
            out.append(r.on_tick(tick))
            tick += 1.0
        out.append(r.on_job(job, "", when))
    while tick < end:
        out.append(r.on_tick(tick))
        tick += 1.0
    out.append(r.finish(end))
    return "".join(out)
