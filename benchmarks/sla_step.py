"""SLA step response: a 10x step in arrival rate against one pool the SLA policy sizes.

    python benchmarks/sla_step.py [--base-rate 2] [--factor 10] [--task-ms 500] [--slots 4]
                                  [--max-workers 4] [--target-s 1] [--before-s 20] [--step-s 60]
                                  [--after-s 50] [--plot sla_step.png] [--json]

Starts a self-hosted system whose `reasoning` pool is under SLA targets (min 1 worker, max
`--max-workers`, `--slots` slots each, queue-wait p95 target `--target-s`, short cooldowns, policy
interval 1 s) and sends echo tasks of `--task-ms` each, open loop at a scheduled rate: `--base-rate`
tasks/s for `--before-s`, then `--factor` times that for `--step-s`, then the base rate again for
`--after-s`.

Every second it samples `status`: the pool's size (workers not draining), its queue depth, and the SLA
policy's latest decision. Queue-wait p95 over time is computed afterwards from every task's record
(`get_task`, fetched in batches): at each sample time, the p95 of `queue_wait_ms` over the tasks that
started in the previous `--p95-window-s` seconds. (`analytics` cannot give this: its smallest window
is a minute.) Prints the time series, the time from the step until p95 is back under the target for
good, the largest pool, and the tasks lost or failed (must be 0), and plots pool size and p95 over
time to `--plot` (needs matplotlib: `pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find the harness beside us
from harness import own_system, percentile, raise_interrupt
from preemption import rpc

POOL = "reasoning"
FINISHED = {"succeeded", "failed", "cancelled"}
SUBMIT_TICK_S = 0.1  # the submitter sends what the schedule says is due, this often
RPC_BATCH = 50  # run_task / get_task members per JSON-RPC batch
LEGEND_ABOVE: dict[str, Any] = {"loc": "lower left", "bbox_to_anchor": (0, 1), "ncol": 3, "frameon": False,
                                "fontsize": "small"}


@dataclass(frozen=True, slots=True)
class Schedule:
    """Arrivals: base rate, then `factor` times it, then the base rate again."""

    base_rate: float
    factor: float
    before_s: float
    step_s: float
    after_s: float

    @property
    def step_at(self) -> float:
        return self.before_s

    @property
    def step_end(self) -> float:
        return self.before_s + self.step_s

    @property
    def total_s(self) -> float:
        return self.before_s + self.step_s + self.after_s

    def rate(self, t: float) -> float:
        return self.base_rate * self.factor if self.step_at <= t < self.step_end else self.base_rate

    def phase(self, t: float) -> str:
        return "base" if t < self.step_at else "step" if t < self.step_end else "after"

    def due(self, t: float) -> int:
        """Tasks that should have arrived by `t` seconds into the run."""
        t = min(max(t, 0.0), self.total_s)
        high = min(max(t - self.step_at, 0.0), self.step_s)
        return math.floor(self.base_rate * (t - high) + self.base_rate * self.factor * high + 1e-9)


@dataclass(slots=True)
class Sample:
    t_s: float
    phase: str
    rate_per_s: float
    workers: int  # not draining
    draining: int
    queued: int
    running: int
    sla_target: int | None  # the policy's latest decision
    sla_p95_s: float | None  # the queue-wait p95 the policy saw (only while tasks wait)
    sla_reason: str
    p95_s: float | None = None  # of tasks started in the last p95 window, from their records
    started: int = 0  # tasks started in that window


class Submitter(threading.Thread):
    """Sends echo tasks on schedule (open loop) and remembers their ids."""

    def __init__(self, base: str, schedule: Schedule, task_ms: int, t0: float) -> None:
        super().__init__(name="submitter", daemon=True)
        self.base, self.schedule, self.task_ms, self.t0 = base, schedule, task_ms, t0
        self.ids: list[str] = []
        self.prompts: list[str] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with httpx.Client() as client:
                while not self.stop.is_set():
                    now = time.time() - self.t0
                    due = self.schedule.due(now)
                    while len(self.ids) < due:
                        count = min(due - len(self.ids), RPC_BATCH)
                        prompts = [f"sla-step {len(self.ids) + i}" for i in range(count)]
                        calls = [("run_task", {"tool": "echo", "prompt": p, "context": {"delay_ms": self.task_ms}})
                                 for p in prompts]
                        self.ids += [r["task_id"] for r in rpc(client, self.base, calls)]
                        self.prompts += prompts
                    if now >= self.schedule.total_s:
                        return
                    self.stop.wait(SUBMIT_TICK_S)  # pacing of the arrivals
        except BaseException as exc:  # reported by the main thread
            self.error = exc


def sample(client: httpx.Client, base: str, t_s: float, schedule: Schedule) -> Sample:
    [status] = rpc(client, base, [("status", {})])
    mine = [w for w in status["workers"] if w["worker_type"] == POOL]
    pool = next((p for p in status["pools"] if p["worker_type"] == POOL), {"queued": 0, "running": 0})
    sla = status.get("sla", {}).get(POOL, {})
    return Sample(t_s=round(t_s, 2), phase=schedule.phase(t_s), rate_per_s=schedule.rate(t_s),
                  workers=sum(not w["draining"] for w in mine), draining=sum(w["draining"] for w in mine),
                  queued=pool["queued"], running=pool["running"], sla_target=sla.get("target_workers"),
                  sla_p95_s=sla.get("queue_wait_p95_s"), sla_reason=sla.get("reason", ""))


def collect(client: httpx.Client, base: str, ids: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    """The finished records of `ids`, polled in batches; tasks unfinished after `timeout_s` are left out."""
    records: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while len(records) < len(ids) and time.monotonic() < deadline:
        pending = [t for t in ids if t not in records][:RPC_BATCH]
        body = [{"jsonrpc": "2.0", "id": i, "method": "get_task", "params": {"task_id": t}}
                for i, t in enumerate(pending)]
        for reply in client.post(f"{base}/v1/rpc", json=body, timeout=60).json():
            record = reply.get("result")
            if record is not None and record["status"] in FINISHED:
                records[record["task_id"]] = record
        if len(records) < len(ids):
            time.sleep(0.2)  # poll interval
    return records


def add_p95(samples: list[Sample], records: list[dict[str, Any]], t0: float, window_s: float) -> None:
    """At each sample time, the queue-wait p95 of the tasks that started in the window before it."""
    starts = sorted((r["started_at"] - t0, r["queue_wait_ms"] / 1000) for r in records
                    if r.get("started_at") is not None and r.get("queue_wait_ms") is not None)
    for s in samples:
        waits = [w for at, w in starts if s.t_s - window_s < at <= s.t_s]
        p95 = percentile(waits, 95)
        s.p95_s, s.started = (None if p95 is None else round(p95, 3)), len(waits)


def recovered_after(samples: list[Sample], schedule: Schedule, target_s: float) -> float | None:
    """Seconds from the step until p95 is under the target for the rest of the run (0.0 if it never went
    over); None if it was still over at the end."""
    late = [s.t_s for s in samples if s.t_s >= schedule.step_at and s.p95_s is not None and s.p95_s > target_s]
    if not late:
        return 0.0
    after = [s.t_s for s in samples if s.t_s > late[-1]]
    return round(after[0] - schedule.step_at, 1) if after else None


def last_late_start(records: list[dict[str, Any]], t0: float, schedule: Schedule, target_s: float) -> float | None:
    """Seconds from the step until the last task that waited longer than the target started (None: none did)."""
    late = [r["started_at"] - t0 for r in records
            if r.get("started_at") is not None and r["queue_wait_ms"] / 1000 > target_s
            and r["started_at"] - t0 >= schedule.step_at]
    return round(max(late) - schedule.step_at, 1) if late else None


def first_time(samples: list[Sample], since: float, predicate: Any) -> float | None:
    return next((round(s.t_s - since, 1) for s in samples if s.t_s >= since and predicate(s)), None)


def plot(samples: list[Sample], schedule: Schedule, target_s: float, path: Path) -> str:
    """Pool size and queue-wait p95 over time, the step shaded; returns what happened."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed, so no plot: pip install -e '.[bench]'"
    t = [s.t_s for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6), constrained_layout=True)
    top.step(t, [s.workers for s in samples], where="post", color="tab:blue", label="workers (not draining)")
    top.step(t, [s.sla_target or 0 for s in samples], where="post", color="tab:green", alpha=0.6,
             linestyle="--", label="SLA policy's target")
    top.set_ylabel("pool size (workers)")
    top.set_ylim(0, max(s.workers for s in samples) + 1)
    queue = top.twinx()
    queue.plot(t, [s.queued for s in samples], color="tab:gray", linewidth=1, label="queue depth")
    queue.set_ylabel("queued tasks", color="tab:gray")
    lines = top.get_legend_handles_labels()[0] + queue.get_legend_handles_labels()[0]
    top.legend(lines, [line.get_label() for line in lines], **LEGEND_ABOVE)
    bottom.plot(t, [s.p95_s for s in samples], color="tab:red", label="queue-wait p95 (tasks started in the window)")
    bottom.plot(t, [s.sla_p95_s for s in samples], color="tab:gray", linewidth=1, linestyle="--",
                label="queue-wait p95 the SLA policy saw")
    bottom.axhline(target_s, color="black", linestyle=":", label=f"target {target_s:g} s")
    bottom.set_ylabel("queue wait p95 (s)")
    bottom.set_xlabel("seconds since start")
    bottom.set_ylim(0, max([target_s * 1.25] + [max(s.p95_s or 0, s.sla_p95_s or 0) for s in samples]) * 1.05)
    bottom.legend(**LEGEND_ABOVE)
    for ax in (top, bottom):
        ax.axvspan(schedule.step_at, schedule.step_end, color="tab:orange", alpha=0.12)
        ax.axvline(schedule.step_at, color="tab:orange", linewidth=1)
    fig.suptitle(f"{schedule.factor:g}x step in arrival rate ({schedule.base_rate:g} -> "
                  f"{schedule.base_rate * schedule.factor:g} tasks/s) against one SLA-sized pool")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot written to {path}"


