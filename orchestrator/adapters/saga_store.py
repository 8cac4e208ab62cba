"""Saga state in Redis: one JSON document per saga, rewritten after every transition, and the set of
unfinished sagas a restarted coordinator resumes."""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from orchestrator.adapters.keys import Keys
from orchestrator.adapters.task_scripts import METER
from orchestrator.adapters.task_store import storage_errors
from orchestrator.errors import QuotaExceededError, SagaNotFoundError
from orchestrator.saga import SagaState
from orchestrator.settings import QuotaSettings

# KEYS: idempotency key (or ""), saga, active set, tenants' submit meters
# ARGV: saga id, state JSON, idempotency TTL, tenant ('' = none), its submits per second (0 = no quota), burst
# → {saga id that holds the key (ours, or an earlier saga's), 1 when it was an earlier one}, or
#   {false, seconds to wait} when the tenant submits faster than its quota
CREATE = METER + """
if KEYS[1] ~= '' then
  local existing = redis.call('GET', KEYS[1])
  if existing then return {existing, 1} end
end
if ARGV[4] ~= '' and tonumber(ARGV[5]) > 0 then
  local wait = meter_submit(KEYS[4], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]))
  if wait then return {false, tostring(wait)} end
end
if KEYS[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[3])) end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[1])
return {ARGV[1], 0}
"""


class SagaStore:
    def __init__(self, client: aioredis.Redis, prefix: str, retention_s: int, idempotency_ttl_s: int) -> None:
        self._redis = client
        self._keys = Keys(prefix)
        self._retention_s = retention_s
        self._idempotency_ttl_s = idempotency_ttl_s
        self._create = client.register_script(CREATE)

    async def create(self, state: SagaState, idempotency_key: str | None,
                     quota: QuotaSettings | None = None) -> tuple[str, bool]:
        """Store a new saga; with a key its tenant already used, the earlier saga's id and True instead.

        Args:
            quota: the tenant's, whose submit rate the saga counts against; None: not limited.
        Raises QuotaExceededError.
        """
        limits = quota or QuotaSettings()
        keys = [self._keys.saga_idempotency(idempotency_key, state.tenant) if idempotency_key else "",
                self._keys.saga(state.saga_id), self._keys.active_sagas, self._keys.tenant_submits]
        args = [state.saga_id, state.model_dump_json(), self._idempotency_ttl_s, state.tenant or "",
                limits.submits_per_s or 0, limits.submit_burst]
        with storage_errors():
            saga_id, figure = await self._create(keys=keys, args=args)
        if saga_id is None:
            raise QuotaExceededError(state.tenant or "", "submits_per_s", limits.submits_per_s or 0,
                                     round(float(figure), 3))
        return saga_id, bool(figure)

    async def save(self, state: SagaState) -> None:
        """Persist a transition; a finished saga leaves the active set and expires after the retention."""
        key = self._keys.saga(state.saga_id)
        with storage_errors():
            async with self._redis.pipeline(transaction=True) as tx:
                if state.status.finished:
                    tx.set(key, state.model_dump_json(), ex=self._retention_s)
                    tx.srem(self._keys.active_sagas, state.saga_id)
                    tx.srem(self._keys.cancelled_sagas, state.saga_id)
                else:
                    tx.set(key, state.model_dump_json())
                    tx.sadd(self._keys.active_sagas, state.saga_id)
                await tx.execute()

    async def load(self, saga_id: str) -> SagaState:
        with storage_errors():
            raw = await self._redis.get(self._keys.saga(saga_id))
        if raw is None:
            raise SagaNotFoundError(saga_id)
        return SagaState.model_validate_json(raw)

    async def request_cancel(self, saga_id: str) -> None:
        with storage_errors():
            await self._redis.sadd(self._keys.cancelled_sagas, saga_id)

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
