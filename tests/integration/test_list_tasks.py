"""Finding tasks and sagas against a real redis-server (three shards): every filter lists exactly the matching
tasks newest first, pages neither repeat nor skip while tasks arrive and change status, tenants see only their
own, expired tasks leave the indexes. The same methods over HTTP and MCP are in test_list_tasks_http.py."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel

from orchestrator import codec
from orchestrator.adapters.migration import index_unlisted
from orchestrator.adapters.saga_store import SagaStore
from orchestrator.adapters.task_store import Settlement, Submission, TakePolicy, TakeRequest, TaskQuery, TaskStore
from orchestrator.auth import Principal
from orchestrator.errors import InvalidParamsError
from orchestrator.finder import Finder
from orchestrator.models import ListSagasParams, ListTasksParams, TaskStatus, TaskSummary
from orchestrator.saga import Attempt, SagaStatus, StepDefinition, WorkflowDefinition, new_saga
from orchestrator.settings import RedisSettings
from orchestrator.tasks import TaskSpec, new_task_id
from tests.support import RedisServer

pytestmark = pytest.mark.integration

SHARDS = 3
POLICY = TakePolicy(max_attempts=3, max_preemptions=3, aging_interval_s=0)
ADMIN = Principal("root", "ops", frozenset({"admin"}))
ALICE = Principal("alice-key", "alice", frozenset({"read", "submit"}))
BOB = Principal("bob-key", "bob", frozenset({"read", "submit"}))
BASE = 1_765_000_000.0
M = TypeVar("M", bound=BaseModel)


class World:
    """Tasks of two tenants in every status, over three shards, and the store and finder reading them."""

    def __init__(self, store: TaskStore, sagas: SagaStore) -> None:
        self.store, self.sagas, self.finder = store, sagas, Finder(store, sagas)
        self.ids: list[str] = []
        self._seq = itertools.count(1)

    async def submit(self, *, tenant: str | None = "alice", tool: str = "echo", worker_type: str = "reasoning",
                     priority: int = 5, created: float | None = None, shard: int | None = None,
                     children: int = 0, saga: str | None = None, not_before: float | None = None) -> str:
        n = next(self._seq)
        shard = n % SHARDS if shard is None else shard
        task_id = new_task_id(shard)
        kids = [TaskSpec(task_id=new_task_id(shard), tool="echo", worker_type="reasoning", priority=priority,
                         input={"prompt": "kid"}, created_at=created or BASE + n / 1000, tenant=tenant, parent=task_id)
                for _ in range(children)]
        spec = TaskSpec(task_id=task_id, tool=tool, worker_type=worker_type, priority=priority,
                        input={"prompt": f"task {n}"}, created_at=BASE + n / 1000 if created is None else created,
                        tenant=tenant, children=tuple(k.task_id for k in kids), saga=saga, not_before=not_before)
        [outcome] = await self.store.submit(shard, [Submission(spec, kids)], time.time(), 10_000, 1.0, 10)
        assert outcome == (task_id, False)
        self.ids += [task_id, *(k.task_id for k in kids)]
        return task_id

    async def run(self, worker_type: str, shard: int, count: int, outcome: TaskStatus | None,
                  error_code: int = -32011) -> list[str]:
        """Start `count` queued tasks of a shard; end them with `outcome` (None: leave them running)."""
        taken = await self.store.take(TakeRequest(shard, worker_type, f"w{shard}", count, next(self._seq), POLICY),
                                      time.time())
        if outcome is not None:
            error = {"code": error_code, "message": "boom", "retryable": False} if outcome is TaskStatus.FAILED \
                else None
            await self.store.settle(shard, [Settlement(t.task.task_id, t.attempt, outcome, result={"ok": True},
                                                       error=error, has_result=outcome is TaskStatus.SUCCEEDED)
                                            for t in taken.taken], time.time())
        return [t.task.task_id for t in taken.taken]

    async def records(self) -> list[dict[str, Any]]:
        """Every task as stored: the truth the listings are checked against."""
        return [codec.decode(json.loads(raw)) for raw in await self.store.get_many(self.ids) if raw]

    async def listed(self, who: Principal, limit: int = 7, **params: Any) -> list[TaskSummary]:
        """Every page of a listing, followed to its end."""
        rows: list[TaskSummary] = []
        cursor = None
        for _ in range(1000):
            page = await self.finder.list_tasks(wire(ListTasksParams, limit=limit, cursor=cursor, **params), who)
            assert len(page.tasks) <= limit
            rows += page.tasks
            if page.next_cursor is None:
                return rows
            cursor = page.next_cursor
        raise AssertionError("the listing never ended")


def wire(model: type[M], **params: Any) -> M:
    """Params as the dispatcher builds them: from JSON, strictly (enums given by value)."""
    return model.model_validate_json(json.dumps({k: v for k, v in params.items() if v is not None}), strict=True)


def newest_first(records: list[dict[str, Any]], keep: Callable[[dict[str, Any]], bool]) -> list[str]:
    chosen = [r for r in records if keep(r)]
    chosen.sort(key=lambda r: (codec.to_ms(r["created_at"]), r["task_id"]), reverse=True)
    return [r["task_id"] for r in chosen]


@pytest.fixture
async def world(redis_server: RedisServer) -> AsyncIterator[World]:
    settings = RedisSettings(url=redis_server.url, prefix=f"l{uuid.uuid4().hex[:8]}", shards=SHARDS)
    store = TaskStore.from_settings(settings)
    await store.ensure_groups()
    sagas = SagaStore(store.redis, settings.prefix, settings.retention_s, settings.idempotency_ttl_s, SHARDS)
    yield World(store, sagas)
    await store.aclose()


@pytest.fixture
async def populated(world: World) -> World:
    """60 tasks: two tenants, two tools (two worker types), priorities 0..10, some sharing a millisecond; then
    some running, succeeded, failed, cancelled."""
    for i in range(60):
        await world.submit(tenant="alice" if i % 3 else "bob", tool="echo" if i % 4 else "code",
                           worker_type="reasoning" if i % 4 else "codegen", priority=i % 11,
                           created=BASE + (i // 2) / 1000)  # pairs share a millisecond
    for shard in range(SHARDS):
        await world.run("reasoning", shard, 3, TaskStatus.SUCCEEDED)
        await world.run("reasoning", shard, 2, TaskStatus.FAILED)
        await world.run("codegen", shard, 1, None)
    queued = [r["task_id"] for r in await world.records() if r["status"] == "queued"]
    for task_id in queued[::10]:
        await world.store.cancel(task_id, time.time(), "")
    return world


FILTERS: dict[str, tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]] = {
    "everything": ({}, lambda r: True),
    "one status": ({"status": "failed"}, lambda r: r["status"] == "failed"),
    "several statuses": ({"status": ["queued", "cancelled"]}, lambda r: r["status"] in ("queued", "cancelled")),
    "tool": ({"tool": "code"}, lambda r: r["tool"] == "code"),
    "tool and status": ({"tool": "echo", "status": "succeeded"},
                        lambda r: r["tool"] == "echo" and r["status"] == "succeeded"),
    "worker type": ({"worker_type": "codegen"}, lambda r: r["worker_type"] == "codegen"),
    "priority range": ({"priority_min": 3, "priority_max": 5}, lambda r: 3 <= r["priority"] <= 5),
    "created range": ({"created_after": BASE + 0.005, "created_before": BASE + 0.020},
                      lambda r: BASE + 0.005 <= r["created_at"] < BASE + 0.020),
    "everything at once": ({"status": ["queued", "running"], "tool": "code", "worker_type": "codegen",
                            "priority_min": 4, "created_after": BASE + 0.003},
                           lambda r: r["status"] in ("queued", "running") and r["tool"] == "code"
                           and r["priority"] >= 4 and r["created_at"] >= BASE + 0.003),
}


@pytest.mark.parametrize("name", FILTERS)
async def test_each_filter_lists_exactly_the_matching_tasks_newest_first(populated: World, name: str) -> None:
    params, keep = FILTERS[name]
    records = await populated.records()
    assert {r["status"] for r in records} == {"queued", "running", "succeeded", "failed", "cancelled"}
    expected = newest_first(records, keep)
    assert expected, "the filter matches something"
    assert [t.task_id for t in await populated.listed(ADMIN, **params)] == expected
    mine = newest_first(records, lambda r: keep(r) and r["tenant"] == "alice")
    assert [t.task_id for t in await populated.listed(ALICE, **params)] == mine


async def test_a_row_summarises_its_task(populated: World) -> None:
    [failed, *_] = await populated.listed(ADMIN, status="failed")
    record = await populated.store.get(failed.task_id)
    assert failed.model_dump() == {
        "task_id": record.task_id, "status": "failed", "tool": record.tool, "worker_type": record.worker_type,
        "priority": record.priority, "tenant": record.tenant, "created_at": record.created_at,
        "started_at": record.started_at, "finished_at": record.finished_at, "parent": None, "saga": None,
        "error_code": -32011}
    assert failed.started_at is not None and failed.finished_at is not None


async def test_tenants_see_only_their_own_and_admins_choose(populated: World) -> None:
    records = await populated.records()
    assert {t.tenant for t in await populated.listed(BOB, limit=50)} == {"bob"}
    assert [t.task_id for t in await populated.listed(ADMIN, limit=50, tenant="bob")] == \
        newest_first(records, lambda r: r["tenant"] == "bob")
    with pytest.raises(InvalidParamsError) as refused:
        await populated.finder.list_tasks(wire(ListTasksParams, tenant="bob"), ALICE)
    assert list(refused.value.fields) == ["params.tenant"]
    bobs_parent = await populated.submit(tenant="bob", children=2)
    assert len(await populated.listed(BOB, parent_id=bobs_parent)) == 2
    assert await populated.listed(ALICE, parent_id=bobs_parent) == []  # another tenant's task names nothing


async def test_pages_neither_repeat_nor_skip_while_tasks_arrive_and_change(world: World) -> None:
    for i in range(40):
        await world.submit(created=BASE + (i // 4) / 1000)  # four tasks a millisecond, spread over the shards
    expected = newest_first(await world.records(), lambda r: True)
    seen: list[str] = []
    cursor = None
    while True:
        page = await world.finder.list_tasks(wire(ListTasksParams, limit=6, cursor=cursor), ADMIN)
        seen += [t.task_id for t in page.tasks]
        await world.submit(created=time.time())  # newer than every page: never on a later one
        await world.run("reasoning", 0, 1, TaskStatus.SUCCEEDED)  # moves between status sets: listed once
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == expected


async def test_a_filter_no_index_answers_pages_through_a_bounded_scan(world: World) -> None:
    """Priority is checked on each record read: with a scan of 4 records a call, pages come back short but the
    listing is whole."""
    for i in range(30):
        await world.submit(priority=9 if i in (3, 14, 27) else 1)
    rows, sizes, after = [], [], None
    while True:
        page, after = await world.store.list_tasks(TaskQuery(None, list(TaskStatus), priority_min=9, after=after,
                                                             limit=5, budget=4))
        rows += [t.task_id for t in page]
        sizes.append(len(page))
        if after is None:
            break
    assert rows == newest_first(await world.records(), lambda r: r["priority"] == 9)
    assert len(sizes) >= 30 // (4 * SHARDS) and max(sizes) < 5  # short pages: each call examined 4 a shard


async def test_a_parents_children_and_a_sagas_tasks(world: World) -> None:
    parent = await world.submit(children=3)
    await world.submit()
    state = new_saga(uuid.uuid4().hex, WorkflowDefinition(name="w", steps=[StepDefinition(name="a", tool="echo")]),
                     {}, 5, BASE, tenant="alice")
    step_task = await world.submit(saga=state.saga_id)
    state.steps[0].attempts.append(Attempt(key="k", task_id=step_task, started_at=BASE))
    await world.sagas.create(state, None)
    await world.sagas.save(state)
    record = await world.store.get(parent)
    assert [t.task_id for t in await world.listed(ALICE, parent_id=parent)] == sorted(record.children, reverse=True)
    assert [(t.task_id, t.saga) for t in await world.listed(ALICE, saga_id=state.saga_id)] == [(step_task, state.saga_id)]
    assert await world.listed(BOB, saga_id=state.saga_id) == []  # another tenant's saga names nothing
    assert await world.listed(ALICE, saga_id="no-such-saga") == []


async def test_expired_tasks_leave_the_indexes(world: World) -> None:
    task_id = await world.submit(shard=0)
    taken = await world.store.take(TakeRequest(0, "reasoning", "w", 1, 1, POLICY), time.time())
    long_ago = time.time() - 2 * world.store._settings.retention_s  # pyright: ignore[reportPrivateUsage]
    await world.store.settle(0, [Settlement(task_id, taken.taken[0].attempt, TaskStatus.SUCCEEDED, result=1,
                                            has_result=True)], long_ago)  # its retention is over
    keys = world.store.keys.shard(0)
    assert await world.store.redis.zcard(keys.by_status("alice", "succeeded")) == 1
    assert await world.store.prune_index(0, time.time()) == 1
    for key in (keys.by_status("alice", "succeeded"), keys.index_expiry):
        assert await world.store.redis.zcard(key) == 0
    assert not await world.store.redis.hexists(keys.indexed_tenants, "alice")


async def test_a_requeued_dead_letter_is_listed_queued_again_and_kept(world: World) -> None:
    task_id = await world.submit(shard=0)
    for seq in range(4):  # lost three times (its worker died): given up on
        taken = await world.store.take(TakeRequest(0, "reasoning", "w", 1, 100 + seq, POLICY), time.time())
        for t in taken.taken:
            held = [h for h in await world.store.held(0, "w") if h.task_id == t.task.task_id]
            await world.store.requeue_lost(0, [(held[0], "died")], time.time())
    assert [t.status for t in await world.listed(ADMIN)] == [TaskStatus.FAILED]
    assert await world.store.requeue(task_id, time.time())
    assert [t.status for t in await world.listed(ADMIN)] == [TaskStatus.QUEUED]
    assert await world.store.redis.zcard(world.store.keys.shard(0).index_expiry) == 0


async def test_bad_params_are_refused_naming_the_field(populated: World) -> None:
    cases = {"params.cursor": wire(ListTasksParams, cursor="bm90IGEgY3Vyc29y"),
             "params.priority_max": wire(ListTasksParams, priority_min=7, priority_max=3)}
    for field, params in cases.items():
        with pytest.raises(InvalidParamsError) as refused:
            await populated.finder.list_tasks(params, ADMIN)
        assert list(refused.value.fields) == [field]


async def test_sagas_by_status_workflow_and_tenant(world: World) -> None:
    workflows = {name: WorkflowDefinition(name=name, steps=[StepDefinition(name="a", tool="echo")])
                 for name in ("build", "ship")}
    made = []
    for i in range(12):
        state = new_saga(f"s{i:02d}{uuid.uuid4().hex[:6]}", workflows["build" if i % 2 else "ship"], {}, 5,
                         BASE + i, tenant="alice" if i % 3 else "bob")
        await world.sagas.create(state, None)
        if i % 4 == 0:
            state = state.model_copy(update={"status": SagaStatus.SUCCEEDED, "finished_at": BASE + i + 1})
            await world.sagas.save(state)
        made.append(state)

    async def listed(who: Principal, **params: Any) -> list[str]:
        rows, cursor = [], None
        while True:
            page = await world.finder.list_sagas(wire(ListSagasParams, limit=3, cursor=cursor, **params), who)
            rows += [s.saga_id for s in page.sagas]
            if page.next_cursor is None:
                return rows
            cursor = page.next_cursor

    def expect(keep: Callable[[Any], bool]) -> list[str]:
        return [s.saga_id for s in sorted(made, key=lambda s: s.created_at, reverse=True) if keep(s)]

    assert await listed(ADMIN) == expect(lambda s: True)
    assert await listed(ADMIN, status="succeeded") == expect(lambda s: s.status is SagaStatus.SUCCEEDED)
    assert await listed(ALICE, workflow="build") == expect(lambda s: s.workflow == "build" and s.tenant == "alice")
    assert await listed(ALICE, created_after=BASE + 5) == expect(lambda s: s.created_at >= BASE + 5
                                                                  and s.tenant == "alice")
    assert await listed(BOB, status=["running"]) == expect(lambda s: s.tenant == "bob" and s.status == "running")


async def test_tasks_stored_before_the_index_are_indexed_once_on_upgrade(populated: World) -> None:
    before = [t.task_id for t in await populated.listed(ADMIN, limit=100)]
    for shard in range(SHARDS):  # the layout of the version before: records, no index
        tag = populated.store.keys.shard(shard).tag
        await populated.store.redis.delete(*[k async for k in populated.store.redis.scan_iter(match=f"{tag}:ix:*")])
    assert await populated.listed(ADMIN) == []
    assert await index_unlisted(populated.store) == len(before)
    assert [t.task_id for t in await populated.listed(ADMIN, limit=100)] == before
    finished = await populated.listed(ADMIN, status=["succeeded", "failed", "cancelled"])
    expiring = sum([await populated.store.redis.zcard(populated.store.keys.shard(s).index_expiry)
                    for s in range(SHARDS)])
    assert finished and expiring == len(finished)  # they still leave the index when their records expire
    assert await index_unlisted(populated.store) == 0  # once


async def test_a_delayed_task_is_listed_scheduled_then_queued(world: World) -> None:
    later = await world.submit(not_before=time.time() + 3600)
    await world.submit()
    assert [t.task_id for t in await world.listed(ALICE, status="scheduled")] == [later]
    assert await world.store.cancel(later, time.time(), "") is TaskStatus.CANCELLED
    assert [t.task_id for t in await world.listed(ALICE, status="cancelled")] == [later]
    assert await world.listed(ALICE, status="scheduled") == []


async def test_a_finished_task_saved_again_keeps_its_expiry(world: World) -> None:
    """A rerun named in the original's record must not make the record outlive its index entry."""
    task_id = await world.submit(shard=0)
    [done] = await world.run("reasoning", 0, 1, TaskStatus.SUCCEEDED)
    assert done == task_id
    key = world.store.keys.shard(0).task(task_id)
    assert await world.store.redis.ttl(key) > 0
    await world.store.link_rerun(task_id, new_task_id(0), time.time())
    assert await world.store.redis.ttl(key) > 0