@dataclass(frozen=True, slots=True)
class Outcome:
    samples: list[Sample]
    tasks: int
    failed: int  # finished, but not succeeded with the right text
    lost: int  # no finished record
    late: int  # waited longer than the target
    last_late_start_s: float | None  # after the step


def run(args: argparse.Namespace, schedule: Schedule) -> Outcome:
    targets = {"min_workers": 1, "max_workers": args.max_workers, "queue_wait_p95_s": args.target_s,
               "scale_down_after_s": args.scale_down_after_s, "cooldown_up_s": args.cooldown_up_s,
               "cooldown_down_s": args.cooldown_down_s}
    overrides = {
        "pools": {POOL: {"workers": 1, "slots": args.slots}, "codegen": {"workers": 0}, "ml": {"workers": 0}},
        "sla": {"interval_s": args.interval_s, "pools": {POOL: targets}},
        "router": {"aging_interval_s": 0},  # one priority for all: keep the queue plain FIFO
    }
    with own_system(overrides, keep_logs=args.keep_logs) as (base, _settings), httpx.Client() as client:
        t0 = time.time()
        submitter = Submitter(base, schedule, args.task_ms, t0)
        submitter.start()
        samples: list[Sample] = []
        try:
            tick = 0
            while tick * args.sample_s <= schedule.total_s + args.tail_s and submitter.error is None:
                delay = t0 + tick * args.sample_s - time.time()
                if delay > 0:
                    time.sleep(delay)  # the sampling period
                samples.append(sample(client, base, time.time() - t0, schedule))
                tick += 1
        finally:
            submitter.stop.set()
            submitter.join()
        if submitter.error is not None:
            raise RuntimeError(f"submitting failed: {submitter.error}") from submitter.error
        records = collect(client, base, submitter.ids, timeout_s=120)
    ordered = [records[t] for t in submitter.ids if t in records]
    bad = sum(1 for t, p in zip(submitter.ids, submitter.prompts)
              if t in records and (records[t]["status"] != "succeeded" or records[t]["result"]["text"] != p))
    add_p95(samples, ordered, t0, args.p95_window_s)
    late = sum(1 for r in ordered if (r.get("queue_wait_ms") or 0) / 1000 > args.target_s)
    return Outcome(samples, len(submitter.ids), bad, len(submitter.ids) - len(ordered), late,
                   last_late_start(ordered, t0, schedule, args.target_s))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-rate", type=float, default=2.0, help="tasks/s before and after the step")
    parser.add_argument("--factor", type=float, default=10.0, help="the step multiplies the rate by this")
    parser.add_argument("--task-ms", type=int, default=500, help="duration of each echo task")
    parser.add_argument("--slots", type=int, default=4, help="slots per worker")
    parser.add_argument("--max-workers", type=int, default=4)
    parser.add_argument("--target-s", type=float, default=1.0, help="SLA target: queue-wait p95")
    parser.add_argument("--interval-s", type=float, default=1.0, help="SLA policy interval")
    parser.add_argument("--cooldown-up-s", type=float, default=3.0)
    parser.add_argument("--cooldown-down-s", type=float, default=5.0)
    parser.add_argument("--scale-down-after-s", type=float, default=10.0)
    parser.add_argument("--before-s", type=float, default=20.0, help="base rate before the step")
    parser.add_argument("--step-s", type=float, default=60.0, help="length of the step")
    parser.add_argument("--after-s", type=float, default=50.0, help="base rate after the step")
    parser.add_argument("--tail-s", type=float, default=5.0, help="keep sampling this long after the last arrival")
    parser.add_argument("--sample-s", type=float, default=1.0, help="sampling period")
    parser.add_argument("--p95-window-s", type=float, default=5.0, help="p95 over tasks started this long before")
    parser.add_argument("--plot", type=Path, default=Path("sla_step.png"), help="PNG to write")
    parser.add_argument("--keep-logs", action="store_true", help="keep Ray's temp dir")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, raise_interrupt)
    schedule = Schedule(args.base_rate, args.factor, args.before_s, args.step_s, args.after_s)
    outcome = run(args, schedule)
    report(args, schedule, outcome)
    return 0 if outcome.failed == 0 and outcome.lost == 0 else 1


