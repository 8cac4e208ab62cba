"""The task store: tasks in sharded Redis queues, their records and state changes, each one atomic Lua step.

A shard holds, for every worker type, a queue per priority (sorted sets in fair order), the task records, a
delivery stream whose pending entries show which worker holds which attempt, and the counters. Workers take
from the queues and settle what they ran, many tasks per script; nothing is kept in a process's memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoScriptError, OutOfMemoryError, ResponseError

from orchestrator import codec
from orchestrator.adapters.coalescer import Coalescer
from orchestrator.adapters.keys import PRIORITIES, WORKER_GROUP, Keys, ShardKeys
from orchestrator.adapters.redis_connect import UNAVAILABLE_ERRORS, connect
from orchestrator.adapters.scripts import Scripts
from orchestrator.codec import Event
from orchestrator.errors import (
    DeadLetterError,
    OrchestratorError,
    ParentFailedError,
    QueueFullError,
    QuotaExceededError,
    StorageUnavailableError,
    TaskNotCancellableError,
    TaskNotFoundError,
)
from orchestrator.listing import END_MS, Position, ShardPage, merge
from orchestrator.models import TaskRecord, TaskStatus, TaskSummary
from orchestrator.settings import QuotaSettings, RedisSettings
from orchestrator.tasks import TaskSpec, shard_of

logger = logging.getLogger(__name__)

AGING_CAP = 9  # aging lifts a task up to this priority, below the urgent 10


@dataclass(frozen=True, slots=True)
class Submission:
    task: TaskSpec
    children: Sequence[TaskSpec] = ()
    quota: QuotaSettings | None = None  # the tenant's, checked in the same step; None: not limited


@dataclass(frozen=True, slots=True)
class Taken:
    """An attempt a worker took: the task, its attempt number (fencing token), its delivery entry."""

    task: TaskSpec
    attempt: int
    entry_id: str
    shard: int
    checkpoint: Mapping[str, Any] | None  # to resume from
    first_started_at: float
    preemptions: int
    attempts_base: int
    inputs: Mapping[str, Any] = field(default_factory=dict)  # answers to its requests for input, by key
    input_rounds: int = 0  # attempts that ended asking for input (not counted as used up)

    @property
    def retries(self) -> int:
        """Attempts before this one that were lost (not preempted, not ended asking for input, not forgiven)."""
        return max(0, self.attempt - 1 - self.preemptions - self.attempts_base - self.input_rounds)


@dataclass(frozen=True, slots=True)
class TakeResult:
    taken: list[Taken]
    settled: list[TaskRecord]  # finished on the way (cancel requested, dead letter): to count
    duplicate: bool  # the same take was already answered: read the pending entries instead


@dataclass(frozen=True, slots=True)
class Held:
    """A delivery pending under a worker: which attempt of which task."""

    entry_id: str
    task_id: str
    attempt: int
    idle_ms: int = 0


@contextmanager
def storage_errors() -> Iterator[None]:
    """Redis unreachable after the client's retries → StorageUnavailableError (retryable, -32005)."""
    try:
        yield
    except UNAVAILABLE_ERRORS as exc:
        raise StorageUnavailableError(type(exc).__name__) from exc


def redis_client(settings: RedisSettings) -> Any:
    """A client for the configured server or cluster, with the configured pool and timeouts."""
    return connect(settings.url, max_connections=settings.max_connections, pool_timeout_s=settings.pool_timeout_s,
                   socket_timeout_s=settings.socket_timeout_s)


