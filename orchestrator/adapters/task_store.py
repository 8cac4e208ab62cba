"""The task store: the `mcp_tasks` stream, task records and their state changes, each one atomic Lua step."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestrator.adapters import task_scripts as scripts
from orchestrator.adapters.keys import ROUTER_GROUP, Keys
from orchestrator.errors import (
    QueueFullError,
    QuotaExceededError,
    StorageUnavailableError,
    TaskNotCancellableError,
    TaskNotFoundError,
)
from orchestrator.models import TaskRecord, TaskStatus
from orchestrator.settings import QuotaSettings, RedisSettings
from orchestrator.tasks import TaskSpec

logger = logging.getLogger(__name__)

JSON_FIELDS = ("input", "context", "result", "error", "progress", "checkpoint", "resumed_from", "children")
FLOAT_FIELDS = ("created_at", "started_at", "first_started_at", "finished_at", "deadline", "preempted_at")
INT_FIELDS = ("priority", "attempts", "preemptions", "restarts", "checkpoints")
TEXT_FIELDS = ("task_id", "status", "tool", "worker_type", "prompt", "agent", "tenant", "worker", "idempotency_key",
               "last_failure", "dead_letter", "parent")


@dataclass(frozen=True, slots=True)
class Started:
    attempt: int
    checkpoint: Mapping[str, Any] | None
    corrected_input: Mapping[str, Any] | None = None  # set by `inject`: replaces the input in the stream entry


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


@contextmanager
def storage_errors() -> Iterator[None]:
    """Redis unreachable after the client's retries → StorageUnavailableError (retryable, -32005)."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise StorageUnavailableError(type(exc).__name__) from exc


