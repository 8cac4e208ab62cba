"""The SLA policy: how many workers a pool should have, from what it measures and what it promised.

Pure: the SLA policy actor measures each pool every interval, calls `decide`, and applies the
target (adding workers, draining them, asking Ray's autoscaler for nodes). Hysteresis (the load must
stay low for `scale_down_after_s` before a worker goes) and cooldowns (no change soon after the last
one) keep it from flapping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from pydantic import ConfigDict, Field

from orchestrator.upgradable import Upgradable


class SlaTargets(Upgradable):
    """What a pool promises, and how eagerly it may be resized to keep the promise."""

    model_config = ConfigDict(extra="forbid")

    min_workers: int = Field(default=1, ge=0)
    max_workers: int = Field(default=8, ge=1)
    queue_wait_p95_s: float = Field(default=5.0, gt=0, description="the promise: 95 % of tasks start within it")
    scale_up_utilisation: float = Field(default=0.85, gt=0, le=1, description="busy slots share that needs help")
    scale_down_utilisation: float = Field(default=0.3, ge=0, lt=1, description="below it a worker may go")
    scale_down_after_s: float = Field(default=120.0, ge=0, description="low load must last this long")
    cooldown_up_s: float = Field(default=15.0, ge=0)
    cooldown_down_s: float = Field(default=60.0, ge=0)
    max_step: int = Field(default=4, ge=1, description="workers added at once")


@dataclass(frozen=True, slots=True)
class PoolMetrics:
    """One pool over the last measurement window."""

    workers: int
    queue_depth: int  # queued, not yet on a worker
    queue_wait_p95_s: float | None  # None: nothing started in the window
    utilisation: float  # busy slots / all slots, 0..1
    provider_wait_share: float = 0.0  # share of running tasks waiting on a provider's rate limit, 0..1


@dataclass(frozen=True, slots=True)
class PoolMemory:
    """What the policy remembers between decisions."""

    last_change_at: float | None = None
    low_since: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    workers: int
    reason: str
    memory: PoolMemory


PROVIDER_BOUND_SHARE = 0.5  # when half the running tasks wait on a provider, more workers would only wait too


def decide(metrics: PoolMetrics, targets: SlaTargets, memory: PoolMemory, now: float) -> Decision:
    """The pool's target size now, and why."""
    low, high = targets.min_workers, max(targets.min_workers, targets.max_workers)
    current = metrics.workers
    if current < low or current > high:
        bounded = min(max(current, low), high)
        return Decision(bounded, f"outside {low}..{high} workers", PoolMemory(now, None))
    if _breached(metrics, targets):
        return _scale_up(metrics, targets, memory, now, high)
    if _idle(metrics, targets):
        return _scale_down(metrics, targets, memory, now, low)
    return Decision(current, "within the SLA", replace(memory, low_since=None))


def _breached(metrics: PoolMetrics, targets: SlaTargets) -> bool:
    late = metrics.queue_wait_p95_s is not None and metrics.queue_wait_p95_s > targets.queue_wait_p95_s
    crowded = metrics.utilisation >= targets.scale_up_utilisation and metrics.queue_depth > 0
    return late or crowded


def _idle(metrics: PoolMetrics, targets: SlaTargets) -> bool:
    return metrics.queue_depth == 0 and metrics.utilisation < targets.scale_down_utilisation


def _scale_up(metrics: PoolMetrics, targets: SlaTargets, memory: PoolMemory, now: float, high: int) -> Decision:
    current = metrics.workers
    held = replace(memory, low_since=None)
    if metrics.provider_wait_share >= PROVIDER_BOUND_SHARE:
        return Decision(current, "provider-bound: more workers would wait on the same rate limit", held)
    if current >= high:
        return Decision(current, f"SLA breached but already at max_workers ({high})", held)
    if memory.last_change_at is not None and now - memory.last_change_at < targets.cooldown_up_s:
        return Decision(current, "SLA breached; cooling down after the last change", held)
    wait_ratio = (metrics.queue_wait_p95_s or 0) / targets.queue_wait_p95_s
    wanted = max(current + 1, math.ceil(current * max(wait_ratio, 1.0)))  # grow with how late tasks start
    target = min(wanted, current + targets.max_step, high)
    wait = "n/a" if metrics.queue_wait_p95_s is None else f"{metrics.queue_wait_p95_s:.2f}s"
    return Decision(target, f"SLA breached (queue wait p95 {wait}, "
                            f"utilisation {metrics.utilisation:.0%}, {metrics.queue_depth} queued)",
                    PoolMemory(now, None))


def _scale_down(metrics: PoolMetrics, targets: SlaTargets, memory: PoolMemory, now: float, low: int) -> Decision:
    current = metrics.workers
    low_since = memory.low_since if memory.low_since is not None else now
    kept = replace(memory, low_since=low_since)
    if current <= low:
        return Decision(current, "idle, at min_workers", kept)
    if now - low_since < targets.scale_down_after_s:
        return Decision(current, "idle, waiting to be sure (hysteresis)", kept)
    if memory.last_change_at is not None and now - memory.last_change_at < targets.cooldown_down_s:
        return Decision(current, "idle; cooling down after the last change", kept)
    return Decision(current - 1, f"idle for {now - low_since:.0f}s: drain one worker", PoolMemory(now, now))
