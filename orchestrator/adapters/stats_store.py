"""Analytics counters in Redis: one hash per minute, incremented as tasks finish, merged per query."""

from __future__ import annotations

import logging
import math

import redis.asyncio as aioredis

from orchestrator.adapters.keys import Keys
from orchestrator.adapters.task_store import storage_errors
from orchestrator.analytics import FinishedTask, counters, merge
from orchestrator.models import TaskRecord

logger = logging.getLogger(__name__)

RETENTION_S = 2 * 86_400  # longer than the longest window a query may ask for

# One round trip and one command however many counters a task moves (a pipeline of HINCRBYs cost the
# worker more CPU than the task). KEYS: minute hashes, then the totals hash. ARGV: retention, then
# field/increment pairs.
RECORD = """
for k = 1, #KEYS do
  for i = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[k], ARGV[i], ARGV[i + 1]) end
  if k < #KEYS then redis.call('EXPIRE', KEYS[k], ARGV[1]) end
end
"""


class StatsStore:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._redis = client
        self._keys = Keys(prefix)
        self._record = client.register_script(RECORD)

    async def record(self, task: FinishedTask, now: float) -> None:
        """Count one finished task, in all tasks' figures and its tenant's own; best effort (a lost sample must
        never fail or delay a task)."""
        minute = int(now // 60)
        minutes = [self._keys.stats(minute)] + ([self._keys.stats(minute, task.tenant)] if task.tenant else [])
        increments = [item for pair in counters(task).items() for item in pair]
        try:
            await self._record(keys=[*minutes, self._keys.totals], args=[RETENTION_S, *increments])
        except Exception:
            logger.warning("analytics sample lost", extra={"tool": task.tool}, exc_info=True)

    async def totals(self) -> dict[str, int]:
        """Every counter since the start (tasks and provider outcomes)."""
        with storage_errors():
            raw = await self._redis.hgetall(self._keys.totals)
        return {field: int(value) for field, value in raw.items()}

    async def window(self, now: float, window_s: float, tenant: str | None = None) -> tuple[dict[str, int], float]:
        """Counters merged over the minutes of the last `window_s` seconds (of all tasks, or of one tenant's),
        and where the window starts."""
        last = int(now // 60)
        first = last - max(1, math.ceil(window_s / 60)) + 1
        with storage_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                for minute in range(first, last + 1):
                    pipe.hgetall(self._keys.stats(minute, tenant))
                minutes = await pipe.execute()
        return merge(minutes), first * 60.0


def finished_task(record: TaskRecord) -> FinishedTask:
    """What analytics counts of a task that reached a final state."""
    finished_at = record.finished_at or record.created_at
    usage = record.result.get("usage") if isinstance(record.result, dict) else None
    tokens = usage.get("total_tokens", 0) if isinstance(usage, dict) else 0
    return FinishedTask(
        worker_type=record.worker_type, tool=record.tool, tenant=record.tenant, agent=record.agent,
        status=record.status.value,
        e2e_ms=(finished_at - record.created_at) * 1000,
        wait_ms=record.queue_wait_ms, run_ms=record.run_ms,
        retries=max(0, record.attempts - 1 - record.preemptions), preemptions=record.preemptions,
        tokens=tokens if isinstance(tokens, int) else 0,
    )
