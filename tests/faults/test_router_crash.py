"""kill -9 the router mid-load: Ray restarts it, it re-attaches to running tasks; nothing lost or run twice."""

from __future__ import annotations

import os
import signal

import pytest
import ray

from orchestrator.naming import ROUTER_NAME
from tests.conftest import Deployed, deployed, make_settings
from tests.integration.test_spine import finished, result
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration


def actor_pid(name: str, namespace: str) -> int:
    handle = ray.get_actor(name, namespace=namespace)
    return int(ray.get(handle.__ray_call__.remote(lambda _self: os.getpid()), timeout=30))


def test_router_killed_while_tasks_run_and_queue(orchestrator: Deployed) -> None:
    base = orchestrator.base_url
    running = [result(base, "run_task", {"tool": "echo", "prompt": f"r{i}",
                                         "context": {"delay_ms": 3000, "steps": 10}})["task_id"] for i in range(4)]
    queued = [result(base, "run_task", {"tool": "echo", "prompt": f"q{i}"})["task_id"] for i in range(6)]
    wait_until(lambda: all(result(base, "get_task", {"task_id": t})["status"] == "running" for t in running),
               20, "the long tasks to start")
    old_pid = actor_pid(ROUTER_NAME, orchestrator.settings.namespace)
    os.kill(old_pid, signal.SIGKILL)
    after = [result(base, "run_task", {"tool": "echo", "prompt": f"a{i}"})["task_id"] for i in range(4)]
    records = {t: finished(base, t, timeout_s=60) for t in running + queued + after}
    assert actor_pid(ROUTER_NAME, orchestrator.settings.namespace) != old_pid
    assert all(r["status"] == "succeeded" for r in records.values()), records
    assert all(r["attempts"] == 1 for r in records.values()), "a task was dispatched twice"
    texts = sorted(r["result"]["text"] for r in records.values())
    assert texts == sorted([f"r{i}" for i in range(4)] + [f"q{i}" for i in range(6)] + [f"a{i}" for i in range(4)])


def test_queue_order_is_rebuilt_from_redis_after_a_router_kill(redis_server: RedisServer, ray_session: int) -> None:
    settings = make_settings(redis_server.url, tools={"serial": {"kind": "echo", "worker_type": "codegen"}},
                             pools={"codegen": {"workers": 1, "slots": 1}}, router={"aging_interval_s": 0})
    with deployed(settings, ray_session) as system:
        base = system.base_url
        blocker = result(base, "run_task", {"tool": "serial", "prompt": "blocker", "priority": 9,
                                            "context": {"delay_ms": 60_000, "steps": 600}})["task_id"]
        wait_until(lambda: result(base, "get_task", {"task_id": blocker})["status"] == "running", 20, "blocker")
        priorities = [2, 8, 5, 0, 8, 3]
        queued = [result(base, "run_task", {"tool": "serial", "prompt": f"p{p}", "priority": p})["task_id"]
                  for p in priorities]
        wait_until(lambda: sum(result(base, "status")["matrix"]["codegen"].values()) == len(priorities), 20,
                   "the router to have read every queued task")
        os.kill(actor_pid(ROUTER_NAME, settings.namespace), signal.SIGKILL)
        result(base, "cancel_task", {"task_id": blocker})
        records = [finished(base, t, timeout_s=60) for t in queued]
        order = sorted(records, key=lambda r: r["created_at"] + r["queue_wait_ms"] / 1000)
        assert [r["priority"] for r in order] == sorted(priorities, reverse=True)
        assert all(r["attempts"] == 1 for r in records)
