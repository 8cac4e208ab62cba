"""The task store against a real redis-server: queue order as data (priority, age, tenant fairness, aging),
atomic accept and backpressure, fenced and idempotent takes and settles, memory per queued task."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis

from orchestrator.adapters.task_store import (
    Settlement,
    Submission,
    TakePolicy,
    TakeRequest,
    TakeResult,
    TaskQuery,
    TaskStore,
)
from orchestrator.errors import QueueFullError, QuotaExceededError
from orchestrator.models import TaskStatus
from orchestrator.settings import QuotaSettings, RedisSettings
from orchestrator.tasks import TaskSpec, new_task_id
from orchestrator.tools.base import Tool, ToolCall, ToolContext
from orchestrator.worker import Limits, Runner
from tests.support import RedisServer, eventually

pytestmark = pytest.mark.integration

POLICY = TakePolicy(max_attempts=3, max_preemptions=3, aging_interval_s=0)


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[TaskStore]:
    task_store = TaskStore.from_settings(RedisSettings(url=redis_server.url, prefix=f"s{uuid.uuid4().hex[:8]}"))
    await task_store.ensure_groups()
    yield task_store
    await task_store.aclose()


def spec(prompt: str = "x", priority: int = 5, created_at: float | None = None, **fields: Any) -> TaskSpec:
    return TaskSpec(task_id=new_task_id(0), tool="echo", worker_type="reasoning", priority=priority,
                    input={"prompt": prompt}, created_at=time.time() if created_at is None else created_at, **fields)


async def accept(store: TaskStore, *tasks: TaskSpec, max_active: int = 1000, **submission: Any) -> list[Any]:
    return await store.submit(0, [Submission(t, **submission) for t in tasks], time.time(), max_active, 2.0, 10)


async def take(store: TaskStore, worker: str, count: int, seq: int, policy: TakePolicy = POLICY,
               now: float | None = None) -> TakeResult:
    return await store.take(TakeRequest(0, "reasoning", worker, count, seq, policy), now or time.time())


async def take_all(store: TaskStore, worker: str = "w", count: int = 1, policy: TakePolicy = POLICY,
                   now: float | None = None) -> list[str]:
    """Prompts in the order takes of `count` start them, until the queue is empty."""
    order: list[str] = []
    seq = int(time.time() * 1000)
    while True:
        seq += 1
        taken = (await take(store, worker, count, seq, policy, now)).taken
        if not taken:
            return order
        order += [t.task.input["prompt"] for t in taken]


async def test_tasks_start_by_priority_then_age(store: TaskStore) -> None:
    base = time.time()
    priorities = [3, 7, 1, 7, 5, 10, 3, 0, 10, 5]
    await accept(store, *[spec(f"p{p}-{i}", p, base + i) for i, p in enumerate(priorities)])
    assert await store.depths(["reasoning"]) == {"reasoning": {0: 1, 1: 1, 3: 2, 5: 2, 7: 2, 10: 2}}
    order = await take_all(store, count=3)
    assert order == ["p10-5", "p10-8", "p7-1", "p7-3", "p5-4", "p5-9", "p3-0", "p3-6", "p1-2", "p0-7"]


async def test_tenants_at_one_priority_take_turns(store: TaskStore) -> None:
    await accept(store, *[spec(f"a{i}", tenant="alice") for i in range(4)])
    await accept(store, *[spec(f"b{i}", tenant="bob") for i in range(2)])
    assert await take_all(store) == ["a0", "b0", "a1", "b1", "a2", "a3"]


async def test_a_tenant_served_a_lot_is_not_punished_later(store: TaskStore) -> None:
    await accept(store, *[spec(f"a{i}", tenant="alice") for i in range(20)])
    assert len(await take_all(store)) == 20
    await accept(store, spec("b0", tenant="bob"), spec("a20", tenant="alice"))
    assert await take_all(store) == ["b0", "a20"]  # alice's past use does not push her behind bob


async def test_aging_lifts_old_low_priority_work_but_never_above_urgent(store: TaskStore) -> None:
    now = time.time()
    await accept(store, spec("old-low", 1, now - 100), *[spec(f"new{i}", 5, now) for i in range(3)],
                 spec("urgent", 10, now))
    aged = TakePolicy(max_attempts=3, max_preemptions=3, aging_interval_s=10)  # 1 + 100/10 → capped at 9
    assert await take_all(store, policy=aged, now=now) == ["urgent", "old-low", "new0", "new1", "new2"]


async def test_a_preempted_task_keeps_its_place(store: TaskStore) -> None:
    await accept(store, *[spec(f"t{i}") for i in range(3)])
    first = (await take(store, "w", 1, 1, POLICY)).taken[0]
    assert first.task.input["prompt"] == "t0"
    preempted = Settlement(first.task.task_id, first.attempt, TaskStatus.PREEMPTED, checkpoint={"step": 2})
    assert await store.settle(0, [preempted], time.time()) == [1]
    assert await store.settle(0, [preempted], time.time()) == [2]  # retried (reply lost): done once, not refused
    again = (await take(store, "w", 1, 2, POLICY)).taken[0]
    assert again.task.task_id == first.task.task_id and again.attempt == 2 and again.checkpoint == {"step": 2}
    record = await store.get(first.task.task_id)
    assert record.preemptions == 1 and record.resumed_from == {"step": 2}


async def test_queue_full_refuses_without_writing_anything(store: TaskStore) -> None:
    await accept(store, spec(), max_active=1)
    refused = spec()
    [outcome] = await accept(store, refused, max_active=1)
    assert isinstance(outcome, QueueFullError) and outcome.data() == {"retryable": True, "active": 1, "limit": 1,
                                                                "retry_after_s": 2.0}
    assert not await store.redis.exists(store.keys.shard(0).task(refused.task_id))


async def test_a_tenant_quota_is_checked_in_the_same_step(store: TaskStore) -> None:
    quota = QuotaSettings(max_active_tasks=2)
    outcomes = await accept(store, *[spec(tenant="acme") for _ in range(3)], quota=quota)
    assert [type(o).__name__ for o in outcomes] == ["tuple", "tuple", "QuotaExceededError"]
    assert isinstance(outcomes[2], QuotaExceededError)


async def test_a_retried_submit_answers_as_the_first_and_an_idempotency_key_finds_its_task(store: TaskStore) -> None:
    task = spec(idempotency_key="k1")
    [(task_id, duplicate)] = await accept(store, task)
    assert (task_id, duplicate) == (task.task_id, False)
    assert await accept(store, task) == [(task.task_id, False)]  # the same call again (its reply was lost)
    assert await accept(store, spec(idempotency_key="k1")) == [(task.task_id, True)]
    assert (await store.counts())["active_tasks"] == 1


async def test_takes_and_settles_are_fenced_and_idempotent(store: TaskStore) -> None:
    await accept(store, spec("a"), spec("b"))
    taken = await take(store, "w", 2, 7, POLICY)
    assert len(taken.taken) == 2
    retried = await take(store, "w", 2, 7, POLICY)  # the same take, its reply lost
    assert retried.duplicate and not retried.taken
    assert {h.task_id for h in await store.held(0, "w")} == {t.task.task_id for t in taken.taken}
    done = Settlement(taken.taken[0].task.task_id, 1, TaskStatus.SUCCEEDED, result={"ok": 1}, has_result=True)
    stale = Settlement(taken.taken[1].task.task_id, 2, TaskStatus.SUCCEEDED, result={"ok": 2}, has_result=True)
    assert await store.settle(0, [done, stale], time.time()) == [1, 0]
    assert await store.settle(0, [done], time.time()) == [2]  # retried: stored before, not twice
    assert [h.task_id for h in await store.held(0, "w")] == [taken.taken[1].task.task_id]
    assert (await store.get(done.task_id)).result == {"ok": 1}


async def test_lost_attempts_go_back_and_the_last_one_is_a_dead_letter(store: TaskStore) -> None:
    await accept(store, spec("fragile"))
    policy = TakePolicy(max_attempts=2, max_preemptions=3, aging_interval_s=0)
    for seq in (1, 2):
        [taken] = (await take(store, "w", 1, seq, policy)).taken
        [held] = await store.held(0, "w")
        assert await store.requeue_lost(0, [(held, "worker w died")], time.time()) == 1
    result = await take(store, "w", 1, 3, policy)
    assert not result.taken and [r.status for r in result.settled] == [TaskStatus.FAILED]
    record = await store.get(taken.task.task_id)
    assert record.error is not None and record.error.code == -32007 and "worker w died" in record.error.message
    assert [d["task_id"] for d in await store.dead_letters(10)] == [taken.task.task_id]
    assert await store.requeue(taken.task.task_id, time.time())
    assert (await store.get(taken.task.task_id)).status is TaskStatus.QUEUED


async def test_a_router_that_lost_its_lease_changes_nothing(store: TaskStore) -> None:
    k = store.keys.shard(0)
    mine = await store.lease(k.lease, k.fence, "router-0", ttl_s=30)
    assert mine is not None and await store.lease(k.lease, k.fence, "router-1", ttl_s=30) is None
    await accept(store, spec())
    [taken] = (await take(store, "w", 1, 1, POLICY)).taken
    [held] = await store.held(0, "w")
    await store.redis.delete(k.lease)  # it expired while router-0 was paused
    theirs = await store.lease(k.lease, k.fence, "router-1", ttl_s=30)
    assert theirs is not None and int(theirs.rsplit(":", 1)[1]) > int(mine.rsplit(":", 1)[1])
    assert await store.requeue_lost(0, [(held, "swept")], time.time(), holder=mine) == -1
    assert (await store.get(taken.task.task_id)).status is TaskStatus.RUNNING
    assert await store.requeue_lost(0, [(held, "swept")], time.time(), holder=theirs) == 1


async def test_children_wait_for_their_parent_and_run_with_its_result(store: TaskStore) -> None:
    parent = spec("parent")
    child = spec("child", parent=parent.task_id)
    parent = TaskSpec(**{**parent.__dict__, "children": (child.task_id,)}) if hasattr(parent, "__dict__") else \
        TaskSpec(task_id=parent.task_id, tool="echo", worker_type="reasoning", priority=5, input={"prompt": "parent"},
                 created_at=parent.created_at, children=(child.task_id,))
    await accept(store, parent, children=[child])
    assert (await store.get(child.task_id)).status is TaskStatus.WAITING
    [taken] = (await take(store, "w", 2, 1, POLICY)).taken
    await store.settle(0, [Settlement(parent.task_id, 1, TaskStatus.SUCCEEDED, result={"v": 1}, has_result=True)],
                       time.time())
    [released] = (await take(store, "w", 2, 2, POLICY)).taken
    assert released.task.task_id == child.task_id and released.task.context == {"parent_result": {"v": 1}}


async def test_redis_out_of_memory_refuses_submits_as_queue_full_and_keeps_what_was_accepted(
        store: TaskStore, redis_server: RedisServer) -> None:
    await accept(store, spec("kept"))
    admin = aioredis.Redis.from_url(redis_server.url)
    used = (await admin.info("memory"))["used_memory"]
    await admin.config_set("maxmemory", used - 1024 * 1024 if used > 2 * 1024 * 1024 else 1)
    try:
        [outcome] = await accept(store, spec("refused"))
        assert isinstance(outcome, QueueFullError) and outcome.data()["retryable"] is True
        assert await take_all(store) == ["kept"]  # what was accepted still runs: takes work while out of memory
    finally:
        await admin.config_set("maxmemory", 0)
        await admin.aclose()


async def test_a_queued_task_costs_under_a_kilobyte_of_redis(store: TaskStore, redis_server: RedisServer) -> None:
    n = 20_000
    admin = aioredis.Redis.from_url(redis_server.url)
    before = (await admin.info("memory"))["used_memory"]
    prompt = "p" * 100
    for start in range(0, n, 500):
        await accept(store, *[spec(prompt, i % 11, tenant=f"tenant{i % 7}") for i in range(start, start + 500)],
                     max_active=n)
    per_task = ((await admin.info("memory"))["used_memory"] - before) / n
    await admin.aclose()
    print(f"{per_task:.0f} bytes of Redis per queued task")
    assert per_task < 1024, f"{per_task:.0f} bytes per queued task"


async def test_a_task_asking_for_input_waits_without_a_slot_then_resumes_with_the_answer(store: TaskStore) -> None:
    await accept(store, spec("asks", tenant="acme"))
    first = (await take(store, "w", 1, 11)).taken[0]
    task_id = first.task.task_id
    request = {"message": "Go?", "schema": {"type": "object"}, "asked_at": 1.0}
    asked = Settlement(task_id, first.attempt, TaskStatus.INPUT_REQUIRED, checkpoint={"step": 1},
                       asked={"go": request, "why": request})
    assert await store.settle(0, [asked], time.time()) == [1]
    assert await store.settle(0, [asked], time.time()) == [2]  # retried (reply lost): done once
    record = await store.get(task_id)
    assert record.status is TaskStatus.INPUT_REQUIRED and set(record.input_requests) == {"go", "why"}
    assert record.input_requests["go"].message == "Go?" and record.checkpoint == {"step": 1}
    assert not await store.held(0, "w") and not await store.running()  # its slot and delivery are gone
    assert (await take(store, "w", 1, 12)).taken == []  # in no queue while it waits
    assert (await store.counts())["active_tasks"] == 1  # still open: counted against quotas
    listed, _ = await store.list_tasks(TaskQuery(tenants=["acme"], statuses=[TaskStatus.INPUT_REQUIRED]))
    assert [t.task_id for t in listed] == [task_id]

    answer = {"action": "accept", "content": {"ok": True}}
    assert await store.provide_input(task_id, "go", answer, time.time()) == ("stored", TaskStatus.INPUT_REQUIRED,
                                                                              ["why"])
    assert (await store.provide_input(task_id, "go", answer, time.time()))[0] == "duplicate"
    assert (await store.provide_input(task_id, "nope", answer, time.time()))[0] == "not_expected"
    assert await store.provide_input(task_id, "why", {"action": "decline"}, time.time()) == (
        "stored", TaskStatus.QUEUED, [])
    resumed = (await take(store, "w", 1, 13)).taken[0]
    assert resumed.checkpoint == {"step": 1} and resumed.input_rounds == 1
    assert resumed.inputs == {"go": answer, "why": {"action": "decline"}}
    record = await store.get(task_id)
    assert record.status is TaskStatus.RUNNING and record.input_requests == {}
    kinds = [e.type for e in await store.history(task_id)]
    assert kinds[-5:] == ["input_required", "input_received", "input_received", "queued", "running"]


async def test_a_task_waiting_for_input_can_be_cancelled(store: TaskStore) -> None:
    await accept(store, spec("asks"))
    first = (await take(store, "w", 1, 21)).taken[0]
    request = {"message": "?", "schema": {"type": "object"}, "asked_at": 1.0}
    await store.settle(0, [Settlement(first.task.task_id, 1, TaskStatus.INPUT_REQUIRED, asked={"k": request})],
                       time.time())
    assert await store.cancel(first.task.task_id, time.time(), "") is TaskStatus.CANCELLED
    record = await store.get(first.task.task_id)
    assert record.status is TaskStatus.CANCELLED and record.input_requests == {}
    outcome = await store.provide_input(first.task.task_id, "k", {"action": "accept", "content": {}}, time.time())
    assert outcome == ("not_expected", TaskStatus.CANCELLED, [])
    assert (await store.counts())["active_tasks"] == 0


class Asking(Tool):
    """Checkpoints, then asks two questions at once (as under `asyncio.gather`)."""

    kind = "python"
    input_schema = {"type": "object"}

    async def run(self, call: ToolCall, ctx: ToolContext) -> Any:
        await ctx.checkpoint({"before": True})
        first, second = await asyncio.gather(ctx.ask("a", "A?"), ctx.ask("b", "B?", {"type": "integer"}))
        return {"a": first, "b": second, "resumed_from": call.checkpoint}


async def test_a_worker_ends_an_asking_attempt_and_resumes_it_with_the_answers(store: TaskStore) -> None:
    runner = Runner(store, {"asking": Asking("asking")}, "w", "reasoning", 1, POLICY, Limits(3, 10_000), time.time)
    serving = asyncio.create_task(runner.serve())
    try:
        task = replace(spec(), tool="asking")
        await accept(store, task)

        async def status_is(status: TaskStatus) -> bool:
            return (await store.get(task.task_id)).status is status

        await eventually(lambda: status_is(TaskStatus.INPUT_REQUIRED), what="the task to ask")
        assert set((await store.get(task.task_id)).input_requests) == {"a", "b"}  # both asks, together
        await eventually(lambda: asyncio.sleep(0, result=runner.free_slots() == 1), what="its slot to be free")
        await store.provide_input(task.task_id, "a", {"action": "accept", "content": {"x": 1}}, time.time())
        await store.provide_input(task.task_id, "b", {"action": "accept", "content": 7}, time.time())
        runner.wake()
        await eventually(lambda: status_is(TaskStatus.SUCCEEDED), what="the task to finish")
        record = await store.get(task.task_id)
        assert record.result == {"a": {"x": 1}, "b": 7, "resumed_from": {"before": True}}
        assert record.attempts == 2
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
