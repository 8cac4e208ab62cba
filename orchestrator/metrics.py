"""Prometheus exposition of the whole system, built at scrape time from what Redis and the router know.

The counters live in Redis (every worker adds to them), so any ingress replica answers `/metrics`
with cluster-wide totals; gauges come from the overview read from Redis.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.analytics import BUCKETS_MS, LATENCIES
from orchestrator.auth import REASONS
from orchestrator.models import RouterOverview

CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}
_PHASES = {"e2e": "end_to_end", "wait": "queue_wait", "run": "run"}


def families(totals: Mapping[str, int], overview: RouterOverview | None, counts: Mapping[str, int],
             circuits: Mapping[str, str], auth_failures: Mapping[str, int] | None = None) -> list[Metric]:
    """Every metric family: task counters and latency histograms (from `totals`), pool and queue gauges
    (from the `overview`, absent if it could not be read), store gauges, provider states and failed
    authentications by reason (absent if they could not be read)."""
    groups = _by_group(totals)
    found: list[Metric] = [*_task_counters(groups), *_histograms(groups), *_provider_metrics(groups, circuits)]
    if auth_failures is not None:
        found.append(_auth_failures(auth_failures))
    store = GaugeMetricFamily("orchestrator_active_tasks", "Accepted tasks not yet finished (queued + running).")
    store.add_metric([], counts.get("active_tasks", 0))
    pending = GaugeMetricFamily("orchestrator_stream_pending", "Task stream entries delivered but not acknowledged.")
    pending.add_metric([], counts.get("stream_pending", 0))
    found += [store, pending]
    if overview is not None:
        found += _pool_gauges(overview)
    return found


def render(metrics: Iterable[Metric]) -> bytes:
    """The Prometheus text format of `metrics`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(metrics)))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)


def _by_group(totals: Mapping[str, int]) -> dict[str, dict[str, int]]:
    groups: defaultdict[str, dict[str, int]] = defaultdict(dict)
    for key, value in totals.items():
        group, _, counter = key.partition("|")
        groups[group][counter] = value
    return groups


def _task_counters(groups: Mapping[str, Mapping[str, int]]) -> list[Metric]:
    finished = CounterMetricFamily("orchestrator_tasks_finished", "Tasks that reached a final state.",
                                   labels=["worker_type", "status"])
    by_tool = CounterMetricFamily("orchestrator_tool_tasks_finished", "Tasks that reached a final state, by tool.",
                                  labels=["tool", "status"])
    retries = CounterMetricFamily("orchestrator_task_retries", "Attempts after the first (lost to crashes).",
                                  labels=["worker_type"])
    preemptions = CounterMetricFamily("orchestrator_task_preemptions", "Times running tasks were preempted.",
                                      labels=["worker_type"])
    tokens = CounterMetricFamily("orchestrator_tokens", "LLM tokens (prompt + completion) of finished tasks.",
                                 labels=["tool"])
    for group, values in groups.items():
        kind, _, name = group.partition(":")
        if kind == "worker_type":
            for status in ("succeeded", "failed", "cancelled"):
                finished.add_metric([name, status], values.get(status, 0))
            retries.add_metric([name], values.get("retries", 0))
            preemptions.add_metric([name], values.get("preemptions", 0))
        elif kind == "tool":
            for status in ("succeeded", "failed", "cancelled"):
                by_tool.add_metric([name, status], values.get(status, 0))
            tokens.add_metric([name], values.get("tokens", 0))
    return [finished, by_tool, retries, preemptions, tokens]


def _histograms(groups: Mapping[str, Mapping[str, int]]) -> list[Metric]:
    histogram = HistogramMetricFamily("orchestrator_task_duration_seconds",
                                      "Task latency by phase: end to end, queue wait (to first start), run.",
                                      labels=["worker_type", "phase"])
    for group, values in groups.items():
        kind, _, name = group.partition(":")
        if kind != "worker_type":
            continue
        for latency in LATENCIES:
            counts = [values.get(f"{latency}:{i}", 0) for i in range(len(BUCKETS_MS) + 1)]
            cumulative, buckets = 0, []
            for bound, count in zip([*(f"{b / 1000:g}" for b in BUCKETS_MS), "+Inf"], counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            histogram.add_metric([name, _PHASES[latency]], buckets, values.get(f"{latency}_sum_ms", 0) / 1000)
    return [histogram]


def _provider_metrics(groups: Mapping[str, Mapping[str, int]], circuits: Mapping[str, str]) -> list[Metric]:
    calls = CounterMetricFamily("orchestrator_provider_calls",
                                "Provider calls by outcome: ok, failed (5xx, timeouts), limited (429), neutral.",
                                labels=["provider", "outcome"])
    for group, values in groups.items():
        kind, _, name = group.partition(":")
        if kind == "provider":
            for outcome in ("ok", "failed", "limited", "neutral"):
                calls.add_metric([name, outcome], values.get(outcome, 0))
    circuit = GaugeMetricFamily("orchestrator_provider_circuit_state",
                                "Circuit breaker per provider: 0 closed, 1 half-open (probing), 2 open.",
                                labels=["provider"])
    for provider, state in sorted(circuits.items()):
        circuit.add_metric([provider], CIRCUIT_STATES.get(state, 0))
    return [calls, circuit]


def _auth_failures(counts: Mapping[str, int]) -> Metric:
    failures = CounterMetricFamily("orchestrator_auth_failures", "Requests refused for their API key, by reason: "
                                   "missing, unknown, expired, revoked (every replica's).", labels=["reason"])
    for reason in REASONS:  # a fixed set: never the key, never a name
        failures.add_metric([reason], counts.get(reason, 0))
    return failures


def _pool_gauges(overview: RouterOverview) -> list[Metric]:
    gauges = {
        "workers": GaugeMetricFamily("orchestrator_pool_workers", "Worker actors per pool.", labels=["worker_type"]),
        "slots": GaugeMetricFamily("orchestrator_pool_slots", "Task slots per pool.", labels=["worker_type"]),
        "running": GaugeMetricFamily("orchestrator_pool_running", "Tasks running per pool.", labels=["worker_type"]),
        "queued": GaugeMetricFamily("orchestrator_queue_depth", "Tasks queued per pool (ready, not on a worker).",
                                    labels=["worker_type"]),
        "scheduled": GaugeMetricFamily("orchestrator_scheduled_tasks", "Delayed tasks per pool, not yet due.",
                                       labels=["worker_type"]),
    }
    for pool in overview.pools:
        for field, gauge in gauges.items():
            gauge.add_metric([pool.worker_type], getattr(pool, field))
    return list(gauges.values())
