"""Signal routing end to end: start order by priority then age, tenant fairness, aging, preemption."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Deployed, deployed, make_settings
from tests.integration.test_spine import finished, result
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration

# `serial` runs one task at a time (start order is then observable); `sticky` cannot be preempted.
TOOLS = {
    "serial": {"kind": "echo", "worker_type": "codegen"},
    "sticky": {"kind": "echo", "worker_type": "ml", "preemptible": False},
}
POOLS = {"reasoning": {"workers": 1, "slots": 3}, "codegen": {"workers": 1, "slots": 1},
         "ml": {"workers": 1, "slots": 2}}


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int) -> Iterator[Deployed]:
    settings = make_settings(redis_server.url, tools=TOOLS, pools=POOLS, router={"aging_interval_s": 0})
    with deployed(settings, ray_session) as running:
        yield running


@pytest.fixture(scope="module")
def aging_system(redis_server: RedisServer, ray_session: int) -> Iterator[Deployed]:
    settings = make_settings(redis_server.url, tools=TOOLS, pools=POOLS, router={"aging_interval_s": 0.2})
    with deployed(settings, ray_session) as running:
        yield running


def submit(base: str, tool: str, prompt: str, priority: int = 5, delay_ms: int = 0, steps: int = 1,
           agent: str | None = None) -> str:
    params: dict[str, Any] = {"tool": tool, "prompt": prompt, "priority": priority,
                              "context": {"delay_ms": delay_ms, "steps": steps}}
    if agent:
        params["agent"] = agent
    return str(result(base, "run_task", params)["task_id"])


def status_of(base: str, task_id: str) -> dict[str, Any]:
    return dict(result(base, "get_task", {"task_id": task_id}))


def wait_running(base: str, *task_ids: str) -> None:
    wait_until(lambda: all(status_of(base, t)["status"] == "running" for t in task_ids), 30, "tasks to run")


def start_order(base: str, task_ids: list[str]) -> list[dict[str, Any]]:
    records = [finished(base, t, timeout_s=60) for t in task_ids]
    assert all(r["status"] == "succeeded" for r in records), records
    return sorted(records, key=lambda r: r["created_at"] + r["queue_wait_ms"] / 1000)


def test_queued_tasks_start_by_priority_then_age(system: Deployed) -> None:
    base = system.base_url
    blocker = submit(base, "serial", "blocker", priority=9, delay_ms=60_000, steps=600)
    wait_running(base, blocker)
    priorities = [3, 7, 1, 7, 5, 9, 3, 0, 9, 5]
    # 5 ms each, so that one slot's starts are apart at the records' millisecond resolution
    queued = [submit(base, "serial", f"p{p}-{i}", priority=p, delay_ms=5) for i, p in enumerate(priorities)]
    assert result(base, "status")["matrix"]["codegen"] == {"0": 1, "1": 1, "3": 2, "5": 2, "7": 2, "9": 2}
    result(base, "cancel_task", {"task_id": blocker})
    order = start_order(base, queued)
    assert [r["priority"] for r in order] == sorted(priorities, reverse=True)
    for earlier, later in zip(order, order[1:]):
        if earlier["priority"] == later["priority"]:
            assert earlier["created_at"] < later["created_at"]


def test_tenants_share_a_priority_fairly(system: Deployed) -> None:
    base = system.base_url
    blocker = submit(base, "serial", "blocker", priority=9, delay_ms=60_000, steps=600)
    wait_running(base, blocker)
    flood = [submit(base, "serial", f"a{i}", agent="alice", delay_ms=5) for i in range(6)]  # starts 5 ms apart
    polite = [submit(base, "serial", f"b{i}", agent="bob", delay_ms=5) for i in range(2)]
    result(base, "cancel_task", {"task_id": blocker})
    agents = [r["agent"] for r in start_order(base, flood + polite)]
    assert agents[:4] == ["alice", "bob", "alice", "bob"], agents


def test_priority_10_preempts_the_lowest_and_the_victim_resumes(system: Deployed) -> None:
    base = system.base_url
    slots = system.settings.pools["reasoning"].slots
    low = [submit(base, "echo", f"low{i}", priority=1 + i, delay_ms=3000, steps=10) for i in range(slots)]
    waiting = [submit(base, "echo", f"wait{i}", priority=5) for i in range(3)]
    wait_until(lambda: all((status_of(base, t).get("progress") or {}).get("step", 0) >= 1 for t in low), 30,
               "every low task to checkpoint a step")
    urgent = result(base, "run_task", {"tool": "echo", "prompt": "urgent", "priority": 10, "wait": 30})
    assert urgent["status"] == "succeeded" and urgent["result"]["text"] == "urgent"
    urgent_start = urgent["created_at"] + urgent["queue_wait_ms"] / 1000
    records = {t: finished(base, t, timeout_s=60) for t in low + waiting}
    assert all(records[t]["finished_at"] > urgent_start for t in low), "a low task finished before urgent started"
    assert all(records[t]["created_at"] + records[t]["queue_wait_ms"] / 1000 >= urgent_start for t in waiting)
    victims = [records[t] for t in low if records[t]["preemptions"]]
    assert [v["prompt"] for v in victims] == ["low0"], "exactly the lowest-priority task is preempted"
    victim = victims[0]
    assert victim["status"] == "succeeded" and victim["result"] == {"text": "low0", "steps": 10}
    assert victim["preemptions"] == 1 and victim["attempts"] == 2 and victim["restarts"] == 0
    assert victim["resumed_from"]["step"] >= 1, "resumed from its checkpoint, not from zero"
    assert victim["progress"] == {"step": 10, "steps": 10}
    others = [records[t] for t in low[1:] + waiting]
    assert all(r["status"] == "succeeded" and r["attempts"] == 1 and r["preemptions"] == 0 for r in others)


def test_non_preemptible_tasks_are_left_alone(system: Deployed) -> None:
    base = system.base_url
    sticky = [submit(base, "sticky", f"s{i}", priority=0, delay_ms=1500, steps=3) for i in range(2)]
    wait_running(base, *sticky)
    urgent = submit(base, "sticky", "urgent", priority=10)
    urgent_record = finished(base, urgent, timeout_s=30)
    records = [finished(base, t) for t in sticky]
    assert all(r["preemptions"] == 0 and r["attempts"] == 1 and r["status"] == "succeeded" for r in records)
    urgent_start = urgent_record["created_at"] + urgent_record["queue_wait_ms"] / 1000
    assert urgent_start >= min(r["finished_at"] for r in records) - 0.001  # times are whole ms


def test_status_lists_running_tasks_with_priority_and_worker(system: Deployed) -> None:
    base = system.base_url
    task_id = submit(base, "serial", "visible", priority=4, delay_ms=30_000, steps=300)
    wait_running(base, task_id)
    running = {r["task_id"]: r for r in result(base, "status")["running"]}
    assert running[task_id]["priority"] == 4 and running[task_id]["worker"] == "worker:codegen:0"
    result(base, "cancel_task", {"task_id": task_id})
    finished(base, task_id)


def test_aging_lets_low_priority_work_through_sustained_load(aging_system: Deployed) -> None:
    base = aging_system.base_url
    blocker = submit(base, "serial", "blocker", priority=9, delay_ms=60_000, steps=600)
    wait_running(base, blocker)
    old_low = submit(base, "serial", "old-low", priority=1)
    flood = [submit(base, "serial", f"f{i}", priority=5, delay_ms=50) for i in range(40)]
    result(base, "cancel_task", {"task_id": blocker})
    order = [r["prompt"] for r in start_order(base, [old_low, *flood])]
    assert order.index("old-low") < len(order) - 1, "the aged task never overtook the flood"
