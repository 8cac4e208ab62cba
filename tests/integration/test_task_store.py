"""The task store against a real redis-server: atomic accept, backpressure, fencing, trimming."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest

from orchestrator.adapters.task_store import TaskStore
from orchestrator.errors import QueueFullError
from orchestrator.models import TaskStatus
from orchestrator.settings import RedisSettings
from orchestrator.tasks import TaskSpec, new_task_id
from tests.support import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[TaskStore]:
    task_store = TaskStore.from_settings(RedisSettings(url=redis_server.url, prefix=f"s{uuid.uuid4().hex[:8]}"))
    await task_store.ensure_group()
    yield task_store
    await task_store.aclose()


def spec(priority: int = 5, key: str | None = None) -> TaskSpec:
    return TaskSpec(task_id=new_task_id(), tool="echo", worker_type="reasoning", priority=priority,
                    input={"prompt": "x"}, created_at=time.time(), idempotency_key=key)


async def test_queue_full_refuses_without_writing_anything(store: TaskStore) -> None:
    await store.submit(spec(), max_active=1, retry_after_s=2)
    refused = spec()
    with pytest.raises(QueueFullError) as caught:
        await store.submit(refused, max_active=1, retry_after_s=2)
    assert caught.value.data() == {"retryable": True, "retry_after_s": 2}
    assert not await store.redis.exists(store.keys.task(refused.task_id))
    assert await store.redis.xlen(store.keys.tasks) == 1


async def test_a_stale_attempt_cannot_store_its_result(store: TaskStore) -> None:
    task = spec()
    await store.submit(task, 10, 1)
    first = await store.start(task.task_id, "w0", time.time(), resumable=True, max_attempts=3)
    second = await store.start(task.task_id, "w1", time.time(), resumable=True, max_attempts=3)  # e.g. after w0 was presumed dead
    assert first is not None and second is not None and second.attempt == first.attempt + 1
    assert not await store.update(task.task_id, first.attempt, time.time(), progress={"step": 1})
    assert not await store.finish(task.task_id, first.attempt, TaskStatus.SUCCEEDED, time.time(), result="old")
    assert await store.finish(task.task_id, second.attempt, TaskStatus.SUCCEEDED, time.time(), result="new")
    assert not await store.finish(task.task_id, second.attempt, TaskStatus.SUCCEEDED, time.time(), result="again")
    record = await store.get(task.task_id)
    assert record.result == "new" and record.worker == "w1" and record.attempts == 2
    assert int(await store.redis.get(store.keys.active)) == 0


async def test_trimming_keeps_pending_and_undelivered_entries(store: TaskStore) -> None:
    tasks = [spec() for _ in range(6)]
    for task in tasks:
        await store.submit(task, 100, 1)
    delivered = await store.read("router-0", count=4, block_ms=None)
    assert [t.task_id for t in delivered] == [t.task_id for t in tasks[:4]]
    for task in delivered[:2]:  # finish (and so acknowledge) the first two; the next two stay pending
        started = await store.start(task.task_id, "w", time.time(), resumable=True, max_attempts=3)
        assert started is not None
        await store.finish(task.task_id, started.attempt, TaskStatus.SUCCEEDED, time.time())
    await store.trim()
    remaining = [fields["task_id"] for _, fields in await store.redis.xrange(store.keys.tasks)]
    assert remaining == [t.task_id for t in tasks[2:]]
    pending = await store.read("router-0", count=10, block_ms=None, pending=True)
    assert [t.task_id for t in pending] == [t.task_id for t in tasks[2:4]]
    fresh = await store.read("router-0", count=10, block_ms=None)
    assert [t.task_id for t in fresh] == [t.task_id for t in tasks[4:]]
