"""kill -9 the router mid-load: Ray restarts it, it re-attaches to running tasks; nothing lost or run twice."""

from __future__ import annotations

import os
import signal

import pytest
import ray

from orchestrator.naming import ROUTER_NAME
from tests.conftest import Deployed
from tests.integration.test_spine import finished, result
from tests.support import wait_until

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
