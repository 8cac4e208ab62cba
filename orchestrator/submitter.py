"""Submits coalesced: every run_task made in one turn of the event loop (the members of a JSON-RPC batch, or
concurrent requests) is accepted with one script call per shard — one Redis round trip for a batch."""

from __future__ import annotations

import asyncio
import itertools
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace

from orchestrator import tracing
from orchestrator.adapters.coalescer import Coalescer
from orchestrator.adapters.task_store import Submission, TaskStore
from orchestrator.errors import OrchestratorError
from orchestrator.settings import QuotaSettings, Settings


def keyed_shard(tenant: str | None, idempotency_key: str | None, shards: int) -> int:
    """The shard of a tenant's tasks (no key: a tenant with a quota has one), or of one idempotency key's."""
    name = (tenant or "") if idempotency_key is None else f"{tenant or ''}:{idempotency_key}"
    return zlib.crc32(name.encode()) % shards


class Submitter:
    def __init__(self, store: TaskStore, settings: Settings, clock: Callable[[], float]) -> None:
        self._store, self._settings, self._clock = store, settings, clock
        self._turn: Coalescer[Submission, tuple[str, bool] | OrchestratorError] = Coalescer(self._accept)
        self._turns = itertools.count(1)
        self._shard = 0

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
        """Accept one task (with its children) durably; (task_id, duplicate). Raises what refused it.

        With tracing on, the durable write is a span, and the task (its children too) carries that span's
        context for the worker to continue."""
        with tracing.span("submit", kind=tracing.SpanKind.PRODUCER) as span:
            traceparent = tracing.traceparent()
            if traceparent is not None:
                task = submission.task
                submission = replace(submission, task=replace(task, traceparent=traceparent),
                                     children=[replace(c, traceparent=traceparent) for c in submission.children])
                if span.is_recording():
                    span.set_attributes({"orchestrator.task.id": task.task_id, "orchestrator.task.tool": task.tool,
                                         "orchestrator.task.priority": task.priority,
                                         "orchestrator.task.children": len(submission.children)})
            outcome = await self._turn(submission)
            if isinstance(outcome, OrchestratorError):
                raise outcome
            if span.is_recording():
                span.set_attribute("orchestrator.task.duplicate", outcome[1])
            return outcome

    async def _accept(self, items: Sequence[Submission]) -> list[tuple[str, bool] | OrchestratorError]:
        """One turn's submits: one script call per shard, concurrently."""
        self._shard = next(self._turns) % self._store.shards
        by_shard: dict[int, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            by_shard[int(item.task.task_id.partition("-")[0])].append(i)
        limits = self._settings.limits
        replies = await asyncio.gather(*(
            self._store.submit(shard, [items[i] for i in indices], self._clock(), limits.max_active_tasks,
                               limits.queue_full_retry_after_s, self._settings.router.preempt_threshold)
            for shard, indices in by_shard.items()))
        outcomes: list[tuple[str, bool] | OrchestratorError] = [("", False)] * len(items)
        for indices, shard_outcomes in zip(by_shard.values(), replies, strict=True):
            for i, outcome in zip(indices, shard_outcomes, strict=True):
                outcomes[i] = outcome
        return outcomes
