"""Recovery policy: stuck workers, and no sweep on idle times an outage inflated."""

from __future__ import annotations

from orchestrator.recovery import may_sweep, orphaned, stuck


def test_a_worker_silent_past_the_timeout_is_stuck() -> None:
    assert stuck(last_heartbeat=100.0, now=131.0, timeout_s=30.0)
    assert stuck(last_heartbeat=None, now=131.0, timeout_s=30.0)  # never heard of


def test_a_worker_that_heartbeats_is_not_stuck_its_idle_deliveries_are_orphans() -> None:
    assert not stuck(last_heartbeat=125.0, now=131.0, timeout_s=30.0)


def test_no_sweep_until_every_worker_could_heartbeat_after_an_outage() -> None:
    back = 1000.0  # Redis answered again
    assert not may_sweep(now=back + 30.0, reachable_since=back, timeout_s=30.0, heartbeat_s=5.0)
    assert may_sweep(now=back + 35.1, reachable_since=back, timeout_s=30.0, heartbeat_s=5.0)


def test_a_delivery_idle_since_before_its_workers_latest_heartbeat_is_an_orphan() -> None:
    assert orphaned(idle_s=40.0, last_heartbeat=128.0, now=131.0, heartbeat_s=5.0)  # not in the latest beat
    # idle because every heartbeat failed (Redis was away), and the worker has beaten again since: not an orphan
    assert not orphaned(idle_s=6.0, last_heartbeat=129.0, now=131.0, heartbeat_s=5.0)
