"""Recovery policy: when silent deliveries mean a stuck worker, and when idle times can be trusted at all."""

from __future__ import annotations

SLOW_CALL_S = 1.0  # a Redis call this slow went through an outage (retried) or a stalled server


def stuck(last_heartbeat: float | None, now: float, timeout_s: float) -> bool:
    """Whether a worker holding deliveries idle past the timeout is stuck (restart it, requeue its tasks)."""
    return last_heartbeat is None or now - last_heartbeat > timeout_s


def orphaned(idle_s: float, last_heartbeat: float, now: float, heartbeat_s: float) -> bool:
    """Whether a delivery of a live worker is one it does not know (the reply of the take that made it was
    lost): each heartbeat touches every delivery the worker runs, so one idle since before the worker's
    latest heartbeat (by more than a beat, for clocks and timing) was not in it."""
    return idle_s > now - last_heartbeat + heartbeat_s


def may_sweep(now: float, reachable_since: float, timeout_s: float, heartbeat_s: float) -> bool:
    """Whether idle times mean anything: after Redis was unreachable, every worker needs one heartbeat
    interval to touch its deliveries again, so a sweep waits that long (plus the timeout) before acting —
    an outage longer than the visibility timeout restarts no worker and costs no attempt."""
    return now - reachable_since > timeout_s + heartbeat_s
