"""The SLA policy on a table of scenarios: burst, steady, idle, provider-bound, and no flapping."""

from __future__ import annotations

import pytest

from orchestrator.sla import Decision, PoolMemory, PoolMetrics, SlaTargets, decide

TARGETS = SlaTargets(min_workers=1, max_workers=6, queue_wait_p95_s=5, scale_down_after_s=60,
                     cooldown_up_s=10, cooldown_down_s=30, max_step=3)
FRESH = PoolMemory()


@pytest.mark.parametrize(
    ("metrics", "memory", "workers", "reason"),
    [
        # burst: tasks start 3x later than promised → grow in proportion, capped by max_step
        (PoolMetrics(2, 400, 15.0, 1.0), FRESH, 5, "SLA breached"),
        # a full pool with a queue breaches before waits show up
        (PoolMetrics(2, 10, 1.0, 0.95), FRESH, 3, "SLA breached"),
        # steady: busy but keeping the promise
        (PoolMetrics(3, 2, 2.0, 0.7), FRESH, 3, "within the SLA"),
        # provider-bound: tasks wait on the provider's rate limit, so more workers would not help
        (PoolMetrics(2, 400, 30.0, 1.0, provider_wait_share=0.8), FRESH, 2, "provider-bound"),
        # at the ceiling
        (PoolMetrics(6, 400, 30.0, 1.0), FRESH, 6, "already at max_workers"),
        # cooling down after a change 5 s ago
        (PoolMetrics(3, 400, 30.0, 1.0), PoolMemory(last_change_at=995), 3, "cooling down"),
        # idle but not for long enough yet (hysteresis)
        (PoolMetrics(4, 0, None, 0.0), PoolMemory(low_since=980), 4, "hysteresis"),
        # idle long enough: drain one
        (PoolMetrics(4, 0, None, 0.0), PoolMemory(low_since=900), 3, "drain one worker"),
        # idle at the floor
        (PoolMetrics(1, 0, None, 0.0), PoolMemory(low_since=0), 1, "at min_workers"),
        # outside the bounds (settings changed): fixed at once
        (PoolMetrics(9, 0, None, 0.0), FRESH, 6, "outside 1..6"),
    ],
)
def test_scenarios(metrics: PoolMetrics, memory: PoolMemory, workers: int, reason: str) -> None:
    decision = decide(metrics, TARGETS, memory, now=1000)
    assert decision.workers == workers
    assert reason in decision.reason


def run(series: list[PoolMetrics], start: float = 0, step_s: float = 5) -> list[Decision]:
    """Feed one measurement per interval, applying each decision, as the policy actor does."""
    memory, workers, decisions = PoolMemory(), series[0].workers, []
    for i, metrics in enumerate(series):
        decision = decide(PoolMetrics(workers, metrics.queue_depth, metrics.queue_wait_p95_s,
                                      metrics.utilisation, metrics.provider_wait_share),
                          TARGETS, memory, start + i * step_s)
        memory, workers = decision.memory, decision.workers
        decisions.append(decision)
    return decisions


def test_a_burst_grows_the_pool_then_idleness_shrinks_it_slowly() -> None:
    burst = [PoolMetrics(1, 500, 20.0, 1.0)] * 6
    idle = [PoolMetrics(1, 0, None, 0.05)] * 80  # 400 s: a drain every scale_down_after_s
    sizes = [d.workers for d in run(burst + idle)]
    assert max(sizes) == 6 and sizes[:6] == sorted(sizes[:6])  # grows, respecting the cooldown
    assert sizes[-1] == 1  # and comes back to the floor
    shrink = [b - a for a, b in zip(sizes[6:], sizes[7:], strict=False) if b != a]
    assert all(d == -1 for d in shrink)  # one worker at a time


def test_no_flapping_on_a_load_that_oscillates_around_the_thresholds() -> None:
    wobble = [PoolMetrics(3, 0, None, 0.25), PoolMetrics(3, 1, 1.0, 0.6)] * 30
    sizes = [d.workers for d in run(wobble)]
    assert len(set(sizes)) == 1  # low load never lasts long enough to drain, high never breaches


def test_targets_are_checked() -> None:
    with pytest.raises(ValueError):
        SlaTargets(queue_wait_p95_s=0)
    with pytest.raises(ValueError):
        SlaTargets(max_step=0)
