"""Analytics counters in Redis: per shard, one hash per minute, added to in the same script that settles the
tasks they count; a query merges the minutes of its window over the shards."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from orchestrator import codec
from orchestrator.adapters.keys import Keys
from orchestrator.adapters.task_store import storage_errors
from orchestrator.analytics import FinishedTask, counters, merge
from orchestrator.models import TaskRecord

logger = logging.getLogger(__name__)

RETENTION_S = 2 * 86_400  # longer than the longest window a query may ask for


def stats_arg(finished: Sequence[FinishedTask], now: float) -> str:
    """The counters of tasks finished together, summed, as the `stats` argument of a settling script: the
    figures of all tasks and of each tenant's own ('' when there is nothing to count)."""
    if not finished:
        return ""
    groups: dict[str, Counter[str]] = {"": Counter()}
    for task in finished:
        increments = counters(task)
        groups[""].update(increments)
        if task.tenant:
            groups.setdefault(f"@{task.tenant}", Counter()).update(increments)
    flat = [[suffix, [item for pair in counts.items() for item in pair]] for suffix, counts in groups.items()]
    return codec.dumps([int(now // 60), RETENTION_S, flat])


class StatsStore:
    def __init__(self, client: Any, prefix: str, shards: int, providers: Sequence[str] = ()) -> None:
        self._redis = client
        self._keys = Keys(prefix)
        self._shards = shards
        self._providers = tuple(providers)

    async def totals(self) -> dict[str, int]:
        """Every counter since the start: tasks (summed over the shards) and provider outcomes."""
        keys = [self._keys.shard(s).totals for s in range(self._shards)]
        keys += [self._keys.provider_totals(p) for p in self._providers]
        with storage_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(key)
                found = await pipe.execute()
        total: Counter[str] = Counter()
        for counts in found:
            total.update({field: int(value) for field, value in counts.items()})
        return dict(total)

    async def window(self, now: float, window_s: float, tenant: str | None = None) -> tuple[dict[str, int], float]:
        """Counters merged over the minutes of the last `window_s` seconds (of all tasks, or of one tenant's),
        and where the window starts."""
        minutes, since = await self.minutes(now, window_s, tenant)
        return merge(minutes), since

    async def minutes(self, now: float, window_s: float, tenant: str | None = None) -> tuple[list[dict[str, int]], float]:
        """The counters of each minute of the last `window_s` seconds, oldest first, and where the window starts."""
        last = int(now // 60)
        first = last - max(1, math.ceil(window_s / 60)) + 1
        with storage_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                for minute in range(first, last + 1):
                    for shard in range(self._shards):
                        pipe.hgetall(self._keys.shard(shard).stats(minute, tenant))
                hashes = await pipe.execute()
        per_minute = [merge(hashes[i:i + self._shards]) for i in range(0, len(hashes), self._shards)]
        return per_minute, first * 60.0


def finished_task(record: TaskRecord) -> FinishedTask:
    """What analytics counts of a task that reached a final state. A delayed task's latencies count from its
    not_before (or, cancelled before it, from its acceptance)."""
    finished_at = record.finished_at or record.created_at
    not_before = record.not_before or 0.0
    ready_at = max(record.created_at, not_before if not_before <= finished_at else 0.0)
    usage = record.result.get("usage") if isinstance(record.result, dict) else None
    tokens = usage.get("total_tokens", 0) if isinstance(usage, dict) else 0
    return FinishedTask(
        worker_type=record.worker_type, tool=record.tool, tenant=record.tenant, agent=record.agent,
        status=record.status.value,
        e2e_ms=(finished_at - ready_at) * 1000,
        wait_ms=record.queue_wait_ms, run_ms=record.run_ms,
        retries=max(0, record.attempts - 1 - record.preemptions), preemptions=record.preemptions,
        tokens=tokens if isinstance(tokens, int) else 0,
    )
