"""Schedules in Redis: one hash per schedule (its definition as JSON text, never decoded by a script, beside its
runtime fields), the sorted set of when each active one is due, and each one's latest fires."""

from __future__ import annotations

import json
from collections.abc import Sequence

import redis.asyncio as aioredis

from orchestrator.adapters.keys import Keys
from orchestrator.adapters.scripts import Scripts
from orchestrator.adapters.task_store import storage_errors
from orchestrator.codec import dumps, to_ms
from orchestrator.errors import QuotaExceededError, ScheduleNotFoundError
from orchestrator.models import ScheduleRun, ScheduleSpec, ScheduleState

KEEP_RUNS = 20  # fires kept per schedule for `get_schedule`


class ScheduleStore:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._redis = client
        self._keys = Keys(prefix)
        self._scripts = Scripts(client)

    async def create(self, schedule_id: str, spec: ScheduleSpec, first_tick: float, now: float,
                     max_per_tenant: int) -> None:
        """Store a schedule, due at its first tick. Raises QuotaExceededError when its tenant has its limit."""
        k = self._keys
        with storage_errors():
            stored = await self._scripts.run(
                "schedule_create",
                {"schedule": k.schedule(schedule_id), "due": k.schedules_due, "listed": k.schedules_of(spec.tenant),
                 "tenants": k.schedule_tenants},
                {"schedule_id": schedule_id, "spec": spec.model_dump_json(), "tenant": spec.tenant or "",
                 "next_ms": to_ms(first_tick), "created_ms": to_ms(now), "max_per_tenant": max_per_tenant})
        if int(stored) < 0:
            raise QuotaExceededError(spec.tenant or "", "max_schedules", max_per_tenant, 60)

    async def get(self, schedule_id: str) -> ScheduleState:
        k = self._keys
        with storage_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(k.schedule(schedule_id))
                pipe.lrange(k.schedule_runs(schedule_id), 0, -1)
                fields, runs = await pipe.execute()
        if "spec" not in fields:  # (a pause racing a delete may leave a stray field)
            raise ScheduleNotFoundError(schedule_id)
        return ScheduleState(
            schedule_id=schedule_id, spec=ScheduleSpec.model_validate_json(fields["spec"]),
            paused=fields["paused"] == "1", next_ms=int(fields["next_ms"]), last_task=fields.get("last_task"),
            fired=int(fields["fired"]), skipped=int(fields["skipped"]), created_at=int(fields["created_ms"]) / 1000,
            runs=[ScheduleRun(tick=tick_ms / 1000, task_id=task_id) for tick_ms, task_id in map(json.loads, runs)])

    async def listed(self, tenants: Sequence[str | None] | None) -> list[str]:
        """The ids of the schedules of `tenants` (None: every tenant's), newest first."""
        k = self._keys
        with storage_errors():
            if tenants is None:
                tenants = [t or None for t in await self._redis.smembers(k.schedule_tenants)]
            async with self._redis.pipeline(transaction=False) as pipe:
                for tenant in tenants:
                    pipe.zrange(k.schedules_of(tenant), 0, -1, withscores=True)
                pages = await pipe.execute()
        return [schedule_id for schedule_id, _ in sorted((row for page in pages for row in page),
                                                         key=lambda row: -row[1])]

    async def holds(self, holder: str) -> bool:
        """Whether `holder` still holds the pools lease (checked before firing: a firer that lost it fires
        nothing; the advance checks it again, atomically)."""
        with storage_errors():
            return bool(await self._redis.get(self._keys.pool_lease) == holder)

    async def due(self, now: float, count: int) -> list[str]:
        """Active schedules whose next tick has come, most overdue first."""
        with storage_errors():
            return list(await self._redis.zrangebyscore(self._keys.schedules_due, "-inf", to_ms(now), 0, count))

    async def advance(self, state: ScheduleState, next_tick: float, runs: Sequence[ScheduleRun], skipped: int,
                      holder: str) -> int:
        """Record fires and move the schedule on (see schedule_advance.lua): 1, 0 (it moved meanwhile) or -1
        (fenced: `holder` lost the pools lease)."""
        k = self._keys
        with storage_errors():
            return int(await self._scripts.run(
                "schedule_advance",
                {"schedule": k.schedule(state.schedule_id), "due": k.schedules_due,
                 "runs": k.schedule_runs(state.schedule_id), "lease": k.pool_lease},
                {"schedule_id": state.schedule_id, "expected_ms": str(state.next_ms), "next_ms": to_ms(next_tick),
                 "runs_json": dumps([dumps([to_ms(run.tick), run.task_id]) for run in runs]), "fired": len(runs),
                 "skipped": skipped, "last_task": runs[-1].task_id if runs else "", "holder": holder,
                 "keep_runs": KEEP_RUNS}))

    async def pause(self, schedule_id: str) -> None:
        k = self._keys
        with storage_errors():
            async with self._redis.pipeline(transaction=True) as tx:
                tx.hset(k.schedule(schedule_id), "paused", "1")
                tx.zrem(k.schedules_due, schedule_id)
                await tx.execute()

    async def resume(self, schedule_id: str, next_tick: float) -> None:
        """Active again from `next_tick` (the ticks that fell while it was paused never fire)."""
        k = self._keys
        with storage_errors():
            async with self._redis.pipeline(transaction=True) as tx:
                tx.hset(k.schedule(schedule_id), mapping={"paused": "0", "next_ms": to_ms(next_tick)})
                tx.zadd(k.schedules_due, {schedule_id: to_ms(next_tick)})
                await tx.execute()

    async def delete(self, state: ScheduleState) -> None:
        """Gone: it fires no more (a fire in progress stands; its advance finds nothing)."""
        k = self._keys
        with storage_errors():
            async with self._redis.pipeline(transaction=True) as tx:
                tx.delete(k.schedule(state.schedule_id), k.schedule_runs(state.schedule_id))
                tx.zrem(k.schedules_due, state.schedule_id)
                tx.zrem(k.schedules_of(state.spec.tenant), state.schedule_id)
                await tx.execute()
