"""The task store: the `mcp_tasks` stream, task records and their state changes, each one atomic Lua step."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestrator.adapters.keys import ROUTER_GROUP, Keys
from orchestrator.errors import QueueFullError, TaskNotCancellableError, TaskNotFoundError
from orchestrator.models import TaskRecord, TaskStatus
from orchestrator.settings import RedisSettings
from orchestrator.tasks import TaskSpec

logger = logging.getLogger(__name__)

JSON_FIELDS = ("input", "context", "result", "error", "progress", "checkpoint", "resumed_from")
FLOAT_FIELDS = ("created_at", "started_at", "first_started_at", "finished_at", "deadline", "preempted_at")
INT_FIELDS = ("priority", "attempts", "preemptions", "restarts")

# Accept a task: idempotency check, backpressure, record, stream entry — all or nothing.
# KEYS: stream, record, active, idempotency  ARGV: task_id, max_active, idem_ttl (0 = no key),
#       priority, type, payload, time, agent, then the record's field/value pairs.
_SUBMIT = """
if tonumber(ARGV[3]) > 0 then
  local existing = redis.call('GET', KEYS[4])
  if existing then return {existing, 1} end
end
local active = tonumber(redis.call('GET', KEYS[3]) or '0')
if active >= tonumber(ARGV[2]) then return {false, active} end
local record = {}
for i = 9, #ARGV do record[#record + 1] = ARGV[i] end
redis.call('HSET', KEYS[2], unpack(record))
local entry = redis.call('XADD', KEYS[1], '*', 'task_id', ARGV[1], 'priority', ARGV[4], 'type', ARGV[5],
  'payload', ARGV[6], 'time', ARGV[7], 'agent', ARGV[8])
redis.call('HSET', KEYS[2], 'entry_id', entry)
redis.call('INCR', KEYS[3])
if tonumber(ARGV[3]) > 0 then redis.call('SET', KEYS[4], ARGV[1], 'EX', ARGV[3]) end
return {ARGV[1], 0}
"""

# Shared by the scripts that end a task. Their KEYS start with: record, stream, active, finished-channel.
_FINALIZE = """
local function finalize(status, now, group, retention_s)
  redis.call('HSET', KEYS[1], 'status', status, 'finished_at', now)
  redis.call('EXPIRE', KEYS[1], retention_s)
  local entry = redis.call('HGET', KEYS[1], 'entry_id')
  if entry then redis.call('XACK', KEYS[2], group, entry) end
  redis.call('DECR', KEYS[3])
  redis.call('PUBLISH', KEYS[4], redis.call('HGET', KEYS[1], 'task_id'))
end
"""

# Start an attempt. Returns {attempt, checkpoint} or {0, status} when the task must not run
# (finished, or cancelled meanwhile — a cancel flagged while its worker was lost ends it here);
# then its entry is acknowledged here. A tool that cannot resume gets no checkpoint, and the record
# counts the restart.
# KEYS: record, stream, active, finished-channel  ARGV: worker, now, group, resumable (1/0), retention_s
_START = _FINALIZE + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, 'missing'} end
if status ~= 'queued' and status ~= 'running' and status ~= 'preempted' then
  local entry = redis.call('HGET', KEYS[1], 'entry_id')
  if entry then redis.call('XACK', KEYS[2], ARGV[3], entry) end
  return {0, status}
end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  finalize('cancelled', ARGV[2], ARGV[3], ARGV[5])
  return {0, 'cancelled'}
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[1], 'started_at', ARGV[2])
if not redis.call('HGET', KEYS[1], 'first_started_at') then redis.call('HSET', KEYS[1], 'first_started_at', ARGV[2]) end
local checkpoint = redis.call('HGET', KEYS[1], 'checkpoint')
if not checkpoint then return {attempt, ''} end
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], 'resumed_from', checkpoint)
  return {attempt, checkpoint}
end
redis.call('HINCRBY', KEYS[1], 'restarts', 1)
redis.call('HDEL', KEYS[1], 'checkpoint', 'resumed_from')
return {attempt, ''}
"""

# Preempted: the attempt ends without a result; the task waits to resume (its entry stays pending).
# KEYS: record  ARGV: attempt, now
_PREEMPT = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' or redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'preempted', 'preempted_at', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'preemptions', 1)
return 1
"""

# Store a final state, fenced by attempt: a stale attempt's late result is refused.
# KEYS: record, stream, active, finished-channel  ARGV: attempt, status, now, retention_s, group, field/value pairs
_FINISH = _FINALIZE + """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' or redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[1] then return 0 end
if #ARGV > 5 then
  local fields = {}
  for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', KEYS[1], unpack(fields))
