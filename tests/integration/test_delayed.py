"""Delayed tasks (`not_before` / `delay_s`): scheduled in Redis, promoted exactly once when due, then competing by
priority like any queued task; cancellable, counted, durable. The store against a real redis-server first (times
passed in, no waiting), then the whole system on Ray."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from orchestrator.adapters.task_store import Submission, TakePolicy, TakeRequest, TaskStore
from orchestrator.errors import QuotaExceededError
from orchestrator.models import TaskStatus
from orchestrator.settings import QuotaSettings, RedisSettings
from orchestrator.tasks import TaskSpec, new_task_id
from tests.conftest import Deployed, deployed, make_settings
from tests.integration.test_durability import sse_events
from tests.integration.test_spine import finished, result, rpc
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration

POLICY = TakePolicy(max_attempts=3, max_preemptions=3, aging_interval_s=0)
REASONING = ["reasoning"]


def open_store(url: str, prefix: str | None = None) -> TaskStore:
    return TaskStore.from_settings(RedisSettings(url=url, prefix=prefix or f"d{uuid.uuid4().hex[:8]}"))


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[TaskStore]:
    task_store = open_store(redis_server.url)
    await task_store.ensure_groups()
    yield task_store
    await task_store.aclose()


def spec(prompt: str, priority: int = 5, *, created_at: float, **fields: Any) -> TaskSpec:
    return TaskSpec(task_id=new_task_id(0), tool="echo", worker_type="reasoning", priority=priority,
                    input={"prompt": prompt}, created_at=created_at, **fields)


async def accept(store: TaskStore, *tasks: TaskSpec, now: float, quota: QuotaSettings | None = None) -> list[Any]:
    return await store.submit(0, [Submission(t, quota=quota) for t in tasks], now, 100_000, 2.0, 10)


SEQ = iter(range(1, 1_000_000))


async def take(store: TaskStore, count: int, now: float, policy: TakePolicy = POLICY) -> list[str]:
    """Prompts of the tasks one take starts."""
    taken = await store.take(TakeRequest(0, "reasoning", "w", count, next(SEQ), policy), now)
    return [t.task.input["prompt"] for t in taken.taken]


async def history(store: TaskStore, task_id: str) -> list[str]:
    return [event.type for event in await store.history(task_id)]


async def test_a_delayed_task_waits_outside_the_queues_and_is_promoted_exactly_once(store: TaskStore) -> None:
    now = time.time()
    [(task_id, duplicate)] = await accept(store, spec("later", created_at=now, not_before=now + 60), now=now)
    record = await store.get(task_id)
    assert not duplicate and record.status is TaskStatus.SCHEDULED
    assert record.not_before == pytest.approx(now + 60, abs=1e-3)
    assert await store.scheduled(REASONING) == {"reasoning": 1}
    assert await store.depths(REASONING) == {"reasoning": {}}  # in no queue: nothing to take
    assert await take(store, 4, now + 59.9) == []
    assert (await store.get(task_id)).status is TaskStatus.SCHEDULED
    # at its time, a router's promotion and a worker's take race: one of them promotes it, once
    (promoted, _next), taken = await asyncio.gather(store.promote(0, REASONING, now + 60, 500, 10),
                                                    take(store, 4, now + 60))
    assert promoted in (0, 1) and taken == ["later"]
    assert await store.promote(0, REASONING, now + 61, 500, 10) == (0, None)
    assert await take(store, 4, now + 61) == []
    assert await history(store, task_id) == ["scheduled", "queued", "running"]
    assert await store.scheduled(REASONING) == {"reasoning": 0}


async def test_come_due_they_compete_by_priority_with_the_ready_tasks(store: TaskStore) -> None:
    now = time.time()
    ready = [spec(f"ready{p}", p, created_at=now - 5) for p in (3, 7)]
    # accepted long ago: aging counts from not_before, else the priority-1 task would have aged to 9
    due = [spec(f"due{p}", p, created_at=now - 300, not_before=now + 10) for p in (9, 5, 1)]
    not_yet = spec("not-yet", 10, created_at=now, not_before=now + 20)
    await accept(store, *ready, *due, not_yet, now=now - 5)
    promoted, next_due = await store.promote(0, REASONING, now + 10, 500, 10)
    assert promoted == 3 and next_due == pytest.approx(now + 20, abs=1e-3)
    aging = TakePolicy(max_attempts=3, max_preemptions=3, aging_interval_s=30)
    order = [prompt for _ in range(5) for prompt in await take(store, 1, now + 10, aging)]
    assert order == ["due9", "ready7", "due5", "ready3", "due1"]


async def test_a_take_promotes_its_worker_types_due_tasks_itself(store: TaskStore) -> None:
    now = time.time()
    await accept(store, spec("soon", created_at=now, not_before=now + 1),
                 TaskSpec(task_id=new_task_id(0), tool="echo", worker_type="codegen", priority=5,
                          input={"prompt": "other"}, created_at=now, not_before=now + 1), now=now)
    assert await take(store, 4, now + 1) == ["soon"]
    assert await store.scheduled(["reasoning", "codegen"]) == {"reasoning": 0, "codegen": 1}


async def test_an_urgent_task_is_announced_for_preemption_when_due_not_before(store: TaskStore) -> None:
    now = time.time()
    pubsub = store.redis.pubsub()
    await pubsub.subscribe(store.keys.urgent)
    try:
        await accept(store, spec("urgent", 10, created_at=now, not_before=now + 5), now=now)
        await store.promote(0, REASONING, now + 4, 500, 10)
        await store.promote(0, REASONING, now + 5, 500, 10)
        messages = []
        while (message := await pubsub.get_message(timeout=1.0)) is not None:  # None: a second with nothing
            if message["type"] == "message":
                messages.append(message["data"])
        assert messages == ["reasoning"]  # once: when it came due, not when it was accepted
    finally:
        await pubsub.aclose()


async def test_cancelled_while_scheduled_it_leaves_the_due_set_and_never_runs(store: TaskStore) -> None:
    now = time.time()
    [(task_id, _)] = await accept(store, spec("never", created_at=now, not_before=now + 5), now=now)
    assert await store.cancel(task_id, now + 1, "") is TaskStatus.CANCELLED
    assert await store.scheduled(REASONING) == {"reasoning": 0}
    assert await store.promote(0, REASONING, now + 6, 500, 10) == (0, None)
    assert await take(store, 4, now + 6) == []
    record = await store.get(task_id)
    assert record.status is TaskStatus.CANCELLED and record.attempts == 0 and record.started_at is None
    assert await history(store, task_id) == ["scheduled", "cancelled"]
    assert (await store.counts())["active_tasks"] == 0


async def test_scheduled_tasks_count_against_the_tenants_quota_and_keys_stay_idempotent(store: TaskStore) -> None:
    now, quota = time.time(), QuotaSettings(max_active_tasks=2)

    def later(key: str | None = None) -> TaskSpec:
        return spec("q", created_at=now, not_before=now + 60, tenant="acme", idempotency_key=key)

    [(first, _)] = await accept(store, later("k"), now=now, quota=quota)
    [(again, duplicate)] = await accept(store, later("k"), now=now, quota=quota)
    assert again == first and duplicate
    [(_second, _)] = await accept(store, later(), now=now, quota=quota)
    [refused] = await accept(store, later(), now=now, quota=quota)
    assert isinstance(refused, QuotaExceededError)
    assert await store.scheduled(REASONING) == {"reasoning": 2}


async def test_a_scheduled_task_costs_what_a_queued_one_does(store: TaskStore, redis_server: RedisServer) -> None:
    n, now = 10_000, time.time()
    admin = aioredis.Redis.from_url(redis_server.url)
    before = (await admin.info("memory"))["used_memory"]
    for start in range(0, n, 500):
        await accept(store, *[spec("p" * 100, i % 11, created_at=now, not_before=now + 3600 + i % 600,
                                   tenant=f"tenant{i % 7}") for i in range(start, start + 500)], now=now)
    per_task = ((await admin.info("memory"))["used_memory"] - before) / n
    await admin.aclose()
    print(f"{per_task:.0f} bytes of Redis per scheduled task")
    assert per_task < 1024, f"{per_task:.0f} bytes per scheduled task"


async def test_scheduled_tasks_survive_a_redis_restart() -> None:
    server = RedisServer(aof=True, appendfsync="always").start()
    try:
        now = time.time()
        first = open_store(server.url, "restart")
        await first.ensure_groups()
        [(task_id, _)] = await accept(first, spec("durable", created_at=now, not_before=now + 30), now=now)
        await first.aclose()
        server.kill()
        server.start()
        again = open_store(server.url, "restart")
        assert (await again.get(task_id)).status is TaskStatus.SCHEDULED
        assert await again.promote(0, REASONING, now + 30, 500, 10) == (1, None)
        assert await take(again, 1, now + 30) == ["durable"]
        await again.aclose()
    finally:
        server.stop()


# --- the whole system ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int) -> Iterator[Deployed]:
    """One reasoning slot (start order is then observable), aging off."""
    settings = make_settings(redis_server.url, pools={"reasoning": {"workers": 1, "slots": 1},
                                                      "codegen": {"workers": 0}},
                             router={"aging_interval_s": 0})
    with deployed(settings, ray_session) as running:
        yield running


def run(base: str, prompt: str, **params: Any) -> dict[str, Any]:
    return dict(result(base, "run_task", {"tool": "echo", "prompt": prompt, **params}))


def status_of(base: str, task_id: str) -> str:
    return str(result(base, "get_task", {"task_id": task_id})["status"])


def test_a_delayed_task_is_scheduled_then_runs_after_its_time(system: Deployed) -> None:
    base = system.base_url
    accepted = run(base, "later", delay_s=3.0)  # time enough to look at it while scheduled, on a busy machine
    assert accepted["status"] == "scheduled"
    record = result(base, "get_task", {"task_id": accepted["task_id"]})
    assert record["status"] == "scheduled"
    assert record["not_before"] == pytest.approx(record["created_at"] + 3.0, abs=0.01)
    [pool] = [p for p in result(base, "status")["pools"] if p["worker_type"] == "reasoning"]
    assert pool["scheduled"] >= 1
    done = finished(base, accepted["task_id"])
    assert done["status"] == "succeeded" and done["result"]["text"] == "later"
    assert done["started_at"] >= done["not_before"]
    events = sse_events(base, accepted["task_id"])
    assert [e["event"] for e in events if e["event"] != "progress"] == ["scheduled", "queued", "running", "succeeded"]


def test_cancelled_while_scheduled_it_never_runs(system: Deployed) -> None:
    base = system.base_url
    doomed = run(base, "doomed", delay_s=1.0)["task_id"]
    sentinel = run(base, "sentinel", delay_s=1.0)["task_id"]  # due no earlier: once it ran, doomed would have too
    assert result(base, "cancel_task", {"task_id": doomed})["status"] == "cancelled"
    assert finished(base, sentinel)["status"] == "succeeded"
    record = result(base, "get_task", {"task_id": doomed})
    assert record["status"] == "cancelled" and record["attempts"] == 0 and record["started_at"] is None


def test_delayed_tasks_enter_in_priority_order_among_ready_ones(system: Deployed) -> None:
    base = system.base_url
    result(base, "control", {"action": "pause", "worker_type": "reasoning"})
    try:
        context = {"delay_ms": 5}  # one slot's starts are then apart at the records' millisecond resolution
        ids = [run(base, f"ready{p}", priority=p, context=context)["task_id"] for p in (3, 7)]
        ids += [run(base, f"due{p}", priority=p, context=context, delay_s=0.5)["task_id"] for p in (9, 5, 1)]
        wait_until(lambda: all(status_of(base, t) == "queued" for t in ids), 10, "the delayed tasks to come due")
    finally:
        result(base, "control", {"action": "resume", "worker_type": "reasoning"})
    records = sorted((finished(base, t) for t in ids), key=lambda r: r["started_at"])
    assert [r["prompt"] for r in records] == ["due9", "ready7", "due5", "ready3", "due1"]


def test_bad_delays_are_refused_naming_the_field(system: Deployed) -> None:
    naive = rpc(system.base_url, "run_task", {"tool": "echo", "input": {"prompt": "x"},
                                              "not_before": "2030-01-01T00:00:00"}, path="v2/rpc")
    assert naive["error"]["code"] == -32602 and "params.not_before" in naive["error"]["data"]["fields"]
    both = rpc(system.base_url, "run_task", {"tool": "echo", "prompt": "x", "delay_s": 5,
                                             "not_before": "2030-01-01T00:00:00Z"})
    assert both["error"]["code"] == -32602 and "params.delay_s" in both["error"]["data"]["fields"]