class TaskStore:
    def __init__(self, client: aioredis.Redis, settings: RedisSettings) -> None:
        self.redis = client
        self.keys = Keys(settings.prefix)
        self._settings = settings
        self._scripts = {name: client.register_script(getattr(scripts, name)) for name in scripts.NAMES}

    @classmethod
    def from_settings(cls, settings: RedisSettings) -> TaskStore:
        return cls(connect(settings), settings)

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def _run(self, script: str, task_id: str, now: float, *args: Any, keys: Sequence[str] = (),
                   children: Sequence[str] = ()) -> Any:
        """Run a task script with the KEYS and leading ARGV every one of them takes."""
        with storage_errors():
            return await self._scripts[script](
                keys=[*self.keys.of_task(task_id), *keys, *self.keys.of_children(children)],
                args=[repr(now), ROUTER_GROUP, self._settings.retention_s, *args],
            )

    # --- ingress side -------------------------------------------------------------------------

    async def submit(self, task: TaskSpec, max_active: int, retry_after_s: float,
                     children: Sequence[TaskSpec] = (), quota: QuotaSettings | None = None) -> tuple[str, bool]:
        """Accept a task (and its fanout children, waiting for it) durably; returns (task_id, duplicate).

        Args:
            quota: the task's tenant's quota, checked in the same step; None: not limited.
        Raises QueueFullError, QuotaExceededError.
        """
        key, tenant = task.idempotency_key, task.tenant or ""
        limits = quota or QuotaSettings()
        child_records = [_initial_record(c, TaskStatus.WAITING) + ["payload", c.payload()] for c in children]
        task_id, *refusal = await self._run(
            "SUBMIT", task.task_id, task.created_at,
            task.task_id, max_active, self._settings.idempotency_ttl_s if key else 0, task.priority,
            task.worker_type, task.payload(), task.agent or "", tenant, limits.max_active_tasks or 0,
            limits.submits_per_s or 0, limits.submit_burst, json.dumps(child_records),
            *_initial_record(task, TaskStatus.QUEUED),
            keys=[self.keys.idempotency(key or "", task.tenant), self.keys.tenant_submits], children=task.children,
        )
        if task_id is not None:
            return task_id, bool(refusal[0])
        kind, figure = refusal
        if kind == "queue_full":
            raise QueueFullError(int(figure), max_active, retry_after_s)
        if kind == "max_active_tasks":
            raise QuotaExceededError(tenant, kind, limits.max_active_tasks or 0, retry_after_s)
        raise QuotaExceededError(tenant, kind, limits.submits_per_s or 0, round(float(figure), 3))

    async def get(self, task_id: str) -> TaskRecord:
        with storage_errors():
            raw = await self.redis.hgetall(self.keys.task(task_id))
        if not raw:
            raise TaskNotFoundError(task_id)
        return _decode_record(raw)

    async def cancel(self, task_id: str, now: float, children: Sequence[str] = ()) -> TaskStatus:
        """Cancel a queued task now (and its waiting children), or flag a running one; returns the status after."""
        status = await self._run("CANCEL", task_id, now, children=children)
        if status is None:
            raise TaskNotFoundError(task_id)
        if status not in (TaskStatus.CANCELLED, TaskStatus.RUNNING):  # only finished ones remain
            raise TaskNotCancellableError(task_id, status)
        return TaskStatus(status)

    async def counts(self) -> dict[str, int]:
        """Stream length, entries delivered but not acknowledged, and accepted unfinished tasks."""
        k = self.keys
        with storage_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xlen(k.tasks)
                pipe.get(k.active)
                length, active = await pipe.execute()
            try:
                pending = (await self.redis.xpending(k.tasks, ROUTER_GROUP))["pending"]
            except ResponseError:  # no group yet
                pending = 0
        return {"stream_length": int(length), "stream_pending": int(pending), "active_tasks": int(active or 0)}

    async def pool_plan(self) -> tuple[dict[str, int], set[str]]:
        """Pool sizes wanted and paused worker types, as operators (or the SLA policy) left them."""
        with storage_errors():
            sizes = await self.redis.hgetall(self.keys.pool_sizes)
            paused = await self.redis.smembers(self.keys.paused_pools)
        return {k: int(v) for k, v in sizes.items()}, set(paused)

    async def save_pool_size(self, worker_type: str, workers: int) -> None:
        with storage_errors():
            await self.redis.hset(self.keys.pool_sizes, worker_type, workers)

    async def save_paused(self, worker_type: str, paused: bool) -> None:
        with storage_errors():
            if paused:
                await self.redis.sadd(self.keys.paused_pools, worker_type)
            else:
                await self.redis.srem(self.keys.paused_pools, worker_type)

    async def save_sla_targets(self, worker_type: str, targets: Mapping[str, Any]) -> None:
        with storage_errors():
            await self.redis.hset(self.keys.sla_targets, worker_type, _dumps(dict(targets)))

    async def sla_targets(self) -> dict[str, dict[str, Any]]:
        with storage_errors():
            raw = await self.redis.hgetall(self.keys.sla_targets)
        return {worker_type: json.loads(targets) for worker_type, targets in raw.items()}

    async def save_sla_state(self, worker_type: str, state: Mapping[str, Any]) -> None:
        with storage_errors():
            await self.redis.hset(self.keys.sla_state, worker_type, _dumps(dict(state)))

    async def sla_state(self) -> dict[str, Any]:
        with storage_errors():
            raw = await self.redis.hgetall(self.keys.sla_state)
        return {worker_type: json.loads(state) for worker_type, state in raw.items()}

    async def audit(self, who: str, action: str, details: Mapping[str, Any], now: float) -> None:
        """Record an operator action (kept: the last 10,000)."""
        fields = {"who": who, "action": action, "details": _dumps(dict(details)), "time": repr(now)}
        with storage_errors():
            await self.redis.xadd(self.keys.audit, fields, maxlen=10_000, approximate=True)

    async def audit_log(self, count: int) -> list[dict[str, Any]]:
        with storage_errors():
            entries = await self.redis.xrevrange(self.keys.audit, count=count)
        return [{"id": entry_id, "who": f["who"], "action": f["action"], "details": json.loads(f["details"]),
                 "time": float(f["time"])} for entry_id, f in entries]

    async def events(self, task_id: str, after: str, block_ms: int | None) -> list[tuple[str, dict[str, str]]]:
        """The task's events after the event id `after` ("0" = from the start); blocks up to `block_ms`."""
        with storage_errors():
            reply = await self.redis.xread({self.keys.events(task_id): after}, count=500, block=block_ms)
        return [(entry_id, fields) for _stream, entries in reply or [] for entry_id, fields in entries]

    # --- dead letters -----------------------------------------------------------------------------

    async def dead_letters(self, count: int) -> list[dict[str, Any]]:
        """The oldest `count` dead letters: task id, reason, attempts, time."""
        with storage_errors():
            entries = await self.redis.xrange(self.keys.dead_letters, count=count)
        return [{"id": i, "task_id": f["task_id"], "reason": f["reason"], "attempts": int(f["attempts"]),
                 "time": float(f["time"])} for i, f in entries]

    async def requeue(self, task_id: str, now: float) -> bool:
        """Put a dead-lettered task back in the queue with a fresh allowance of attempts."""
        record = await self.get(task_id)
        task = TaskSpec(task_id=task_id, tool=record.tool, worker_type=record.worker_type, priority=record.priority,
                        input=record.input, context=record.context, prompt=record.prompt, agent=record.agent,
                        tenant=record.tenant, deadline=record.deadline, idempotency_key=record.idempotency_key,
                        created_at=record.created_at)
        return bool(await self._run("REQUEUE", task_id, now, task.priority, task.worker_type, task.payload(),
                                    task.agent or "", task.tenant or ""))

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

    async def idle_entries(self, min_idle_ms: int, count: int = 1000) -> list[str]:
        """Pending entries nobody has touched (delivered, or heartbeated) for `min_idle_ms` (XPENDING IDLE)."""
        rows = await self.redis.xpending_range(self.keys.tasks, ROUTER_GROUP, min="-", max="+", count=count,
                                               idle=min_idle_ms)
        return [row["message_id"] for row in rows]

    async def claim(self, consumer: str, entry_ids: Sequence[str]) -> list[TaskSpec]:
        """Take over pending entries (XCLAIM), e.g. ones a lost router incarnation had read."""
        if not entry_ids:
            return []
        entries = await self.redis.xclaim(self.keys.tasks, ROUTER_GROUP, consumer, 0, list(entry_ids))
        return [TaskSpec.from_entry(entry_id, fields) for entry_id, fields in entries if fields]

    async def note_failure(self, task_id: str, reason: str, now: float) -> None:
        await self._run("NOTE_FAILURE", task_id, now, reason)

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

    async def start(self, task_id: str, worker: str, now: float, resumable: bool, max_attempts: int,
                    children: Sequence[str] = ()) -> Started | None:
        """Begin a new attempt (its number is the fencing token); None when the task must not run."""
        attempt, extra, *corrected = await self._run("START", task_id, now, worker, int(resumable), max_attempts,
                                                     children=children)
        if not attempt:
            logger.info("task not started", extra={"task_id": task_id, "why": extra})
            return None
        corrected_input = json.loads(corrected[0]) if corrected and corrected[0] else None
        return Started(int(attempt), json.loads(extra) if extra else None, corrected_input)

    async def correct(self, task_id: str, now: float, who: str, priority: int | None,
                      task_input: Mapping[str, Any] | None) -> str:
        """Correct a task not yet started; 'corrected', or the status that prevented it."""
        outcome = await self._run("CORRECT", task_id, now, "" if priority is None else priority,
                                  "" if task_input is None else _dumps(dict(task_input)), who)
        return str(outcome)

    async def heartbeat(self, consumer: str, entry_ids: Sequence[str], worker: str, where: Mapping[str, Any]) -> None:
        """Show a worker and its tasks are alive: XCLAIM ... JUSTID resets the entries' idle time without
        counting a delivery; the worker's pid and node are kept for the sweep."""
        async with self.redis.pipeline(transaction=False) as pipe:
            if entry_ids:
                pipe.xclaim(self.keys.tasks, ROUTER_GROUP, consumer, 0, list(entry_ids), justid=True)
            pipe.hset(self.keys.workers, worker, _dumps(where))
            await pipe.execute()

    async def worker_location(self, worker: str) -> dict[str, Any] | None:
        """Where a worker last said it runs: {"pid", "node", "time"}."""
        raw = await self.redis.hget(self.keys.workers, worker)
        return json.loads(raw) if raw else None

    async def update(self, task_id: str, attempt: int, now: float, *, progress: Any = None,
                     checkpoint: Any = None) -> bool:
        """Record progress and/or a checkpoint, only while `attempt` is the current one."""
        return bool(await self._run(
            "UPDATE", task_id, now, attempt, "" if progress is None else _dumps(progress),
            "" if checkpoint is None else _dumps(checkpoint), self._settings.max_checkpoints,
        ))

    async def preempt(self, task_id: str, attempt: int, now: float) -> bool:
        """End a running attempt as preempted (fenced); the router requeues the task."""
        return bool(await self._run("PREEMPT", task_id, now, attempt))

    async def finish(self, task_id: str, attempt: int, status: TaskStatus, now: float, *, result: Any = None,
                     error: Any = None, children: Sequence[str] = ()) -> bool:
        """Store the final state once (and release or cancel the fanout children); False when `attempt`
        is stale or the task already finished."""
        return bool(await self._run(
            "FINISH", task_id, now, attempt, status.value, "" if result is None else _dumps(result),
            "" if error is None else _dumps(error), children=children,
        ))


def _initial_record(task: TaskSpec, status: TaskStatus) -> list[str]:
    return _encode_record({
        "task_id": task.task_id, "status": status.value, "tool": task.tool, "worker_type": task.worker_type,
        "priority": task.priority, "prompt": task.prompt, "input": task.input, "context": task.context,
        "agent": task.agent, "tenant": task.tenant, "attempts": 0, "created_at": task.created_at,
        "deadline": task.deadline,
        "idempotency_key": task.idempotency_key, "parent": task.parent, "children": list(task.children) or None,
    })


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
    for name in TEXT_FIELDS:
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
    data.pop("preempted_at", None)
    return TaskRecord.model_validate(data)
