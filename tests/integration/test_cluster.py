"""The same orchestrator on a real 3-master Redis Cluster: tasks in shards spread over the masters, every script
on one slot, two router shards holding their leases, and the faces working as on one server."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import ray
import redis

from orchestrator.adapters.keys import Keys
from orchestrator.naming import router_name
from tests.conftest import Deployed, deployed, make_settings
from tests.faults.load import all_terminal, rpc_batch, submit
from tests.integration.test_spine import finished, result
from tests.support import RedisCluster, wait_until

pytestmark = pytest.mark.integration

SHARDS = 6
WORKFLOW = {"name": "greet", "steps": [
    {"name": "hello", "tool": "echo", "input": {"prompt": "hello {{ input.who }}"}},
    {"name": "again", "tool": "echo", "input": {"prompt": "{{ steps.hello.output.text }}!"}}]}


@pytest.fixture(scope="module")
def system(redis_cluster: RedisCluster, ray_session: int) -> Iterator[Deployed]:
    settings = make_settings(redis_cluster.url, redis={"shards": SHARDS}, router={"replicas": 2, "lease_s": 2},
                             pools={"reasoning": {"workers": 2, "slots": 4}, "codegen": {"workers": 1, "slots": 1}},
                             tools={"serial": {"kind": "echo", "worker_type": "codegen"}},
                             workflows={"greet": WORKFLOW})
    with deployed(settings, ray_session) as running:
        yield running


def masters_of(cluster: RedisCluster, prefix: str) -> set[int]:
    """The ports of the masters holding the shards' slots."""
    client = redis.Redis(port=cluster.ports[0], decode_responses=True)
    try:
        slots = client.execute_command("CLUSTER", "SLOTS")
        owner = {}
        for start, end, master, *_ in slots:
            for slot in range(int(start), int(end) + 1):
                owner[slot] = int(master[1])
        keys = Keys(prefix)
        return {owner[int(client.execute_command("CLUSTER", "KEYSLOT", keys.shard(s).active))] for s in range(SHARDS)}
    finally:
        client.close()


def test_shards_spread_over_the_masters_and_every_router_holds_some(system: Deployed,
                                                                    redis_cluster: RedisCluster) -> None:
    assert len(masters_of(redis_cluster, system.settings.redis.prefix)) >= 2
    owned: dict[str, Any] = {}

    def both_hold_leases() -> bool:
        for i in range(2):
            handle = ray.get_actor(router_name(i), namespace=system.settings.namespace)
            owned[router_name(i)] = ray.get(handle.owned.remote(), timeout=30)
        return all(o["shards"] for o in owned.values())

    wait_until(both_hold_leases, 30, "both routers to hold shard leases")
    shards = [s for o in owned.values() for s in o["shards"]]
    assert sorted(shards) == list(range(SHARDS)), owned  # each shard held once
    assert sum(o["pools"] for o in owned.values()) == 1  # one pool manager


def test_tasks_run_once_each_across_the_shards(system: Deployed) -> None:
    load = [{"tool": "echo", "prompt": f"c{i}", "priority": i % 11} for i in range(300)]
    ids = submit(system.base_url, load)
    assert len({task_id.partition("-")[0] for task_id in ids}) >= 2, "batches spread over shards"
    records = all_terminal(system.base_url, ids, timeout_s=120)
    assert all(r["status"] == "succeeded" and r["result"]["text"] == p["prompt"] and r["attempts"] == 1
               for r, p in zip((records[t] for t in ids), load, strict=True))
    listed: list[str] = []  # list_tasks merges the shards (on several masters): each task once, newest first
    page: dict[str, Any] = {"next_cursor": None}
    while True:
        params = {"tool": "echo", "status": "succeeded", "limit": 100, "cursor": page["next_cursor"]}
        page = result(system.base_url, "list_tasks", {k: v for k, v in params.items() if v is not None})
        listed += [row["task_id"] for row in page["tasks"] if row["task_id"] in records]
        if page["next_cursor"] is None:
            break
    assert listed == sorted(ids, key=lambda t: (round(records[t]["created_at"] * 1000), t), reverse=True)


