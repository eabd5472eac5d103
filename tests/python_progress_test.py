#!/usr/bin/env python3
"""The Python client's progress display (client/python/quantd_progress.py) as a pure function
of job snapshots and a clock, with the same synthetic jobs as client/progress_test.cc: the
time left within 2x of the truth for tasks of known duration, one '\\r'-redrawn line on a
terminal, a bounded number of lines in a log. Needs no gRPC (Debian's python3 runs it)."""

import os
import sys
import types
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "client",
                                "python"))
import quantd_progress as qp  # noqa: E402

RUNNING, SUCCEEDED = 2, 3


def job(**kw):
    j = types.SimpleNamespace(state=1, phase="", tasks_total=0, tasks_done=0, tasks_running=0,
                              progress=0.0, layer_stage=0, layer_stages=0, phase_tasks=[])
    j.__dict__.update(kw)
    return j


def simulate(phases, workers, layer_stages=0):
    """The events quantd sends for phases [(name, tasks, seconds, stage)] run one after another
    on `workers` workers: [(t, job)], start, end."""
    kinds = []
    for name, *_ in phases:
        if name not in kinds:
            kinds.append(name)
    totals = {k: sum(p[1] for p in phases if p[0] == k) for k in kinds}
    done = {k: 0 for k in kinds}
    total = sum(totals.values())
    state = {"state": 1, "phase": "", "stage": 0, "running": 0, "done": 0}
    out = []

    def emit(t):
        pts = [types.SimpleNamespace(phase=k, tasks_total=totals[k], tasks_done=done[k])
               for k in kinds]
        succeeded = state["state"] == SUCCEEDED
        out.append((t, job(state=state["state"], phase=state["phase"], tasks_total=total,
                           tasks_done=state["done"], tasks_running=state["running"],
                           progress=1.0 if succeeded else state["done"] / (total + 1),
                           layer_stage=state["stage"], layer_stages=layer_stages,
                           phase_tasks=pts)))

    start = 1800000000.0
    emit(start)
    state["state"] = RUNNING
    t = start + 0.2
    for name, tasks, seconds, stage in phases:
        state["phase"], state["stage"] = name, stage
        emit(t)
        left = tasks
        while left > 0:
            wave = min(workers, left)
            for _ in range(wave):
                state["running"] += 1
                emit(t)
            t += seconds
            for _ in range(wave):
                state["running"] -= 1
                state["done"] += 1
                done[name] += 1
                emit(t)
            left -= wave
    end = t
    state.update(state=SUCCEEDED, phase="done", stage=0)
    emit(t + 0.1)
    return out, start, end


def forty_five(h, q, e):
    return [("hessian", 9, h, 0), ("quantize", 35, q, 0), ("evaluate", 1, e, 0)]


class EtaTest(unittest.TestCase):
    def worst_ratio(self, sim, min_left, frm=0.0):
        snaps, start, end = sim
        eta = qp.EtaEstimator()
        i, any_done, worst = 0, False, 1.0
        t = start
        while t < end - min_left:
            while i < len(snaps) and snaps[i][0] <= t:
                eta.observe(snaps[i][1], snaps[i][0])
                any_done = any_done or snaps[i][1].tasks_done > 0
                i += 1
            est = eta.remaining(t)
            if not any_done:
                self.assertIsNone(est)
            elif t >= frm:
                self.assertIsNotNone(est)
                truth = end - t
                ratio = max(est / truth, truth / est) if est > 0 else 1e9
                self.assertLessEqual(ratio, 2.0, "at %.2f s: %.2f vs %.2f" % (t - start, est,
                                                                             truth))
                worst = max(worst, ratio)
            t += 0.25
        return worst

    def test_uniform_tasks_from_first_completion(self):
        for workers in (1, 2, 3):
            self.worst_ratio(simulate(forty_five(1.0, 1.0, 1.0), workers), 3.0)

    def test_phases_of_different_cost_once_seen(self):
        for workers in (1, 2):
            sim = simulate(forty_five(4.0, 0.5, 5.0), workers)
            quantize_start = sim[1] + 0.2 + 4.0 * ((9 + workers - 1) // workers)
            self.worst_ratio(sim, 3.0, quantize_start + 0.5)

    def test_sequential_job_learns_each_kind(self):
        phases = []
        for s in (1, 2, 3):
            phases += [("hessian", 2, 4.0, s), ("quantize", 7, 0.5, s)]
        phases.append(("evaluate", 2, 4.0, 0))
        sim = simulate(phases, 1, 3)
        self.worst_ratio(sim, 4.0, sim[1] + 0.2 + 2 * 4.0 + 7 * 0.5)


class RenderTest(unittest.TestCase):
    def test_terminal_one_line(self):
        snaps, start, end = simulate(forty_five(1.0, 1.0, 1.0), 2)
        out = qp.render(snaps, True, start, end + 1)
        self.assertEqual(out.count("\n"), 1)
        self.assertTrue(out.endswith("\n"))
        draws = [d for d in out[:-1].split("\r") if d]
        self.assertGreater(len(draws), 40)
        for d in draws:
            self.assertLessEqual(len(d), 79, d)
            self.assertEqual(d.index("]"), 11, d)
        self.assertTrue(draws[-1].startswith("[##########] 100% SUCCEEDED done 45/45, 00:"),
                        draws[-1])
        self.assertTrue(any("/45, 2 workers busy, 00:" in d and " elapsed, ETA 00:" in d
                            for d in draws))

    def test_log_bounded_lines(self):
        snaps, start, end = simulate(forty_five(1.0, 1.0, 1.0), 1)
        out = qp.render(snaps, False, start, end + 1, heartbeat_s=10)
        self.assertNotIn("\r", out)
        lines = out.splitlines()
        self.assertLessEqual(len(lines), 5 + 45 // 10, out)
        self.assertEqual(lines[0], "[00:00] QUEUED 0/45 tasks")
        self.assertEqual(lines[1], "[00:00] RUNNING hessian 0/45 tasks, ETA --:--")
        self.assertEqual(lines[-1], "[00:45] SUCCEEDED done 45/45 tasks")

    def test_repeated_messages_and_notes(self):
        r = qp.ProgressRenderer(False, 0.0)
        j = job(state=RUNNING, phase="hessian", tasks_total=45, tasks_done=1)
        self.assertEqual(r.on_job(j, "hessian 1/45", 0.0),
                         "[00:00] RUNNING hessian 1/45 tasks, ETA --:--\n")
        self.assertEqual(r.on_job(j, "worker w1 lost", 1.0), "worker w1 lost\n")
        t = qp.ProgressRenderer(True, 0.0)
        first = t.on_job(job(state=RUNNING, phase="quantize", tasks_total=10), "", 0.0)
        note = t.note("re-attaching", 0.0)
        self.assertTrue(note.startswith("\r" + " " * (len(first) - 1) + "\rre-attaching\n\r"))
        self.assertEqual(t.finish(0.0), "\n")
        self.assertEqual(t.finish(0.0), "")


if __name__ == "__main__":
    unittest.main()