class TaskStore:
    def __init__(self, client: Any, settings: RedisSettings) -> None:
        self.redis = client
        self.keys = Keys(settings.prefix)
        self.shards = settings.shards
        self._settings = settings
        self._scripts = Scripts(client)
        self._reads: Coalescer[str, str | None] = Coalescer(self.get_many)
        # A cluster client has no pool that makes callers queue: past max_connections on a node a call fails.
        self._calls = asyncio.Semaphore(settings.max_connections)

    @classmethod
    def from_settings(cls, settings: RedisSettings) -> TaskStore:
        return cls(redis_client(settings), settings)

    async def aclose(self) -> None:
        await self.redis.aclose()

    def shard_keys(self, shard: int) -> ShardKeys:
        return self.keys.shard(shard)

    def _shard_of(self, task_id: str) -> int:
        shard = shard_of(task_id, self.shards)
        if shard is None:
            raise TaskNotFoundError(task_id)
        return shard

    async def _run(self, name: str, shard: int, now: float, args: Mapping[str, Any], *, client: Any = None,
                   keys: Mapping[str, str] | None = None) -> Any:
        """Run a task script on one shard, with the common ARGV every one of them takes."""
        k = self.keys.shard(shard)
        common = {"tag": k.tag, "now": codec.to_ms(now), "prefix": self.keys.prefix,
                  "retention_s": self._settings.retention_s, "max_events": self._settings.max_events}
        with storage_errors():
            if client is not None:  # queued on a pipeline: it holds no connection of its own
                return await self._scripts.run(name, keys or {"active": k.active}, {**common, **args}, client=client)
            async with self._calls:
                return await self._scripts.run(name, keys or {"active": k.active}, {**common, **args})

    async def _pipeline(self, build: Callable[[Any], Awaitable[None]]) -> list[Any]:
        """Run the commands `build` queues in one round trip; once again if a server had lost the scripts (every
        script queued this way is idempotent)."""
        for retry in (False, True):
            async with self.redis.pipeline(transaction=False) as pipe:
                await build(pipe)
                try:
                    with storage_errors():
                        return list(await pipe.execute())
                except NoScriptError:
                    if retry:
                        raise
                    self._scripts.forget()
        raise AssertionError("unreachable")

    async def ensure_groups(self) -> None:
        """Every shard's delivery stream and its consumer group (workers read as consumers of it)."""
        for shard in range(self.shards):
            try:
                with storage_errors():
                    await self.redis.xgroup_create(self.keys.shard(shard).stream, WORKER_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # --- ingress side -------------------------------------------------------------------------

    async def submit(self, shard: int, items: Sequence[Submission], now: float, max_active: int,
                     retry_after_s: float, urgent_priority: int) -> list[tuple[str, bool] | OrchestratorError]:
        """Accept tasks of one shard durably, each all or nothing; per task (task_id, duplicate) or the error
        that refused it (QueueFullError, QuotaExceededError).

        Args:
            max_active: the whole store's limit of unfinished tasks (each shard takes its share).
        """
        per_shard = -(-max_active // self.shards)
        payload = [[codec.submitted(s.task, accepted_status(s.task)), s.task.idempotency_key or "",
                    self._settings.idempotency_ttl_s, (s.quota.max_active_tasks or 0) if s.quota else 0,
                    (s.quota.submits_per_s or 0) if s.quota else 0, s.quota.submit_burst if s.quota else 1,
                    [codec.submitted(c, TaskStatus.WAITING) for c in s.children]] for s in items]
        try:
            replies = await self._run("submit", shard, now, {"items": codec.dumps(payload), "max_active": per_shard,
                                                               "urgent_priority": urgent_priority})
        except OutOfMemoryError:  # refused before it ran: nothing was written
            logger.warning("Redis is out of memory; refusing submits")
            return [QueueFullError(-1, max_active, retry_after_s) for _ in items]
        outcomes: list[tuple[str, bool] | OrchestratorError] = []
        for item, reply in zip(items, replies, strict=True):
            task_id, *rest = reply
            if task_id is not None:
                outcomes.append((task_id, bool(rest[0])))
                continue
            kind, figure = rest
            quota = item.quota or QuotaSettings()
            tenant = item.task.tenant or ""
            if kind == "queue_full":
                outcomes.append(QueueFullError(int(figure), max_active, retry_after_s))
            elif kind == "max_active_tasks":
                outcomes.append(QuotaExceededError(tenant, kind, quota.max_active_tasks or 0, retry_after_s))
            else:
                outcomes.append(QuotaExceededError(tenant, kind, quota.submits_per_s or 0, round(float(figure), 3)))
        return outcomes

    async def raw(self, task_id: str) -> str:
        """The task's stored JSON record (lookups made together are read in one round trip)."""
        self._shard_of(task_id)
        text = await self._reads(task_id)
        if text is None:
            raise TaskNotFoundError(task_id)
        return str(text)

    async def keyed(self, shard: int, tenant: str | None, idempotency_key: str) -> str | None:
        """The id of the tenant's task accepted with this idempotency key in this shard, if any (and unexpired)."""
        with storage_errors():
            found = await self.redis.get(self.shard_keys(shard).keyed(tenant, idempotency_key))
        return None if found is None else str(found)

    async def get(self, task_id: str) -> TaskRecord:
        return codec.record_of(await self.raw(task_id))

    async def get_many(self, task_ids: Sequence[str]) -> list[str | None]:
        """Stored records of many tasks (None where missing), in one round trip."""
        with storage_errors():
            async with self._calls, self.redis.pipeline(transaction=False) as pipe:
                for task_id in task_ids:
                    shard = shard_of(task_id, self.shards)
                    pipe.get(self.keys.shard(shard if shard is not None else 0).task(task_id))
                return list(await pipe.execute())

    async def history(self, task_id: str) -> list[Event]:
        """The task's events, oldest first."""
        return codec.history_of(await self.raw(task_id))

    async def cancel(self, task_id: str, now: float, stats: str) -> TaskStatus:
        """Cancel a task not running now (its waiting children too), or flag a running one; the status after.

        Args:
            stats: analytics counters to add if it is cancelled here (see `stats_store.stats_arg`).
        """
        status = await self._run("cancel", self._shard_of(task_id), now, {
            "task_id": task_id, "stats": stats, "parent_failed_code": ParentFailedError.code})
        if status is None:
            raise TaskNotFoundError(task_id)
        if status not in (TaskStatus.CANCELLED, TaskStatus.RUNNING):  # only finished ones remain
            raise TaskNotCancellableError(task_id, status)
        return TaskStatus(status)

    async def correct(self, task_id: str, now: float, who: str, priority: int | None,
                      task_input: Mapping[str, Any] | None) -> str:
        """Correct a task not yet started; 'corrected', or the status that prevented it."""
        return str(await self._run("correct", self._shard_of(task_id), now, {
            "task_id": task_id, "priority": "" if priority is None else priority,
            "input": "" if task_input is None else codec.dumps(dict(task_input)), "who": who}))

    async def provide_input(self, task_id: str, key: str, answer: Mapping[str, Any], now: float
                            ) -> tuple[str, TaskStatus, list[str]]:
        """Store an answer to a pending request for input (queuing the task once none is left); (outcome, status
        after, keys still pending): outcome `stored`, `duplicate` (this very answer was stored before) or
        `not_expected` (nothing changed)."""
        reply = await self._run("provide_input", self._shard_of(task_id), now, {
            "task_id": task_id, "key": key, "answer": codec.dumps(dict(answer))})
        if not reply:
            raise TaskNotFoundError(task_id)
        outcome, status, pending = reply
        return str(outcome), TaskStatus(status), [str(k) for k in pending or []]

    async def link_rerun(self, task_id: str, rerun_id: str, now: float) -> None:
        """Name `rerun_id` among the reruns of `task_id` (idempotent; nothing if the original expired)."""
        await self._run("link_rerun", self._shard_of(task_id), now, {"task_id": task_id, "rerun_id": rerun_id})

    async def requeue(self, task_id: str, now: float) -> bool:
        """Put a dead-lettered task back in the queue with a fresh allowance of attempts."""
        return bool(await self._run("requeue_dead", self._shard_of(task_id), now, {"task_id": task_id}))

    async def list_tasks(self, query: TaskQuery) -> tuple[list[TaskSummary], Position | None]:
        """A page of tasks newest first, from every shard's indexes (merged by creation time), and the position
        the next page starts after (None: no more)."""
        args = query.args()

        async def build(pipe: Any) -> None:
            for shard in range(self.shards):
                await self._run("list_tasks", shard, 0, args, client=pipe)

        pages = [_shard_page(reply) for reply in await self._pipeline(build)]
        return merge(pages, query.limit)

    async def prune_index(self, shard: int, now: float, count: int = 1000, rounds: int = 10) -> int:
        """Drop finished tasks whose records expired from the shard's indexes, `count` per script (a short
        block), at most `rounds` times; how many."""
        pruned = 0
        for _ in range(rounds):
            step = int(await self._run("prune_index", shard, now, {"count": count}))
            pruned += step
            if step < count:
                break
        return pruned

    async def dead_letters(self, count: int) -> list[dict[str, Any]]:
        """The oldest `count` dead letters of every shard: task id, reason, attempts, time."""
        with storage_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for shard in range(self.shards):
                    pipe.xrange(self.keys.shard(shard).dead_letters, count=count)
                found = [entry for entries in await pipe.execute() for entry in entries]
        letters = [{"id": i, "task_id": f["task_id"], "reason": f["reason"], "attempts": int(f["attempts"]),
                    "time": int(f["time"]) / 1000} for i, f in found]
        return sorted(letters, key=lambda d: d["time"])[:count]

    async def counts(self) -> dict[str, int]:
        """Attempts being delivered (stream entries), those pending under a worker, and unfinished tasks."""
        with storage_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for shard in range(self.shards):
                    k = self.keys.shard(shard)
                    pipe.xlen(k.stream)
                    pipe.get(k.active)
                replies = await pipe.execute()
        length = sum(int(n or 0) for n in replies[0::2])
        active = sum(int(n or 0) for n in replies[1::2])
        return {"stream_length": length, "stream_pending": length, "active_tasks": active}

    async def depths(self, worker_types: Sequence[str]) -> dict[str, dict[int, int]]:
        """Queued tasks per worker type × priority (the priority matrix), over every shard."""
        with storage_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for worker_type in worker_types:
                    for priority in PRIORITIES:
                        for shard in range(self.shards):
                            pipe.zcard(self.keys.shard(shard).level(worker_type, priority))
                replies = iter(await pipe.execute())
        matrix: dict[str, dict[int, int]] = {}
        for worker_type in worker_types:
            row = {p: sum(int(next(replies)) for _ in range(self.shards)) for p in PRIORITIES}
            matrix[worker_type] = {p: n for p, n in row.items() if n}
        return matrix

    async def scheduled(self, worker_types: Sequence[str]) -> dict[str, int]:
        """Delayed tasks not yet due per worker type, over every shard."""
        with storage_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for worker_type in worker_types:
                    for shard in range(self.shards):
                        pipe.zcard(self.keys.shard(shard).due(worker_type))
                replies = iter(await pipe.execute())
        return {t: sum(int(next(replies)) for _ in range(self.shards)) for t in worker_types}

    async def promote(self, shard: int, worker_types: Sequence[str], now: float, limit: int,
                      urgent_priority: int) -> tuple[int, float | None]:
        """Queue a shard's delayed tasks come due (at most `limit` per worker type); how many, and when the next
        one left is due (None: none is scheduled)."""
        promoted, next_due = await self._run("promote", shard, now, {
            "worker_types": codec.dumps(list(worker_types)), "limit": limit, "urgent_priority": urgent_priority})
        return int(promoted), None if next_due is None else int(next_due) / 1000

    # --- operator state (single keys) ----------------------------------------------------------

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
            await self.redis.publish(self.keys.control, "paused")

    async def paused(self) -> set[str]:
        with storage_errors():
            return set(await self.redis.smembers(self.keys.paused_pools))

    async def save_sla_targets(self, worker_type: str, targets: Mapping[str, Any]) -> None:
        with storage_errors():
            await self.redis.hset(self.keys.sla_targets, worker_type, codec.dumps(dict(targets)))

    async def sla_targets(self) -> dict[str, dict[str, Any]]:
        with storage_errors():
            raw = await self.redis.hgetall(self.keys.sla_targets)
        return {worker_type: json.loads(targets) for worker_type, targets in raw.items()}

    async def save_sla_state(self, worker_type: str, state: Mapping[str, Any]) -> None:
        with storage_errors():
            await self.redis.hset(self.keys.sla_state, worker_type, codec.dumps(dict(state)))

    async def sla_state(self) -> dict[str, Any]:
        with storage_errors():
            raw = await self.redis.hgetall(self.keys.sla_state)
        return {worker_type: json.loads(state) for worker_type, state in raw.items()}

    async def audit(self, who: str, action: str, details: Mapping[str, Any], now: float) -> None:
        """Record an operator action (kept: the last 10,000)."""
        fields = {"who": who, "action": action, "details": codec.dumps(dict(details)), "time": repr(now)}
        with storage_errors():
            await self.redis.xadd(self.keys.audit, fields, maxlen=10_000, approximate=True)

    async def audit_log(self, count: int) -> list[dict[str, Any]]:
        with storage_errors():
            entries = await self.redis.xrevrange(self.keys.audit, count=count)
        return [{"id": entry_id, "who": f["who"], "action": f["action"], "details": json.loads(f["details"]),
                 "time": float(f["time"])} for entry_id, f in entries]

    # --- worker side ----------------------------------------------------------------------------

    async def take(self, request: TakeRequest, now: float) -> TakeResult:
        """Start up to `count` queued tasks of a worker type for a worker, in queue order."""
        return self._taken(request.shard, await self._run("take", request.shard, now, request.args()))

    def _taken(self, shard: int, reply: Sequence[Any]) -> TakeResult:
        taken, settled, duplicate = reply
        return TakeResult([taken_of(shard, *t) for t in taken], [codec.record_of(r) for r in settled], bool(duplicate))

    async def peek(self, worker_type: str, now: float, aging_interval_s: float) -> list[tuple[int, tuple[int, ...]]]:
        """(shard, rank) of every shard with tasks of `worker_type` queued, best first."""
        async def build(pipe: Any) -> None:
            for shard in range(self.shards):
                await self._run("peek", shard, now, {"worker_type": worker_type, "cap": AGING_CAP,
                                                     "aging_ms": codec.to_ms(aging_interval_s)}, client=pipe)

        ranks = await self._pipeline(build)
        found = [(shard, tuple(int(x) for x in rank)) for shard, rank in enumerate(ranks) if rank]
        return sorted(found, key=lambda found_rank: found_rank[1], reverse=True)

    async def settle(self, shard: int, items: Sequence[Settlement], now: float, stats: str = "") -> list[int]:
        """Record progress, checkpoints, preemptions and final states of attempts (fenced); per item 1 stored,
        2 stored before by this attempt, 0 refused as stale."""
        return list(await self._run("settle", shard, now, _settle_args(items, stats)))

    async def cycle(self, settles: Mapping[int, tuple[Sequence[Settlement], str]], take: TakeRequest | None,
                    now: float) -> tuple[dict[int, list[int]], TakeResult | None]:
        """A worker's round trip: settle what its attempts did (per shard: items and analytics counters) and
        take tasks for its free slots, in one pipeline."""
        async def build(pipe: Any) -> None:
            for shard, (items, stats) in settles.items():
                await self._run("settle", shard, now, _settle_args(items, stats), client=pipe)
            if take is not None:
                await self._run("take", take.shard, now, take.args(), client=pipe)

        replies = await self._pipeline(build)
        settled = {shard: list(reply) for shard, reply in zip(settles, replies, strict=False)}
        return settled, None if take is None else self._taken(take.shard, replies[-1])

    async def held(self, shard: int, worker: str) -> list[Held]:
        """The attempts pending under `worker` in a shard (what it holds, as Redis knows it)."""
        with storage_errors():
            reply = await self.redis.xreadgroup(WORKER_GROUP, worker, {self.keys.shard(shard).stream: "0"}, count=10_000)
        return [Held(entry_id, *codec.entry_task(fields)) for _stream, entries in reply or []
                for entry_id, fields in entries if fields]

    async def requeue_lost(self, shard: int, lost: Sequence[tuple[Held, str]], now: float, holder: str = "") -> int:
        """Put lost attempts' tasks back in the queue (reason noted) and acknowledge their entries; the number
        requeued, or -1 when `holder` no longer holds the shard's lease."""
        k = self.keys.shard(shard)
        items = [[h.task_id, h.attempt, h.entry_id, reason] for h, reason in lost]
        return int(await self._run("requeue_lost", shard, now, {"items": codec.dumps(items), "holder": holder},
                                   keys={"active": k.active, "lease": k.lease}))

    async def heartbeat(self, worker: str, state: Mapping[str, Any], entries: Mapping[int, Sequence[str]]) -> None:
        """Show a worker and its attempts are alive: XCLAIM … JUSTID resets its entries' idle time without
        counting a delivery; its state (pool, slots, running tasks, pid, node, time) is kept for the sweep,
        `status` and the pool manager."""
        with storage_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for shard, ids in entries.items():
                    if ids:
                        pipe.xclaim(self.keys.shard(shard).stream, WORKER_GROUP, worker, 0, list(ids), justid=True)
                pipe.hset(self.keys.workers, worker, codec.dumps(dict(state)))
                await pipe.execute()

    async def save_members(self, members: Mapping[str, Mapping[str, Any]]) -> None:
        """The pool manager's workers, replacing what a previous manager left."""
        with storage_errors():
            async with self.redis.pipeline(transaction=True) as tx:
                tx.delete(self.keys.members)
                if members:
                    tx.hset(self.keys.members, mapping={n: codec.dumps(dict(m)) for n, m in members.items()})
                await tx.execute()

    async def members(self) -> dict[str, dict[str, Any]]:
        with storage_errors():
            raw = await self.redis.hgetall(self.keys.members)
        return {name: json.loads(member) for name, member in raw.items()}

    async def worker_states(self) -> dict[str, dict[str, Any]]:
        with storage_errors():
            raw = await self.redis.hgetall(self.keys.workers)
        return {name: json.loads(state) for name, state in raw.items()}

    async def forget_worker(self, worker: str) -> None:
        """A retired worker: its heartbeat state and its consumer names go."""
        with storage_errors():
            await self.redis.hdel(self.keys.workers, worker)
            for shard in range(self.shards):
                try:
                    await self.redis.xgroup_delconsumer(self.keys.shard(shard).stream, WORKER_GROUP, worker)
                except ResponseError:  # no such stream yet
                    pass

    # --- router side ----------------------------------------------------------------------------

    async def lease(self, key: str, fence: str, name: str, ttl_s: float, action: str = "renew") -> str | None:
        """Acquire or renew (`renew`) or give up (`release`) a lease; its holder value when ours."""
        with storage_errors():
            holder = await self._scripts.run("lease", {"lease": key, "fence": fence},
                                             {"name": name, "ttl_ms": codec.to_ms(ttl_s), "action": action})
        return None if holder is None else str(holder)

    async def router_heartbeat(self, router: str, now: float) -> None:
        with storage_errors():
            await self.redis.hset(self.keys.routers, router, repr(now))

    async def routers_seen(self) -> dict[str, float]:
        """When each router last renewed its leases (by its own clock)."""
        with storage_errors():
            return {name: float(beat) for name, beat in (await self.redis.hgetall(self.keys.routers)).items()}

    async def deliver_outbox(self, shard: int, now: float, count: int = 100) -> int:
        """Deliver a batch of the shard's outbox (children of its tasks living in other shards); how many
        entries were delivered. At least once: an entry is deleted after its delivery, which is idempotent."""
        outbox = self.keys.shard(shard).outbox
        with storage_errors():
            entries = await self.redis.xrange(outbox, count=count)
        for entry_id, fields in entries:
            parent = json.loads(await self.raw(fields["parent"])) if fields["status"] == "succeeded" else {}
            child = fields["child"]
            child_shard = shard_of(child, self.shards)
            if child_shard is not None:
                await self._run("release_child", child_shard, now, {
                    "child_id": child, "parent_id": fields["parent"], "status": fields["status"],
                    "parent_result": parent.get("r", ""), "parent_failed_code": ParentFailedError.code})
            with storage_errors():
                await self.redis.xdel(outbox, entry_id)
        return len(entries)

    async def consumers(self, shard: int) -> list[dict[str, Any]]:
        """The shard stream's consumers (workers) with their pending counts."""
        with storage_errors():
            try:
                return list(await self.redis.xinfo_consumers(self.keys.shard(shard).stream, WORKER_GROUP))
            except ResponseError:  # no stream or group yet
                return []

    async def silent(self, shard: int, worker: str, min_idle_ms: int) -> list[Held]:
        """Attempts pending under `worker` that nothing touched (taken, heartbeated) for `min_idle_ms`."""
        k = self.keys.shard(shard)
        with storage_errors():
            rows = await self.redis.xpending_range(k.stream, WORKER_GROUP, min="-", max="+", count=1000,
                                                   consumername=worker, idle=min_idle_ms)
            if not rows:
                return []
            async with self.redis.pipeline(transaction=False) as pipe:
                for row in rows:
                    pipe.xrange(k.stream, row["message_id"], row["message_id"])
                found = await pipe.execute()
        held: list[Held] = []
        for row, entries in zip(rows, found, strict=True):
            if entries and entries[0][1]:
                held.append(Held(row["message_id"], *codec.entry_task(entries[0][1]), idle_ms=row["time_since_delivered"]))
            else:  # its entry is gone (acknowledged meanwhile): only the pending record is left
                held.append(Held(row["message_id"], "", 0, row["time_since_delivered"]))
        return held

    async def claim_victim(self, task_id: str, now: float) -> tuple[str, int] | None:
        """Mark a running task as a preemption's victim (once); its worker and the attempt claimed, or None if it
        is not running."""
        claimed = await self._run("claim_victim", self._shard_of(task_id), now, {"task_id": task_id})
        return None if claimed is None else (str(claimed[0]), int(claimed[1]))

    async def running(self) -> list[TaskRecord]:
        """Every running task, from every shard."""
        with storage_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for shard in range(self.shards):
                    pipe.zrange(self.keys.shard(shard).running, 0, -1)
                ids = [task_id for found in await pipe.execute() for task_id in found]
        return [codec.record_of(raw) for raw in await self.get_many(ids) if raw is not None]

    async def victims(self, worker_type: str, count: int) -> list[tuple[float, str]]:
        """The best `count` preemption victims of a worker type across shards: (rank, task id), best first."""
        with storage_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for shard in range(self.shards):
                    pipe.zrange(self.keys.shard(shard).victims(worker_type), 0, count - 1, withscores=True)
                found = await pipe.execute()
        ranked = sorted((score, task_id) for entries in found for task_id, score in entries)
        return ranked[:count]


LIST_BUDGET = 300  # records a listing examines per shard per call: the bound of a page's cost (and of its Redis block)


@dataclass(frozen=True, slots=True)
class TaskQuery:
    """What `list_tasks` asks of every shard."""

    tenants: Sequence[str | None] | None  # None: every tenant's
    statuses: Sequence[TaskStatus]  # those to list (all of them when the caller filters none)
    tool: str | None = None
    worker_type: str | None = None
    priority_min: int = 0
    priority_max: int = 10
    created_min_ms: int = 0
    created_max_ms: int = END_MS  # exclusive
    after: Position | None = None
    limit: int = 50
    budget: int = LIST_BUDGET

    def args(self) -> dict[str, Any]:
        tenants = "*" if self.tenants is None else codec.dumps([t or "" for t in self.tenants])
        return {"tenants": tenants, "statuses": codec.dumps([s.value for s in self.statuses]),
                "tool": self.tool or "", "worker_type": self.worker_type or "", "priority_min": self.priority_min,
                "priority_max": self.priority_max, "created_min": self.created_min_ms,
                "created_max": self.created_max_ms, "after_ms": "" if self.after is None else self.after[0],
                "after_id": "" if self.after is None else self.after[1], "limit": self.limit, "budget": self.budget}


def _shard_page(reply: Sequence[Any]) -> ShardPage[TaskSummary]:
    rows, exhausted, floor_ms, floor_id = reply
    summaries = [codec.summary_of(row) for row in rows]
    floor = None if int(exhausted) or not floor_ms else (int(floor_ms), str(floor_id))
    return ShardPage([((codec.to_ms(t.created_at), t.task_id), t) for t in summaries], floor)


@dataclass(frozen=True, slots=True)
class TakePolicy:
    """What a take needs to know of the worker type's tools and the limits."""

    max_attempts: int
    max_preemptions: int
    aging_interval_s: float
    fixed_tools: frozenset[str] = frozenset()  # may not be preempted
    restarting_tools: frozenset[str] = frozenset()  # cannot resume from a checkpoint
    urgent_priority: int = 10  # a delayed task at or above it, promoted by a take, is announced for preemption


@dataclass(frozen=True, slots=True)
class TakeRequest:
    shard: int
    worker_type: str
    worker: str
    count: int
    seq: int  # unique per take of this worker: a retried take is recognised and answered `duplicate`
    policy: TakePolicy

    def args(self) -> dict[str, Any]:
        policy = self.policy
        return {"worker_type": self.worker_type, "count": self.count, "worker": self.worker, "take_seq": str(self.seq),
                "max_attempts": policy.max_attempts, "max_preemptions": policy.max_preemptions,
                "fixed_tools": codec.dumps(dict.fromkeys(policy.fixed_tools, True)),
                "restarting_tools": codec.dumps(dict.fromkeys(policy.restarting_tools, True)),
                "aging_ms": codec.to_ms(policy.aging_interval_s), "cap": AGING_CAP,
                "dead_letter_code": DeadLetterError.code, "parent_failed_code": ParentFailedError.code,
                "urgent_priority": policy.urgent_priority}


def accepted_status(task: TaskSpec) -> TaskStatus:
    """A task's status once accepted: a delayed one is scheduled (even if its time came meanwhile: the next
    promotion queues it), any other queued."""
    return TaskStatus.QUEUED if task.not_before is None else TaskStatus.SCHEDULED


def _settle_args(items: Sequence[Settlement], stats: str) -> dict[str, Any]:
    return {"items": codec.dumps([item.as_args() for item in items]), "stats": stats,
            "parent_failed_code": ParentFailedError.code}


@dataclass(slots=True)
class Settlement:
    """What one attempt did since it was last settled; `outcome` set when it ended."""

    task_id: str
    attempt: int
    outcome: TaskStatus | None = None
    result: Any = None
    error: Any = None
    progress: list[Any] | None = None  # every report since the last settle, oldest first
    checkpoint: Any = None
    has_result: bool = False
    asked: Mapping[str, Any] | None = None  # input_required: the requests, by key

    def as_args(self) -> list[Any]:
        return [self.task_id, self.attempt, self.outcome.value if self.outcome else "",
                codec.dumps(self.result) if self.has_result else "",
                "" if self.error is None else codec.dumps(self.error),
                [codec.dumps(p) for p in self.progress or ()],
                "" if self.checkpoint is None else codec.dumps(self.checkpoint),
                codec.dumps({key: codec.dumps(request) for key, request in (self.asked or {}).items()})]


def taken_of(shard: int, entry_id: str, raw: str, parent_result: str) -> Taken:
    stored = json.loads(raw)
    task = codec.spec_of(stored, json.loads(parent_result) if parent_result else None)
    resumed = stored.get("rf")
    inputs = {key: json.loads(text) for key, text in stored["ia"].items()} if stored.get("ia") else {}
    return Taken(task, int(stored["at"]), entry_id, shard, json.loads(resumed) if resumed else None,
                 stored.get("fs", stored["c"]) / 1000, int(stored.get("pe", 0)), int(stored.get("ab", 0)),
                 inputs, int(stored.get("ir", 0)))
