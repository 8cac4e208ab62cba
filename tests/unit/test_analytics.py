"""Analytics counters and their summary: percentiles from histograms, groups, windows."""

from __future__ import annotations

import random

from orchestrator.analytics import BUCKETS_MS, FinishedTask, counters, merge, series, summarize


def task(run_ms: float, status: str = "succeeded", tool: str = "echo", tenant: str | None = "team-a",
         tokens: int = 0, preemptions: int = 0, retries: int = 0) -> FinishedTask:
    return FinishedTask(worker_type="reasoning", tool=tool, tenant=tenant, status=status, e2e_ms=run_ms + 10,
                        wait_ms=10, run_ms=run_ms, retries=retries, preemptions=preemptions, tokens=tokens)


def summary(tasks: list[FinishedTask], window_s: float = 60) -> dict:
    merged = merge([{k: str(v) for k, v in counters(t).items()} for t in tasks])
    return summarize(merged, window_s, since=0).model_dump()


def test_counts_land_in_every_group() -> None:
    figures = summary([task(100), task(100, status="failed", tool="deepseek", tenant=None, tokens=50, retries=2),
                       task(100, status="cancelled", preemptions=1)])
    assert figures["overall"]["tasks"] == 3 and figures["overall"]["throughput_per_s"] == 0.05
    assert (figures["overall"]["succeeded"], figures["overall"]["failed"], figures["overall"]["cancelled"]) == (1, 1, 1)
    assert figures["by_tool"]["deepseek"]["tokens"] == 50 and figures["by_tool"]["deepseek"]["retries"] == 2
    assert figures["by_tenant"]["-"]["tasks"] == 1 and figures["by_tenant"]["team-a"]["tasks"] == 2
    assert figures["by_worker_type"]["reasoning"]["preemptions"] == 1


def test_percentiles_are_within_the_bucket_of_the_true_value() -> None:
    rng = random.Random(3)
    runs = [rng.lognormvariate(5, 1) for _ in range(2000)]  # ~150 ms median, long tail
    figures = summary([task(ms) for ms in runs])["overall"]["run_ms"]
    ordered = sorted(runs)
    for q in (50, 95, 99):
        true = ordered[int(q / 100 * len(ordered)) - 1]
        i = next(i for i, bound in enumerate(BUCKETS_MS) if true <= bound)
        low, high = (BUCKETS_MS[i - 1] if i else 0), BUCKETS_MS[i]
        assert low <= figures[f"p{q}"] <= high, (q, true, figures)


def test_an_empty_window_has_no_percentiles() -> None:
    figures = summary([])
    assert figures["overall"]["tasks"] == 0 and figures["overall"]["run_ms"] == {"p50": None, "p95": None, "p99": None}


def test_the_series_has_each_minute_with_its_own_tasks_and_p95() -> None:
    minute = [merge([counters(task(ms)) for ms in (100, 100, 5000)]), {}, merge([counters(task(20))])]
    points = [p.model_dump() for p in series(minute, since=600)]
    assert [(p["at"], p["tasks"]) for p in points] == [(600, 3), (660, 0), (720, 1)]
    assert points[0]["e2e_p95_ms"] > 1000 and points[1]["e2e_p95_ms"] is None and points[2]["e2e_p95_ms"] < 100
