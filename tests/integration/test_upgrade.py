"""Upgrading a store of the version before shards: a legacy layout written by hand, as the old scripts wrote it,
moved by `migrate_legacy` and read back through the sharded TaskStore — every task once, in its place, with its
fields; a second run and a run without legacy data change nothing; a run stopped halfway is finished by the next."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis

from orchestrator.adapters import migration
from orchestrator.adapters.artifact_store import ArtifactStore
from orchestrator.adapters.migration import UPGRADE_FAILURE, migrate_legacy
from orchestrator.adapters.saga_store import SagaStore
from orchestrator.adapters.stats_store import StatsStore
from orchestrator.adapters.task_store import Settlement, Submission, Taken, TakePolicy, TakeRequest, TaskStore
from orchestrator.models import TaskRecord, TaskStatus
from orchestrator.saga import StepDefinition, WorkflowDefinition, new_saga
from orchestrator.settings import Settings
from orchestrator.submitter import Submitter
from orchestrator.tasks import TaskSpec, new_task_id, shard_of
from tests.support import RedisServer

pytestmark = pytest.mark.integration

SHARDS = 3
RETENTION_S = 3600
POLICY = TakePolicy(max_attempts=1, max_preemptions=3, aging_interval_s=0)  # one attempt: none may be charged twice


# --- the layout before shards, written as its scripts wrote it ---------------------------------------------------

JSON_FIELDS = ("input", "context", "result", "error", "progress", "checkpoint", "resumed_from", "children")
FLOAT_FIELDS = ("created_at", "started_at", "first_started_at", "finished_at", "deadline", "preempted_at")
INT_FIELDS = ("priority", "attempts", "preemptions", "restarts", "checkpoints")
TEXT_FIELDS = ("task_id", "status", "tool", "worker_type", "prompt", "agent", "tenant", "worker", "idempotency_key",
               "last_failure", "dead_letter", "parent")


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def encode_record(fields: Mapping[str, Any]) -> dict[str, str]:
    """The old `_encode_record`: JSON fields as JSON, floats exactly, None left out."""
    return {name: dumps(value) if name in JSON_FIELDS else repr(value) if isinstance(value, float) else str(value)
            for name, value in fields.items() if value is not None}


def decode_record(raw: Mapping[str, str]) -> TaskRecord:
    """The old `_decode_record`: what `get_task` answered before the upgrade."""
    data: dict[str, Any] = {name: json.loads(raw[name]) for name in JSON_FIELDS if name in raw}
    data |= {name: raw[name] for name in TEXT_FIELDS if name in raw}
    data |= {name: float(raw[name]) for name in FLOAT_FIELDS if name in raw}
    data |= {name: int(raw[name]) for name in INT_FIELDS if name in raw}
    if "first_started_at" in data:
        data["queue_wait_ms"] = round((data.pop("first_started_at") - data["created_at"]) * 1000, 3)
    if "finished_at" in data and "started_at" in data:
        data["run_ms"] = round((data["finished_at"] - data["started_at"]) * 1000, 3)
    data.pop("preempted_at", None)
    return TaskRecord.model_validate(data)


@dataclass
class Legacy:
    """Writes keys as the version before shards did (its SUBMIT, START, UPDATE, PREEMPT, FINISH, CANCEL scripts and
    its saga, artifact and analytics stores), each change in one MULTI like the script it stands for (a stream entry's
    id, known only once it is added, is written to the record next)."""

    client: Any
    prefix: str
    ids: dict[str, str] = field(default_factory=dict)  # name in the test → task id

    def key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def task(self, task_id: str) -> str:
        return self.key(f"task:{task_id}")

    async def ensure_group(self) -> None:
        await self.client.xgroup_create(self.key("mcp_tasks"), "routers", id="0", mkstream=True)

    async def submit(self, name: str, priority: int, created_at: float, *, prompt: str | None = None,
                     task_input: dict[str, Any] | None = None, worker_type: str = "reasoning",
                     tenant: str | None = None, agent: str | None = None, idempotency_key: str | None = None,
                     context: dict[str, Any] | None = None, children: tuple[str, ...] = (),
                     ids: tuple[str, ...] = ()) -> str:
        """SUBMIT; `ids`: the task's and its children's ids (default: new ones)."""
        task_id, *child_ids = ids or [uuid.uuid4().hex for _ in range(1 + len(children))]
        self.ids[name] = task_id
        self.ids.update(zip(children, child_ids, strict=True))
        spec: dict[str, Any] = {
            "task_id": task_id, "tool": "echo", "worker_type": worker_type, "priority": priority,
            "input": {"prompt": prompt} if prompt is not None else task_input, "created_at": created_at,
            "context": context or {}, "prompt": prompt, "agent": agent, "tenant": tenant, "deadline": None,
            "idempotency_key": idempotency_key, "parent": None, "children": child_ids}
        record = {"task_id": task_id, "status": "queued", "tool": "echo", "worker_type": worker_type,
                  "priority": priority, "prompt": prompt, "input": spec["input"], "context": spec["context"],
                  "agent": agent, "tenant": tenant, "attempts": 0, "created_at": created_at, "deadline": None,
                  "idempotency_key": idempotency_key, "parent": None, "children": child_ids or None}
        now = repr(created_at)
        async with self.client.pipeline(transaction=True) as tx:
            tx.hset(self.task(task_id), mapping=encode_record(record))
            for child_id in child_ids:
                child = {**record, "task_id": child_id, "status": "waiting", "idempotency_key": None,
                         "parent": task_id, "children": None}
                tx.hset(self.task(child_id), mapping={**encode_record(child),
                                                      "payload": dumps({**spec, "task_id": child_id})})
                tx.xadd(self.key(f"events:{child_id}"), {"type": "waiting", "time": now,
                                                         "data": dumps({"parent": task_id})})
            tx.incrby(self.key("active"), len(child_ids))
            tx.xadd(self.key("mcp_tasks"), {"task_id": task_id, "priority": priority, "type": worker_type,
                                            "payload": dumps(spec), "time": now, "agent": agent or "",
                                            "tenant": tenant or ""})
            tx.incr(self.key("active"))
            if tenant:
                tx.hincrby(self.key("tenants:active"), tenant, 1 + len(child_ids))
            if idempotency_key:
                tx.set(self.key(f"idem@{tenant}:{idempotency_key}" if tenant else f"idem:{idempotency_key}"),
                       task_id, ex=86_400)
            tx.xadd(self.key(f"events:{task_id}"), {"type": "queued", "time": now,
                                                    "data": dumps({"priority": priority})})
            await tx.execute()
        entries = await self.client.xrevrange(self.key("mcp_tasks"), count=1)
        await self.client.hset(self.task(task_id), "entry_id", entries[0][0])
        return task_id

    async def deliver(self) -> None:
        """The router read every entry (pending under its consumer until the task finishes)."""
        await self.client.xreadgroup("routers", "router-0", {self.key("mcp_tasks"): ">"})

    async def start(self, name: str, now: float, worker: str = "reasoning-0") -> int:
        key = self.task(self.ids[name])
        attempt = await self.client.hincrby(key, "attempts", 1)
        checkpoint = await self.client.hget(key, "checkpoint")
        async with self.client.pipeline(transaction=True) as tx:
            tx.hset(key, mapping={"status": "running", "worker": worker, "started_at": repr(now)})
            tx.hsetnx(key, "first_started_at", repr(now))
            if checkpoint:
                tx.hset(key, "resumed_from", checkpoint)
            tx.xadd(self.key(f"events:{self.ids[name]}"), {"type": "running", "time": repr(now), "data": dumps(
                {"attempt": attempt, "worker": worker, "resumed_from": json.loads(checkpoint or "null")})})
            await tx.execute()
        return int(attempt)

    async def update(self, name: str, now: float, attempt: int, checkpoint: Any = None, progress: Any = None) -> None:
        task_id = self.ids[name]
        async with self.client.pipeline(transaction=True) as tx:
            if progress is not None:
                tx.hset(self.task(task_id), "progress", dumps(progress))
                tx.xadd(self.key(f"events:{task_id}"), {"type": "progress", "time": repr(now), "data": dumps(progress)})
            if checkpoint is not None:
                tx.hset(self.task(task_id), "checkpoint", dumps(checkpoint))
                tx.hincrby(self.task(task_id), "checkpoints", 1)
                tx.xadd(self.key(f"ckpt:{task_id}"), {"state": dumps(checkpoint), "attempt": attempt,
                                                      "time": repr(now)}, maxlen=20, approximate=True)
            await tx.execute()

    async def preempt(self, name: str, now: float, attempt: int) -> None:
        task_id = self.ids[name]
        async with self.client.pipeline(transaction=True) as tx:
            tx.hset(self.task(task_id), mapping={"status": "preempted", "preempted_at": repr(now)})
            tx.hincrby(self.task(task_id), "preemptions", 1)
            tx.xadd(self.key(f"events:{task_id}"), {"type": "preempted", "time": repr(now),
                                                    "data": dumps({"attempt": attempt})})
            await tx.execute()

    async def request_cancel(self, name: str) -> None:
        await self.client.hset(self.task(self.ids[name]), "cancel_requested", "1")

    async def finish(self, name: str, status: str, now: float, *, result: Any = None, error: Any = None,
                     dead_reason: str | None = None) -> None:
        """FINISH (a result or an error), or START giving up on a task out of attempts (a dead letter)."""
        task_id = self.ids[name]
        key = self.task(task_id)
        old = await self.client.hgetall(key)
        data: dict[str, Any] = {}
        async with self.client.pipeline(transaction=True) as tx:
            if dead_reason is not None:
                used = int(old["attempts"]) - int(old.get("preemptions", 0)) - int(old.get("attempts_base", 0))
                message = f"gave up after {used} attempts: {dead_reason}"
                tx.xadd(self.key("dead_letters"), {"task_id": task_id, "reason": message, "attempts": used,
                                                   "time": repr(now)})
                error = {"code": -32007, "message": message, "retryable": True}
            if result is not None:
                tx.hset(key, "result", dumps(result))
                data["result"] = result
            if error is not None:
                tx.hset(key, "error", dumps(error))
                data["error"] = error
            tx.hset(key, mapping={"status": status, "finished_at": repr(now)})
            tx.xadd(self.key(f"events:{task_id}"), {"type": status, "time": repr(now), "data": dumps(data)})
            for expiring in (key, self.key(f"events:{task_id}"), self.key(f"ckpt:{task_id}")):
                tx.expire(expiring, RETENTION_S)
            tx.xack(self.key("mcp_tasks"), "routers", old["entry_id"])
            tx.decr(self.key("active"))
            if old.get("tenant"):
                tx.hincrby(self.key("tenants:active"), old["tenant"], -1)
            replies = await tx.execute()
        if dead_reason is not None:
            await self.client.hset(key, "dead_letter", replies[0])
        for child_id in json.loads(old.get("children", "[]")):  # release_children
            child_key = self.task(child_id)
            if status == "succeeded" and await self.client.hget(child_key, "status") == "waiting":
                child = await self.client.hgetall(child_key)
                entry = await self.client.xadd(self.key("mcp_tasks"), {
                    "task_id": child_id, "priority": child["priority"], "type": child["worker_type"],
                    "payload": child["payload"], "time": repr(now), "agent": child.get("agent", ""),
                    "tenant": child.get("tenant", ""), "parent_result": dumps(result)})
                await self.client.hset(child_key, mapping={"status": "queued", "entry_id": entry})
                await self.client.xadd(self.key(f"events:{child_id}"), {"type": "queued", "time": repr(now),
                                                                        "data": dumps({"parent": task_id})})

    async def saga(self, state_json: str, saga_id: str, tenant: str, idempotency_key: str) -> None:
        async with self.client.pipeline(transaction=True) as tx:
            tx.set(self.key(f"saga_idem@{tenant}:{idempotency_key}"), saga_id, ex=86_400)
            tx.set(self.key(f"saga:{saga_id}"), state_json)
            tx.sadd(self.key("sagas:active"), saga_id)
            tx.sadd(self.key("sagas:cancel"), saga_id)
            tx.xadd(self.key("saga_dead_letters"), {"saga_id": saga_id, "step": "deploy", "reason": "gave up",
                                                    "at": "1.5"})
            await tx.execute()

    async def artifact(self, name: str, content: Any) -> None:
        base = self.key(f"artifact:{name}")
        async with self.client.pipeline(transaction=True) as tx:
            tx.hset(f"{base}:versions", "1", dumps(content))
            tx.set(f"{base}:live", "1")
            tx.hset(f"{base}:published", "pub-1", "[1,-1]")
            await tx.execute()

    async def stats(self, minute: int, tenant: str | None, counts: Mapping[str, int]) -> None:
        async with self.client.pipeline(transaction=True) as tx:
            minute_key = self.key(f"stats:{minute}" + (f"@{tenant}" if tenant else ""))
            for name, by in counts.items():
                tx.hincrby(minute_key, name, by)
                if not tenant:
                    tx.hincrby(self.key("totals"), name, by)
            tx.expire(minute_key, 2 * 86_400)
            await tx.execute()


QUEUED_ORDER = ["q2", "r", "p", "q1", "q3", "parent"]  # priority, then arrival
ACTIVE = {"q1", "q2", "q3", "r", "p", "parent", "child", "r2"}


async def write_legacy(legacy: Legacy, base_ms: int) -> None:
    """Queued (v1 and v2, a tenant, idempotency keys), running (with a checkpoint; another flagged for cancel),
    preempted, waiting child, succeeded and dead-lettered tasks; a saga, an artifact, analytics counters."""

    def at(offset: float) -> float:  # whole milliseconds, as the sharded layout stores times
        return (base_ms + round(offset * 1000)) / 1000

    await legacy.ensure_group()
    await legacy.submit("q1", 3, at(0.001), prompt="first")
    await legacy.submit("r", 5, at(0.002), task_input={"prompt": "long"})
    await legacy.submit("s", 4, at(0.003), task_input={"prompt": "done"}, tenant="acme")
    await legacy.submit("p", 5, at(0.004), task_input={"prompt": "low"}, context={"note": "n"})
    await legacy.submit("q2", 7, at(0.005), task_input={"prompt": "urgent-ish", "n": [1.5, []]}, tenant="acme",
                        idempotency_key="k-1")
    await legacy.submit("d", 6, at(0.006), task_input={"prompt": "doomed"})
    await legacy.submit("r2", 8, at(0.007), task_input={"prompt": "cancel me"}, worker_type="codegen")
    await legacy.submit("q3", 3, at(0.008), task_input={"prompt": "second"}, idempotency_key="k-3")
    await legacy.submit("parent", 1, at(0.009), task_input={"prompt": "fan"}, children=("child",))
    await legacy.deliver()
    attempt = await legacy.start("r", at(0.1))
    await legacy.update("r", at(0.2), attempt, checkpoint={"step": 2}, progress={"pct": 40})
    attempt = await legacy.start("p", at(0.1))
    await legacy.update("p", at(0.2), attempt, checkpoint={"step": 1})
    await legacy.preempt("p", at(0.3), attempt)
    await legacy.start("s", at(0.1))
    await legacy.finish("s", "succeeded", at(0.5), result={"text": "ok", "usage": {"total_tokens": 3}})
    await legacy.start("d", at(0.1))
    await legacy.finish("d", "failed", at(0.6), dead_reason="worker reasoning-0 went silent")
    await legacy.start("r2", at(0.1), worker="codegen-0")
    await legacy.request_cancel("r2")
    await legacy.saga(SAGA.model_dump_json(), SAGA.saga_id, "acme", "saga-key")
    await legacy.artifact("site", {"html": "<p>v1</p>"})
    await legacy.stats(28_000_000, None, {"succeeded": 2, "failed": 1})
    await legacy.stats(28_000_000, "acme", {"succeeded": 1})
    await legacy.stats(28_000_001, None, {"succeeded": 4})


SAGA = new_saga("1" * 32, WorkflowDefinition(name="wf", steps=[StepDefinition(name="one", tool="echo")]),
                {"x": 1}, 5, 1_700_000_000.0, tenant="acme")


# --- fixtures and helpers ----------------------------------------------------------------------------------------


def settings_for(redis_url: str, prefix: str) -> Settings:
    return Settings(redis={"url": redis_url, "prefix": prefix, "shards": SHARDS, "retention_s": RETENTION_S},
                    auth={"quotas": {"acme": {"max_active_tasks": 50}}})


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this module's own: the migration SCANs the whole keyspace (2 keys per call where a test
    makes its batches small), and the session's holds every earlier module's keys."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def settings(own_redis: RedisServer) -> Settings:
    return settings_for(own_redis.url, f"m{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[TaskStore]:
    task_store = TaskStore.from_settings(settings.redis)
    await task_store.ensure_groups()
    yield task_store
    await task_store.aclose()


async def legacy_layout(store: TaskStore) -> tuple[Legacy, dict[str, TaskRecord]]:
    """The legacy keys, and every task as the old `get_task` answered."""
    legacy = Legacy(store.redis, store.keys.prefix)
    await write_legacy(legacy, round(time.time() * 1000) - 10_000)
    before = {name: decode_record(await store.redis.hgetall(legacy.task(task_id)))
              for name, task_id in legacy.ids.items()}
    return legacy, before


async def snapshot(redis_url: str, prefix: str) -> dict[bytes, bytes]:
    """Every key of the prefix (both layouts) with its serialized value."""
    raw = aioredis.from_url(redis_url)
    try:
        keys = [k async for k in raw.scan_iter(count=1000)
                if k.startswith((prefix.encode() + b":", b"{" + prefix.encode() + b":"))]
        return {k: await raw.dump(k) for k in keys}
    finally:
        await raw.aclose()


async def take_next(store: TaskStore, worker_type: str, seq: int) -> tuple[list[Taken], list[TaskRecord]]:
    """What a worker takes next: one task from the shard whose best task is best."""
    found = await store.peek(worker_type, time.time(), 0)
    if not found:
        return [], []
    result = await store.take(TakeRequest(found[0][0], worker_type, "w-1", 1, seq, POLICY), time.time())
    return result.taken, result.settled


async def queue_entries(store: TaskStore, task_id: str) -> int:
    """How many level entries the task has, over every shard, worker type and priority."""
    found = 0
    for shard in range(store.shards):
        for worker_type in ("reasoning", "codegen"):
            for priority in range(11):
                found += await store.redis.zscore(store.keys.shard(shard).level(worker_type, priority),
                                                  task_id) is not None
    return found


def legacy_keys_left(keys: Mapping[bytes, bytes], prefix: str) -> list[bytes]:
    return [k for k in keys if k.startswith(prefix.encode() + b":")]


async def assert_each_task_once(store: TaskStore, legacy: Legacy, before: Mapping[str, TaskRecord]) -> None:
    """Every task has its record where its id says, a queue entry only when queued, and counted once."""
    for name, task_id in legacy.ids.items():
        record = await store.get(task_id)
        assert record.status == (TaskStatus.QUEUED if before[name].status is TaskStatus.RUNNING
                                 else before[name].status), name
        queued = record.status in (TaskStatus.QUEUED, TaskStatus.PREEMPTED)
        assert await queue_entries(store, task_id) == int(queued), name
    assert (await store.counts())["active_tasks"] == len(ACTIVE)
    tenants = [await store.redis.hgetall(store.keys.shard(s).tenant_active) for s in range(store.shards)]
    assert sum(int(t.get("acme", 0)) for t in tenants) == 1  # q2; s finished
    assert len(await store.dead_letters(100)) == 1
    stored = json.loads(await store.raw(legacy.ids["r"]))
    assert stored["ab"] == 1 and stored["at"] == 1  # the lost attempt is forgiven once


# --- tests -------------------------------------------------------------------------------------------------------


async def test_upgrade_moves_every_task_and_the_rest(store: TaskStore, settings: Settings) -> None:
    legacy, before = await legacy_layout(store)
    ids = legacy.ids

    counts = await migrate_legacy(store, settings)
    assert counts == {"tasks": 10, "queued": 5, "running": 2, "waiting": 1, "finished": 2, "dead_letters": 1,
                      "idempotency_keys": 2, "sagas": 1, "artifacts": 1, "stats": 4}
    moved = await snapshot(settings.redis.url, store.keys.prefix)
    assert legacy_keys_left(moved, store.keys.prefix) == []

    # a second run (the next start) finds nothing and changes nothing
    assert set((await migrate_legacy(store, settings)).values()) == {0}
    assert await snapshot(settings.redis.url, store.keys.prefix) == moved

    # every task reads back as the old get_task answered, where its id says
    dead = await store.dead_letters(10)
    assert [(d["task_id"], d["attempts"], d["reason"]) for d in dead] == [
        (ids["d"], 1, "gave up after 1 attempts: worker reasoning-0 went silent")]
    for name, task_id in ids.items():
        assert await store.redis.exists(store.keys.shard(shard_of(task_id, SHARDS) or 0).task(task_id)) == 1
        expected = before[name]
        if name in ("r", "r2"):
            expected = expected.model_copy(update={"status": TaskStatus.QUEUED, "last_failure": UPGRADE_FAILURE})
        if name == "d":
            expected = expected.model_copy(update={"dead_letter": dead[0]["id"]})
        assert (await store.get(task_id)).model_dump() == expected.model_dump(), name
    assert (await store.get(ids["q1"])).prompt == "first"  # a v1 task stays one
    assert (await store.get(ids["q2"])).input == {"prompt": "urgent-ish", "n": [1.5, []]}  # client data as sent

    # finished tasks keep the time they had left; the others do not expire
    assert 0 < await store.redis.ttl(store.keys.shard(shard_of(ids["s"], SHARDS) or 0).task(ids["s"])) <= RETENTION_S
    assert await store.redis.ttl(store.keys.shard(shard_of(ids["q1"], SHARDS) or 0).task(ids["q1"])) == -1
    history = await store.history(ids["s"])
    assert [e.type for e in history] == ["queued", "succeeded"]
    assert json.loads(history[-1].data)["result"]["text"] == "ok"
    assert [e.type for e in await store.history(ids["child"])] == ["waiting"]
    assert [e.type for e in await store.history(ids["r"])] == ["queued", "attempt_lost"]

    # unfinished tasks are counted, no delivery is outstanding
    assert await store.counts() == {"stream_length": 0, "stream_pending": 0, "active_tasks": len(ACTIVE)}
    await assert_each_task_once(store, legacy, before)

    # a retried submit with the same idempotency key finds the old task, where a new submit looks
    submitter = Submitter(store, settings, time.time)
    for tenant, key, name, quota in (("acme", "k-1", "q2", settings.auth.quota_for("acme")),
                                     ("acme", "k-1", "q2", None),  # an admin key: not held to the quota
                                     (None, "k-3", "q3", None)):
        shard = submitter.shard_for(tenant, key, quota)
        task = TaskSpec(task_id=new_task_id(shard), tool="echo", worker_type="reasoning", priority=5,
                        input={"prompt": "again"}, created_at=time.time(), tenant=tenant, idempotency_key=key)
        assert await store.submit(shard, [Submission(task, quota=quota)], time.time(), 1000, 1.0, 10) == [
            (ids[name], True)]

    # queued tasks start in priority order, then arrival; the running one resumes, its lost attempt not charged
    taken: list[Taken] = []
    for seq in range(1, 20):
        found, settled = await take_next(store, "reasoning", seq)
        assert settled == []
        if not found:
            break
        taken += found
    assert [t.task.task_id for t in taken] == [ids[n] for n in QUEUED_ORDER]
    resumed = {t.task.task_id: t for t in taken}
    assert (resumed[ids["r"]].checkpoint, resumed[ids["r"]].attempt, resumed[ids["r"]].attempts_base) == (
        {"step": 2}, 2, 1)
    assert (resumed[ids["p"]].checkpoint, resumed[ids["p"]].attempt, resumed[ids["p"]].preemptions) == (
        {"step": 1}, 2, 1)
    assert resumed[ids["q1"]].task.prompt == "first" and resumed[ids["p"]].task.context == {"note": "n"}
    assert (await store.get(ids["child"])).status is TaskStatus.WAITING
    # the cancel asked of a running task is carried out when it would start again
    found, settled = await take_next(store, "codegen", 100)
    assert found == [] and [(r.task_id, r.status) for r in settled] == [(ids["r2"], TaskStatus.CANCELLED)]

    # sagas, artifacts and analytics moved with their content
    sagas = SagaStore(store.redis, store.keys.prefix, RETENTION_S, 86_400, SHARDS)
    assert await sagas.load(SAGA.saga_id) == SAGA
    assert await sagas.active() == [SAGA.saga_id] and await sagas.cancel_requested(SAGA.saga_id)
    assert await sagas.dead_letters() == [{"saga_id": SAGA.saga_id, "step": "deploy", "reason": "gave up", "at": "1.5"}]
    again = new_saga("2" * 32, SAGA.definition, {"x": 1}, 5, time.time(), tenant="acme")
    assert await sagas.create(again, "saga-key") == (SAGA.saga_id, True)
    assert await ArtifactStore(store.redis, store.keys.prefix).live("site") == (1, {"html": "<p>v1</p>"})
    stats = StatsStore(store.redis, store.keys.prefix, SHARDS)
    assert await stats.totals() == {"succeeded": 6, "failed": 1}
    first = store.keys.shard(0)
    assert await store.redis.hgetall(first.stats(28_000_000, "acme")) == {"succeeded": "1"}
    assert 0 < await store.redis.ttl(first.stats(28_000_000)) <= 2 * 86_400


async def test_without_legacy_data_nothing_happens(store: TaskStore, settings: Settings) -> None:
    assert set((await migrate_legacy(store, settings)).values()) == {0}
    keys = await snapshot(settings.redis.url, store.keys.prefix)
    assert all(k.startswith(b"{") for k in keys)  # only what ensure_groups made
    assert set((await migrate_legacy(store, settings)).values()) == {0}
    assert await snapshot(settings.redis.url, store.keys.prefix) == keys


class CrashingStore(TaskStore):
    """Stops (as a killed process would) when it is about to move its `crash_after`+1-th task."""

    crash_after = 0
    moved = 0

    async def _run(self, name: str, shard: int, now: float, args: Mapping[str, Any], **kwargs: Any) -> Any:
        if name == "migrate_task":
            if self.moved == self.crash_after:
                raise ConnectionError("killed")
            self.moved += 1
        return await super()._run(name, shard, now, args, **kwargs)


@pytest.mark.parametrize("where,after", [("tasks", 0), ("tasks", 7), ("moves", 2)])
async def test_a_migration_stopped_halfway_is_finished_by_the_next(
        store: TaskStore, settings: Settings, monkeypatch: pytest.MonkeyPatch, where: str, after: int) -> None:
    legacy, before = await legacy_layout(store)
    monkeypatch.setattr(migration, "BATCH", 2)  # several round trips, so the stop falls between and within them
    crashing = CrashingStore(store.redis, settings.redis)
    crashing.crash_after = after if where == "tasks" else 10_000
    if where == "moves":  # stop before the `after`+1-th round trip moving saga, artifact or counters keys
        real, calls = migration._Mover.__call__, [0]

        async def stopping(self: Any, moves: Any) -> list[bool]:
            if calls[0] == after:
                raise ConnectionError("killed")
            calls[0] += 1
            return await real(self, moves)

        monkeypatch.setattr(migration._Mover, "__call__", stopping)
    with pytest.raises(ConnectionError):
        await migrate_legacy(crashing, settings)
    monkeypatch.undo()
    monkeypatch.setattr(migration, "BATCH", 2)
    left = sum([await store.redis.exists(legacy.task(task_id)) for task_id in legacy.ids.values()])
    assert (left > 0) == (where == "tasks")

    counts = await migrate_legacy(store, settings)
    assert counts["tasks"] == left
    keys = await snapshot(settings.redis.url, store.keys.prefix)
    assert legacy_keys_left(keys, store.keys.prefix) == []
    await assert_each_task_once(store, legacy, before)
    assert await StatsStore(store.redis, store.keys.prefix, SHARDS).totals() == {"succeeded": 6, "failed": 1}
    sagas = SagaStore(store.redis, store.keys.prefix, RETENTION_S, 86_400, SHARDS)
    assert await sagas.load(SAGA.saga_id) == SAGA and len(await sagas.dead_letters()) == 1
    assert set((await migrate_legacy(store, settings)).values()) == {0}


def ids_in_two_shards() -> tuple[str, str]:
    """Two legacy ids (a parent's and its child's) that live in different shards."""
    while True:
        parent, child = uuid.uuid4().hex, uuid.uuid4().hex
        if shard_of(parent, SHARDS) != shard_of(child, SHARDS):
            return parent, child


async def take_all(store: TaskStore, worker_type: str = "reasoning") -> list[Taken]:
    taken: list[Taken] = []
    for seq in range(1, 50):
        found, _settled = await take_next(store, worker_type, seq)
        if not found:
            return taken
        taken += found
    raise AssertionError("the queue does not empty")


async def test_a_released_child_in_another_shard_gets_its_parents_result(store: TaskStore, settings: Settings) -> None:
    legacy = Legacy(store.redis, store.keys.prefix)
    await legacy.ensure_group()
    await legacy.submit("parent", 5, 1_700_000_000.0, task_input={"prompt": "fan"}, children=("child",),
                        context={"k": 1}, ids=ids_in_two_shards())
    await legacy.deliver()
    await legacy.start("parent", 1_700_000_001.0)
    await legacy.finish("parent", "succeeded", 1_700_000_002.0, result={"text": "plan"})

    assert (await migrate_legacy(store, settings))["queued"] == 1
    [child] = await take_all(store)
    assert child.task.task_id == legacy.ids["child"]
    assert child.task.context == {"k": 1, "parent_result": {"text": "plan"}}


async def test_a_waiting_child_in_another_shard_is_released_by_its_parent(store: TaskStore,
                                                                          settings: Settings) -> None:
    legacy = Legacy(store.redis, store.keys.prefix)
    await legacy.ensure_group()
    await legacy.submit("parent", 5, 1_700_000_000.0, task_input={"prompt": "fan"}, children=("child",),
                        ids=ids_in_two_shards())
    await migrate_legacy(store, settings)

    [parent] = await take_all(store)
    await store.settle(parent.shard, [Settlement(parent.task.task_id, parent.attempt, TaskStatus.SUCCEEDED,
                                                 result={"text": "plan"}, has_result=True)], time.time())
    assert (await store.get(legacy.ids["child"])).status is TaskStatus.WAITING  # in another shard: the outbox
    assert await store.deliver_outbox(parent.shard, time.time()) == 1  # what the shard's router does
    assert await store.deliver_outbox(parent.shard, time.time()) == 0
    assert (await store.get(legacy.ids["child"])).status is TaskStatus.QUEUED
    [child] = await take_all(store)
    assert child.task.task_id == legacy.ids["child"] and child.task.context["parent_result"] == {"text": "plan"}
