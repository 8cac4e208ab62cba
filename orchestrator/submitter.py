"""Submits coalesced: every run_task made in one turn of the event loop (the members of a JSON-RPC batch, or
concurrent requests) is accepted with one script call per shard — one Redis round trip for a batch."""

from __future__ import annotations

import asyncio
import itertools
import zlib
from collections import defaultdict
from collections.abc import Callable

from orchestrator.adapters.task_store import Submission, TaskStore
from orchestrator.errors import OrchestratorError
from orchestrator.settings import QuotaSettings, Settings

Pending = tuple[Submission, "asyncio.Future[tuple[str, bool]]"]


def keyed_shard(tenant: str | None, idempotency_key: str | None, shards: int) -> int:
    """The shard of a tenant's tasks (no key: a tenant with a quota has one), or of one idempotency key's."""
    name = tenant or "" if idempotency_key is None else f"{tenant or ''}:{idempotency_key}"
    return zlib.crc32(name.encode()) % shards


class Submitter:
    def __init__(self, store: TaskStore, settings: Settings, clock: Callable[[], float]) -> None:
        self._store, self._settings, self._clock = store, settings, clock
        self._pending: dict[int, list[Pending]] = defaultdict(list)
        self._turns = itertools.count()
        self._shard = 0
        self._flushing: set[asyncio.Task[None]] = set()

    def shard_for(self, tenant: str | None, idempotency_key: str | None, quota: QuotaSettings | None) -> int:
        """Where a new task goes. A tenant with a quota keeps all its tasks in one shard, so the quota is checked
        atomically; a task with an idempotency key goes where a retry will look; others spread, a shard per
        turn (a batch stays one script call)."""
        shards = self._store.shards
        if shards == 1:
            return 0
        pinned = bool(tenant and quota is not None and (quota.max_active_tasks or quota.submits_per_s))
        if pinned or idempotency_key:
            return keyed_shard(tenant, None if pinned else idempotency_key, shards)
        return self._shard

    async def submit(self, submission: Submission) -> tuple[str, bool]:
        """Accept one task (with its children) durably; (task_id, duplicate). Raises what refused it."""
        future: asyncio.Future[tuple[str, bool]] = asyncio.get_running_loop().create_future()
        shard = int(submission.task.task_id.partition("-")[0])
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending[shard].append((submission, future))
        return await future

    def _flush(self) -> None:
        batches, self._pending = self._pending, defaultdict(list)
        self._shard = next(self._turns) % self._store.shards
        for shard, batch in batches.items():
            task = asyncio.create_task(self._accept(shard, batch))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _accept(self, shard: int, batch: list[Pending]) -> None:
        limits = self._settings.limits
        try:
            outcomes = await self._store.submit(shard, [s for s, _f in batch], self._clock(), limits.max_active_tasks,
                                                limits.queue_full_retry_after_s, self._settings.router.preempt_threshold)
        except Exception as exc:
            for _s, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_s, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, OrchestratorError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
