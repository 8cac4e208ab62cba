"""Recovery policy: which silent entries mean a stuck worker, and which are orphans to re-dispatch."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Held:
    """A task the router has handed to a worker."""

    entry_id: str
    worker: str
    since: float  # when it was dispatched


@dataclass(frozen=True, slots=True)
class SweepDecision:
    restart: frozenset[str]  # workers to kill and let Ray restart (their tasks come back as lost)
    claim: tuple[str, ...]  # entries no worker holds: take over, and requeue those not already queued


def sweep(idle: Iterable[str], held: Iterable[Held], last_heartbeat: Mapping[str, float], now: float,
          timeout_s: float) -> SweepDecision:
    """Decide what to do about stream entries nobody touched for `timeout_s` (XPENDING IDLE).

    An idle entry held by a worker means the worker stopped heartbeating — unless the task was
    dispatched less than `timeout_s` ago (no heartbeat could have touched it yet) or the worker itself
    heartbeated recently (it is alive; the entry is just not in its latest beat).
    """
    by_entry = {h.entry_id: h for h in held}
    restart: set[str] = set()
    claim: list[str] = []
    for entry in idle:
        holder = by_entry.get(entry)
        if holder is None:
            claim.append(entry)
        elif now - holder.since > timeout_s and now - last_heartbeat.get(holder.worker, 0.0) > timeout_s:
            restart.add(holder.worker)
    return SweepDecision(frozenset(restart), tuple(claim))
