"""Saga state in Redis: one JSON document per saga, rewritten after every transition, and the set of
unfinished sagas a restarted coordinator resumes."""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from orchestrator.adapters.keys import Keys
from orchestrator.adapters.scripts import Scripts
from orchestrator.adapters.task_store import storage_errors
from orchestrator.errors import QuotaExceededError, SagaNotFoundError
from orchestrator.saga import SagaState
from orchestrator.settings import QuotaSettings
from orchestrator.submitter import keyed_shard


class SagaStore:
    def __init__(self, client: aioredis.Redis, prefix: str, retention_s: int, idempotency_ttl_s: int,
                 shards: int = 1) -> None:
        self._redis = client
        self._shards = shards
        self._keys = Keys(prefix)
        self._retention_s = retention_s
        self._idempotency_ttl_s = idempotency_ttl_s
        self._scripts = Scripts(client)

    async def create(self, state: SagaState, idempotency_key: str | None,
                     quota: QuotaSettings | None = None) -> tuple[str, bool]:
        """Store a new saga; with a key its tenant already used, the earlier saga's id and True instead.

        Args:
            quota: the tenant's, whose submit rate (shared with run_task) the saga counts against; None: not
                limited.
        Raises QuotaExceededError.
        """
        idempotency = self._keys.saga_idempotency(idempotency_key or "", state.tenant)
        with storage_errors():
            earlier = await self._redis.get(idempotency) if idempotency_key else None
            if earlier is not None:  # a retry finds its saga, whatever the rate
                return earlier, True
            limits = quota or QuotaSettings()
            if state.tenant and limits.submits_per_s:
                meter = self._keys.shard(keyed_shard(state.tenant, None, self._shards)).tenant_submits
                wait = await self._scripts.run("admit", {"meter": meter}, {
                    "tenant": state.tenant, "rate": limits.submits_per_s, "burst": limits.submit_burst})
                if wait is not None:
                    raise QuotaExceededError(state.tenant, "submits_per_s", limits.submits_per_s, round(float(wait), 3))
            saga_id, duplicate = await self._scripts.run(
                "saga_create", {"idempotency": idempotency, "saga": self._keys.saga(state.saga_id),
                                "active": self._keys.active_sagas},
                {"saga_id": state.saga_id, "state": _stored(state), "has_key": "1" if idempotency_key else "0",
                 "idempotency_ttl_s": self._idempotency_ttl_s})
            if state.rerun_of is not None and not duplicate:
                await self._link_rerun(state.rerun_of, saga_id)
        return saga_id, bool(duplicate)

    async def _link_rerun(self, original_id: str, saga_id: str) -> None:
        """Name the new saga in the list of the original's reruns, expiring with the original."""
        reruns = self._keys.saga_reruns(original_id)
        async with self._redis.pipeline(transaction=True) as tx:
            tx.rpush(reruns, saga_id)
            tx.expire(reruns, self._retention_s)
            await tx.execute()

    async def save(self, state: SagaState) -> None:
        """Persist a transition; a finished saga leaves the active set and expires after the retention."""
        key = self._keys.saga(state.saga_id)
        with storage_errors():
            async with self._redis.pipeline(transaction=True) as tx:
                if state.status.finished:
                    tx.set(key, _stored(state), ex=self._retention_s)
                    tx.srem(self._keys.active_sagas, state.saga_id)
                    tx.srem(self._keys.cancelled_sagas, state.saga_id)
                else:
                    tx.set(key, _stored(state))
                    tx.sadd(self._keys.active_sagas, state.saga_id)
                await tx.execute()

    async def load(self, saga_id: str) -> SagaState:
        with storage_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(self._keys.saga(saga_id))
                pipe.lrange(self._keys.saga_reruns(saga_id), 0, -1)
                raw, reruns = await pipe.execute()
        if raw is None:
            raise SagaNotFoundError(saga_id)
        state = SagaState.model_validate_json(raw)
        state.reruns = list(reruns)
        return state

    async def request_cancel(self, saga_id: str) -> bool:
        """Record a cancel request durably (a restarted coordinator still sees it); False if the saga is not
        running any more. Atomic with `save`: a saga that settles leaves no request behind."""
        with storage_errors():
            async with self._redis.pipeline(transaction=True) as tx:
                tx.sismember(self._keys.active_sagas, saga_id)
                tx.sadd(self._keys.cancelled_sagas, saga_id)
                active, _ = await tx.execute()
            if not active:
                await self._redis.srem(self._keys.cancelled_sagas, saga_id)
        return bool(active)

    async def cancel_requested(self, saga_id: str) -> bool:
        with storage_errors():
            return bool(await self._redis.sismember(self._keys.cancelled_sagas, saga_id))

    async def active(self) -> list[str]:
        with storage_errors():
            return sorted(await self._redis.smembers(self._keys.active_sagas))

    async def dead_letter(self, saga_id: str, step: str, reason: str, now: float) -> None:
        """A compensation that gave up: kept for an operator, with why."""
        fields = {"saga_id": saga_id, "step": step, "reason": reason, "at": json.dumps(now)}
        with storage_errors():
            await self._redis.xadd(self._keys.saga_dead_letters, fields, maxlen=10_000, approximate=True)

    async def dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        with storage_errors():
            entries = await self._redis.xrevrange(self._keys.saga_dead_letters, count=count)
        return [dict(fields) for _, fields in entries]


def _stored(state: SagaState) -> str:
    """The saga's JSON as stored; its reruns are kept beside it (each rerun appends itself without rewriting the
    original's state) and read back by `load`."""
    return state.model_dump_json(exclude={"reruns"})
