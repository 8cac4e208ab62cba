"""Analytics without scanning tasks: each finished task adds to per-minute counters and latency
histograms (per worker type, tool and tenant); a query merges the minutes of its window.

Pure: what to count for a finished task, and how to summarize merged counters. The counters live
in Redis (`orchestrator/adapters/stats_store.py`), one hash per minute.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Upper bounds of the latency histogram buckets (ms); a last bucket holds everything slower.
BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 60_000,
              120_000, 300_000, 600_000, 1_800_000, 3_600_000)
LATENCIES = ("e2e", "wait", "run")
Dimension = Literal["worker_type", "tool", "tenant"]
NO_TENANT = "-"


@dataclass(frozen=True, slots=True)
class FinishedTask:
    worker_type: str
    tool: str
    tenant: str | None  # its API key's tenant (None: auth off)
    status: str  # succeeded, failed, cancelled
    e2e_ms: float
    wait_ms: float | None  # None: never started
    run_ms: float | None
    retries: int  # attempts after the first
    preemptions: int
    tokens: int
    agent: str | None = None  # as the caller declared it: the tenant label when auth is off


def counters(task: FinishedTask) -> dict[str, int]:
    """The counter increments one finished task makes, keyed `<group>|<counter>`."""
    increments: dict[str, int] = {}
    tenant = task.tenant or task.agent or NO_TENANT
    groups = ("all", f"worker_type:{task.worker_type}", f"tool:{task.tool}", f"tenant:{tenant}")
    latencies = {"e2e": task.e2e_ms, "wait": task.wait_ms, "run": task.run_ms}
    for group in groups:
        increments[f"{group}|n"] = 1
        increments[f"{group}|{task.status}"] = 1
        for name, value in (("retries", task.retries), ("preemptions", task.preemptions), ("tokens", task.tokens)):
            if value:
                increments[f"{group}|{name}"] = value
        for name, ms in latencies.items():
            if ms is not None:
                increments[f"{group}|{name}:{bucket_of(ms)}"] = 1
                increments[f"{group}|{name}_sum_ms"] = round(ms)
    return increments


def bucket_of(ms: float) -> int:
    return bisect.bisect_left(BUCKETS_MS, max(ms, 0))


class Percentiles(BaseModel):
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


class GroupStats(BaseModel):
    tasks: int = 0
    throughput_per_s: float = 0.0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    retries: int = 0
    preemptions: int = 0
    tokens: int = 0
    e2e_ms: Percentiles = Percentiles()
    queue_wait_ms: Percentiles = Percentiles()
    run_ms: Percentiles = Percentiles()


class AnalyticsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    window_s: int = Field(default=300, ge=60, le=86_400, description="the last this many seconds (whole minutes)")
    series: bool = Field(default=False, description="also answer each minute's tasks and p95 latency (`series`)")


class MinutePoint(BaseModel):
    at: float = Field(description="the minute's start, unix seconds")
    tasks: int = Field(description="tasks finished in that minute")
    e2e_p95_ms: float | None = None


class AnalyticsResult(BaseModel):
    window_s: int
    since: float
    overall: GroupStats
    by_worker_type: dict[str, GroupStats]
    by_tool: dict[str, GroupStats]
    by_tenant: dict[str, GroupStats]
    utilisation: dict[str, float] = Field(default_factory=dict, description="busy slots / slots per pool, now")
    series: list[MinutePoint] | None = Field(default=None, description="with `series`: every minute, oldest first")


def summarize(merged: Mapping[str, int], window_s: float, since: float) -> AnalyticsResult:
    """Counters merged over a window → per-group figures with latency percentiles (bucket-interpolated)."""
    groups: defaultdict[str, dict[str, int]] = defaultdict(dict)
    for key, value in merged.items():
        group, _, counter = key.partition("|")
        groups[group][counter] = groups[group].get(counter, 0) + int(value)
    stats = {group: _group(values, window_s) for group, values in groups.items()}
    by: dict[str, dict[str, GroupStats]] = {"worker_type": {}, "tool": {}, "tenant": {}}
    for group, figures in stats.items():
        kind, _, name = group.partition(":")
        if kind in by:
            by[kind][name] = figures
    return AnalyticsResult(window_s=int(window_s), since=since, overall=stats.get("all", GroupStats()),
                           by_worker_type=by["worker_type"], by_tool=by["tool"], by_tenant=by["tenant"])


def series(per_minute: Iterable[Mapping[str, int]], since: float) -> list[MinutePoint]:
    """Each minute's finished tasks and p95 end-to-end latency (of every group: the `all` counters)."""
    points = []
    for i, counters in enumerate(per_minute):
        overall = {k.partition("|")[2]: int(v) for k, v in counters.items() if k.partition("|")[0] == "all"}
        figures = _group(overall, 60)
        points.append(MinutePoint(at=since + 60 * i, tasks=figures.tasks, e2e_p95_ms=figures.e2e_ms.p95))
    return points


def merge(hashes: Iterable[Mapping[str, str]]) -> dict[str, int]:
    total: defaultdict[str, int] = defaultdict(int)
    for counters_of_minute in hashes:
        for key, value in counters_of_minute.items():
            total[key] += int(value)
    return dict(total)


def _group(values: Mapping[str, int], window_s: float) -> GroupStats:
    tasks = values.get("n", 0)
    return GroupStats(
        tasks=tasks,
        throughput_per_s=round(tasks / window_s, 3),
        succeeded=values.get("succeeded", 0),
        failed=values.get("failed", 0),
        cancelled=values.get("cancelled", 0),
        retries=values.get("retries", 0),
        preemptions=values.get("preemptions", 0),
        tokens=values.get("tokens", 0),
        e2e_ms=_percentiles(values, "e2e"),
        queue_wait_ms=_percentiles(values, "wait"),
        run_ms=_percentiles(values, "run"),
    )


def _percentiles(values: Mapping[str, int], latency: str) -> Percentiles:
    counts = [values.get(f"{latency}:{i}", 0) for i in range(len(BUCKETS_MS) + 1)]
    total = sum(counts)
    if total == 0:
        return Percentiles()
    return Percentiles(**{f"p{q}": _quantile(counts, total, q / 100) for q in (50, 95, 99)})


def _quantile(counts: list[int], total: int, q: float) -> float:
    """The q-quantile, interpolated linearly inside its bucket (the overflow bucket reports its floor)."""
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            low = 0.0 if i == 0 else float(BUCKETS_MS[i - 1])
            if i == len(BUCKETS_MS):
                return low
            high = float(BUCKETS_MS[i])
            return round(low + (high - low) * (rank - seen) / count, 1)
        seen += count
    return float(BUCKETS_MS[-1])