end
finalize(ARGV[2], ARGV[3], ARGV[5], ARGV[4])
return 1
"""

# Fenced update of a running attempt's progress and/or checkpoint.  KEYS: record  ARGV: attempt, field/value pairs
_UPDATE = """
if redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'status') ~= 'running' then
  return 0
end
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
return 1
"""

# Cancel: a queued (or preempted, waiting) task is cancelled at once; a running one is flagged for its worker.
# KEYS: record, stream, active, finished-channel  ARGV: now, retention_s, group
_CANCEL = _FINALIZE + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status == 'queued' or status == 'preempted' then
  finalize('cancelled', ARGV[1], ARGV[3], ARGV[2])
  return 'cancelled'
end
if status == 'running' then redis.call('HSET', KEYS[1], 'cancel_requested', '1') end
return status
"""


@dataclass(frozen=True, slots=True)
class Started:
    attempt: int
    checkpoint: Mapping[str, Any] | None


def connect(settings: RedisSettings) -> aioredis.Redis:
    """A client that retries transient connection errors with backoff instead of failing the caller.

    The pool blocks when all connections are busy (redis-py's default pool raises instead), so a
    burst of concurrent requests queues for a connection rather than failing.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.url,
        max_connections=settings.max_connections,
        timeout=settings.pool_timeout_s,
        decode_responses=True,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=15,
        socket_connect_timeout=5,
    )
    return aioredis.Redis.from_pool(pool)


class TaskStore:
    def __init__(self, client: aioredis.Redis, settings: RedisSettings) -> None:
        self.redis = client
        self.keys = Keys(settings.prefix)
        self._settings = settings
        self._submit = client.register_script(_SUBMIT)
        self._start = client.register_script(_START)
        self._finish = client.register_script(_FINISH)
        self._update = client.register_script(_UPDATE)
        self._cancel = client.register_script(_CANCEL)
        self._preempt = client.register_script(_PREEMPT)

    @classmethod
    def from_settings(cls, settings: RedisSettings) -> TaskStore:
        return cls(connect(settings), settings)

    async def aclose(self) -> None:
        await self.redis.aclose()

    # --- ingress side -------------------------------------------------------------------------

    async def submit(self, task: TaskSpec, max_active: int, retry_after_s: float) -> tuple[str, bool]:
        """Accept a task durably; returns (task_id, duplicate). Raises QueueFullError."""
        k = self.keys
        idem_key = k.idempotency(task.idempotency_key) if task.idempotency_key else k.idempotency("")
        idem_ttl = self._settings.idempotency_ttl_s if task.idempotency_key else 0
        record = _encode_record(
            {
                "task_id": task.task_id, "status": TaskStatus.QUEUED.value, "tool": task.tool,
                "worker_type": task.worker_type, "priority": task.priority, "prompt": task.prompt,
                "input": task.input, "context": task.context, "agent": task.agent, "attempts": 0,
                "created_at": task.created_at, "deadline": task.deadline,
                "idempotency_key": task.idempotency_key,
            }
        )
        task_id, flag = await self._submit(
            keys=[k.tasks, k.task(task.task_id), k.active, idem_key],
            args=[task.task_id, max_active, idem_ttl, task.priority, task.worker_type, task.payload(),
                  repr(task.created_at), task.agent or "", *record],
        )
        if task_id is None:
            raise QueueFullError(int(flag), max_active, retry_after_s)
        return task_id, bool(flag)

    async def get(self, task_id: str) -> TaskRecord:
        raw = await self.redis.hgetall(self.keys.task(task_id))
        if not raw:
            raise TaskNotFoundError(task_id)
        return _decode_record(raw)

    async def cancel(self, task_id: str, now: float) -> TaskStatus:
        """Cancel a queued task now, or flag a running one; returns the status after."""
        k = self.keys
        status = await self._cancel(
            keys=[k.task(task_id), k.tasks, k.active, k.finished],
            args=[repr(now), self._settings.retention_s, ROUTER_GROUP],
        )
        if status is None:
            raise TaskNotFoundError(task_id)
        if status not in (TaskStatus.CANCELLED, TaskStatus.RUNNING):  # only finished ones remain
            raise TaskNotCancellableError(task_id, status)
        return TaskStatus(status)

    async def counts(self) -> dict[str, int]:
        """Stream length, entries delivered but not acknowledged, and accepted unfinished tasks."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(k.tasks)
            pipe.get(k.active)
            length, active = await pipe.execute()
        try:
            pending = (await self.redis.xpending(k.tasks, ROUTER_GROUP))["pending"]
        except ResponseError:  # no group yet
            pending = 0
        return {"stream_length": int(length), "stream_pending": int(pending), "active_tasks": int(active or 0)}

    # --- router side ----------------------------------------------------------------------------

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.keys.tasks, ROUTER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, consumer: str, *, count: int, block_ms: int | None, pending: bool = False) -> list[TaskSpec]:
        """New entries for this consumer, or (pending=True) those delivered to it and never acknowledged."""
        reply = await self.redis.xreadgroup(
            ROUTER_GROUP, consumer, {self.keys.tasks: "0" if pending else ">"}, count=count, block=block_ms
        )
        tasks: list[TaskSpec] = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                if fields:  # a pending entry trimmed away reads back empty
                    tasks.append(TaskSpec.from_entry(entry_id, fields))
        return tasks

    async def trim(self) -> int:
        """Drop acknowledged entries; never one still pending or not yet delivered."""
        k = self.keys
        groups = await self.redis.xinfo_groups(k.tasks)
        group = next((g for g in groups if g["name"] == ROUTER_GROUP), None)
        if group is None:
            return 0
        floor = group["last-delivered-id"]
        summary = await self.redis.xpending(k.tasks, ROUTER_GROUP)
        if summary["pending"]:
            floor = min(floor, summary["min"], key=_entry_order)
        return int(await self.redis.xtrim(k.tasks, minid=floor, approximate=False))

    # --- worker side ----------------------------------------------------------------------------

    async def start(self, task_id: str, worker: str, now: float, resumable: bool) -> Started | None:
        """Begin a new attempt (its number is the fencing token); None when the task must not run."""
        k = self.keys
        attempt, extra = await self._start(
            keys=[k.task(task_id), k.tasks, k.active, k.finished],
            args=[worker, repr(now), ROUTER_GROUP, int(resumable), self._settings.retention_s],
        )
        if not attempt:
            logger.info("task not started", extra={"task_id": task_id, "status": extra})
            return None
        return Started(int(attempt), json.loads(extra) if extra else None)

    async def update(self, task_id: str, attempt: int, **fields: Any) -> bool:
        """Record progress and/or a checkpoint, only while `attempt` is the current one."""
        return bool(await self._update(keys=[self.keys.task(task_id)], args=[attempt, *_encode_record(fields)]))

    async def finish(self, task_id: str, attempt: int, status: TaskStatus, now: float, **fields: Any) -> bool:
        """Store the final state once; False when `attempt` is stale or the task already finished."""
        k = self.keys
        return bool(
            await self._finish(
                keys=[k.task(task_id), k.tasks, k.active, k.finished],
                args=[attempt, status.value, repr(now), self._settings.retention_s, ROUTER_GROUP,
                      *_encode_record(fields)],
            )
        )

    async def preempt(self, task_id: str, attempt: int, now: float) -> bool:
        """End a running attempt as preempted (fenced); the router requeues the task."""
        return bool(await self._preempt(keys=[self.keys.task(task_id)], args=[attempt, repr(now)]))


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _encode_record(fields: Mapping[str, Any]) -> list[str]:
    """Flatten to HSET pairs: JSON fields as JSON, floats exactly, None left out."""
    flat: list[str] = []
    for name, value in fields.items():
        if value is None:
            continue
        flat += [name, _dumps(value) if name in JSON_FIELDS else repr(value) if isinstance(value, float) else str(value)]
    return flat


def _decode_record(raw: Mapping[str, str]) -> TaskRecord:
    data: dict[str, Any] = {name: json.loads(raw[name]) for name in JSON_FIELDS if name in raw}
    for name in ("task_id", "status", "tool", "worker_type", "prompt", "agent", "worker", "idempotency_key"):
        if name in raw:
            data[name] = raw[name]
    for name in FLOAT_FIELDS:
        if name in raw:
            data[name] = float(raw[name])
    for name in INT_FIELDS:
        if name in raw:
            data[name] = int(raw[name])
    if "first_started_at" in data:
        data["queue_wait_ms"] = round((data.pop("first_started_at") - data["created_at"]) * 1000, 3)
    if "finished_at" in data and "started_at" in data:
        data["run_ms"] = round((data["finished_at"] - data["started_at"]) * 1000, 3)
    data.pop("checkpoint", None)
    data.pop("preempted_at", None)
    return TaskRecord.model_validate(data)