def report(args: argparse.Namespace, schedule: Schedule, outcome: Outcome) -> None:
    samples = outcome.samples
    initial = samples[0].workers if samples else 0
    summary = {
        "base_rate_per_s": args.base_rate, "factor": args.factor, "task_ms": args.task_ms, "slots": args.slots,
        "max_workers": args.max_workers, "target_p95_s": args.target_s, "interval_s": args.interval_s,
        "step_at_s": schedule.step_at, "step_end_s": schedule.step_end, "p95_window_s": args.p95_window_s,
        "tasks": outcome.tasks, "failed": outcome.failed, "lost": outcome.lost, "late_tasks": outcome.late,
        "max_workers_seen": max((s.workers for s in samples), default=0),
        "first_scale_up_after_s": first_time(samples, schedule.step_at, lambda s: s.workers > initial),
        "max_pool_after_s": first_time(samples, schedule.step_at,
                                       lambda s: s.workers == max(x.workers for x in samples)),
        "peak_p95_s": max((s.p95_s for s in samples if s.p95_s is not None), default=None),
        "peak_queued": max((s.queued for s in samples), default=0),
        "p95_back_under_target_after_s": recovered_after(samples, schedule, args.target_s),
        "last_late_start_after_s": outcome.last_late_start_s,
        "back_to_min_after_step_end_s": first_time(samples, schedule.step_end,
                                                   lambda s: s.workers == 1 and s.draining == 0),
    }
    print(f"{'t_s':>6} {'phase':>5} {'rate':>5} {'workers':>7} {'drain':>5} {'queued':>6} {'running':>7} "
          f"{'p95_s':>6} {'sla_p95':>7} {'target':>6}  the SLA policy's reason")
    for s in samples:
        p95 = "-" if s.p95_s is None else f"{s.p95_s:.2f}"
        sla_p95 = "-" if s.sla_p95_s is None else f"{s.sla_p95_s:.2f}"
        target = "-" if s.sla_target is None else str(s.sla_target)
        print(f"{s.t_s:6.1f} {s.phase:>5} {s.rate_per_s:5.0f} {s.workers:7d} {s.draining:5d} {s.queued:6d} "
              f"{s.running:7d} {p95:>6} {sla_p95:>7} {target:>6}  {s.sla_reason[:50]}")
    print(f"p95_s: queue-wait p95 of the tasks started in the {args.p95_window_s:g} s before (from their records); "
          "sla_p95: what the policy measured (finished tasks over its window, only while tasks wait)")
    recovery = summary["p95_back_under_target_after_s"]
    print(f"step {args.base_rate:g} -> {args.base_rate * args.factor:g} tasks/s at t={schedule.step_at:g} s for "
          f"{args.step_s:g} s; echo {args.task_ms} ms; {args.slots} slots/worker, 1..{args.max_workers} workers; "
          f"target queue-wait p95 {args.target_s:g} s")
    print(f"first scale-up {summary['first_scale_up_after_s']} s after the step; max pool "
          f"{summary['max_workers_seen']} workers ({summary['max_pool_after_s']} s after the step); peak queue "
          f"{summary['peak_queued']}; peak p95 {summary['peak_p95_s']} s")
    if recovery is None:
        print("p95 was still over the target at the end")
    elif recovery == 0:
        print(f"p95 stayed under the target ({args.target_s:g} s) throughout")
    else:
        print(f"p95 back under the target for good {recovery} s after the step")
    print(f"back to 1 worker {summary['back_to_min_after_step_end_s']} s after the step ended")
    print(f"last task that waited longer than the target started {outcome.last_late_start_s} s after the step; "
          f"{outcome.late} of {outcome.tasks} tasks waited longer")
    print(f"tasks {outcome.tasks}: failed {outcome.failed}, lost {outcome.lost}")
    print(plot(samples, schedule, args.target_s, args.plot) if samples else "no samples, no plot")
    if args.json:
        print(json.dumps({**summary, "series": [asdict(s) for s in samples]}, separators=(",", ":")))


if __name__ == "__main__":
    sys.exit(main())
