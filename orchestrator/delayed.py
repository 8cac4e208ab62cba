"""Delayed tasks come due: the promotion a router runs over the shards it holds (the scripts are in
adapters/lua/due.lua and promote.lua; a worker's take promotes its own worker type's too)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from orchestrator.adapters.task_store import TaskStore

PROMOTE_BATCH = 500  # per worker type and script call: bounds how long one script holds Redis


async def promote_due(store: TaskStore, shards: Iterable[int], worker_types: Sequence[str],
                      clock: Callable[[], float], urgent_priority: int) -> float | None:
    """Queue every delayed task come due in `shards`; when the next one left is due (None: none is scheduled)."""
    earliest: float | None = None
    for shard in shards:
        while True:
            now = clock()
            _promoted, next_due = await store.promote(shard, worker_types, now, PROMOTE_BATCH, urgent_priority)
            if next_due is None or next_due > now:  # else a batch was full: more are due already
                break
        if next_due is not None and (earliest is None or next_due < earliest):
            earliest = next_due
    return earliest


def next_wake_s(now: float, next_due: float | None, interval_s: float) -> float:
    """How long to sleep before promoting again: until the next task is due, at most `interval_s` (a task
    accepted meanwhile may be due sooner)."""
    return interval_s if next_due is None else min(max(0.0, next_due - now), interval_s)