def test_priority_order_holds_on_the_cluster(system: Deployed) -> None:
    base = system.base_url
    blocker = result(base, "run_task", {"tool": "serial", "prompt": "b", "priority": 9,
                                        "context": {"delay_ms": 30_000, "steps": 300}})["task_id"]
    wait_until(lambda: result(base, "get_task", {"task_id": blocker})["status"] == "running", 30, "the blocker")
    priorities = [3, 8, 1, 6, 10, 0]
    queued = [result(base, "run_task", {"tool": "serial", "prompt": f"p{p}", "priority": p,  # 5 ms: starts apart
                                        "context": {"delay_ms": 5}})["task_id"]
              for p in priorities]
    result(base, "cancel_task", {"task_id": blocker})
    records = sorted((finished(base, t, 60) for t in queued), key=lambda r: r["created_at"] + r["queue_wait_ms"] / 1000)
    assert [r["priority"] for r in records] == sorted(priorities, reverse=True)


def test_idempotency_fanout_cancel_and_events_work_as_on_one_server(system: Deployed) -> None:
    base = system.base_url
    params = {"tool": "echo", "prompt": "once", "idempotency_key": "cluster-key"}
    first, again = (result(base, "run_task", params) for _ in range(2))
    assert again["task_id"] == first["task_id"] and again["duplicate"] is True
    parent = result(base, "run_task", {"tool": "echo", "prompt": "parent", "wait": 30,
                                       "children": [{"tool": "echo", "prompt": "child"}]})
    child = finished(base, parent["children"][0])
    assert child["status"] == "succeeded" and child["parent"] == parent["task_id"]
    long = result(base, "run_task", {"tool": "echo", "prompt": "l", "context": {"delay_ms": 60_000, "steps": 600}})
    wait_until(lambda: result(base, "get_task", {"task_id": long["task_id"]})["status"] == "running", 30, "start")
    result(base, "cancel_task", {"task_id": long["task_id"]})
    assert finished(base, long["task_id"])["status"] == "cancelled"
    events = httpx.get(f"{base}/v1/tasks/{parent['task_id']}/events", timeout=30).text
    assert [line.split(": ")[1] for line in events.splitlines() if line.startswith("event:")] == \
        ["queued", "running", "progress", "succeeded"]


def test_sagas_status_analytics_and_metrics_on_the_cluster(system: Deployed) -> None:
    base = system.base_url
    saga = result(base, "run_saga", {"workflow": "greet", "input": {"who": "cluster"}})
    wait_until(lambda: result(base, "get_saga", {"saga_id": saga["saga_id"]})["status"] == "succeeded", 60, "saga")
    steps = result(base, "get_saga", {"saga_id": saga["saga_id"]})["steps"]
    assert steps[-1]["output"]["text"] == "hello cluster!"
    assert [s["saga_id"] for s in result(base, "list_sagas", {"workflow": "greet"})["sagas"]] == [saga["saga_id"]]
    status = result(base, "status")
    assert {p["worker_type"]: p["workers"] for p in status["pools"]}["reasoning"] == 2
    analytics = result(base, "analytics", {"window_s": 600})
    assert analytics["overall"]["tasks"] >= 300
    metrics = httpx.get(f"{base}/metrics", timeout=30).text
    assert 'orchestrator_tasks_finished_total{status="succeeded",worker_type="reasoning"}' in metrics
    dead = rpc_batch(base, [("control", {"action": "dead_letters"})])[0]["result"]["dead_letters"]
    assert dead == []
    assert Counter(r["status"] for r in [finished(base, saga_step["attempts"][-1]["task_id"]) for saga_step in steps]) \
        == {"succeeded": 2}
