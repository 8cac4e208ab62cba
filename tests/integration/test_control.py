"""Operator control through the API: resize pools (surplus workers drain without losing a task),
pause and resume a pool, drain one worker, preempt a task by hand — each audited."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import ray

from tests.conftest import Deployed, deployed, make_settings
from tests.integration.test_spine import finished, result, rpc
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int) -> Iterator[Deployed]:
    settings = make_settings(redis_server.url, pools={"reasoning": {"workers": 1, "slots": 2}})
    with deployed(settings, ray_session) as running:
        yield running


def control(system: Deployed, **params: Any) -> dict[str, Any]:
    return dict(result(system.base_url, "control", params))


def pool(system: Deployed, worker_type: str = "reasoning") -> dict[str, Any]:
    status = result(system.base_url, "status")
    found = next(p for p in status["pools"] if p["worker_type"] == worker_type)
    found["names"] = sorted(w["name"] for w in status["workers"] if w["worker_type"] == worker_type)
    return dict(found)


def submit(system: Deployed, n: int, delay_ms: int) -> list[str]:
    return [result(system.base_url, "run_task", {"tool": "echo", "prompt": f"t{i}",
                                                 "context": {"delay_ms": delay_ms, "steps": 4}})["task_id"]
            for i in range(n)]


def test_scale_up_then_down_drains_without_losing_a_task(system: Deployed) -> None:
    control(system, action="scale", worker_type="reasoning", workers=3)
    assert pool(system)["names"] == ["worker:reasoning:0", "worker:reasoning:1", "worker:reasoning:2"]
    for name in pool(system)["names"]:  # started: else the first worker may finish its two before the others take any
        ray.get(ray.get_actor(name, namespace=system.settings.namespace).ready.remote(), timeout=60)
    ids = submit(system, 6, delay_ms=1500)  # 6 tasks over 3 workers × 2 slots: every worker busy
    wait_until(lambda: pool(system)["running"] == 6, 30, "every slot to be busy")
    control(system, action="scale", worker_type="reasoning", workers=1)
    draining = [w for w in result(system.base_url, "status")["workers"] if w["draining"]]
    assert {w["name"] for w in draining} == {"worker:reasoning:1", "worker:reasoning:2"}
    records = [finished(system.base_url, task_id) for task_id in ids]
    assert [r["status"] for r in records] == ["succeeded"] * 6  # drained workers finished theirs
    assert all(r["attempts"] == 1 for r in records)  # nothing was taken away and run again
    wait_until(lambda: pool(system)["names"] == ["worker:reasoning:0"], 30, "the drained workers to retire")
    more = submit(system, 2, delay_ms=0)
    assert all(finished(system.base_url, t)["worker"] == "worker:reasoning:0" for t in more)


def test_pause_holds_queued_tasks_until_resume(system: Deployed) -> None:
    control(system, action="pause", worker_type="reasoning")
    assert pool(system)["paused"] is True
    ids = submit(system, 2, delay_ms=0)
    wait_until(lambda: pool(system)["queued"] == 2, 10, "the tasks to be queued")
    assert all(result(system.base_url, "get_task", {"task_id": t})["status"] == "queued" for t in ids)
    control(system, action="resume", worker_type="reasoning")
    assert all(finished(system.base_url, t)["status"] == "succeeded" for t in ids)


def test_preempt_by_hand_checkpoints_and_resumes(system: Deployed) -> None:
    task_id = submit(system, 1, delay_ms=2000)[0]
    wait_until(lambda: (result(system.base_url, "get_task", {"task_id": task_id})["checkpoints"] or 0) >= 1, 30,
               "a first checkpoint")
    assert control(system, action="preempt", task_id=task_id)["done"] is True
    record = finished(system.base_url, task_id)
    assert record["status"] == "succeeded" and record["preemptions"] == 1 and record["resumed_from"] is not None


def test_every_change_is_audited_and_bad_actions_name_the_field(system: Deployed) -> None:
    control(system, action="scale", worker_type="codegen", workers=1)
    entries = control(system, action="audit_log", count=20)["audit_log"]
    latest = entries[0]
    assert latest["action"] == "scale" and latest["who"] == "anonymous"
    assert latest["details"] == {"worker_type": "codegen", "workers": 1, "done": True}
    assert {"pause", "resume", "preempt"} <= {e["action"] for e in entries}
    missing = rpc(system.base_url, "control", {"action": "scale", "worker_type": "reasoning"})
    assert missing["error"]["data"]["fields"] == {"params.workers": "required for action 'scale'"}
    unknown = rpc(system.base_url, "control", {"action": "pause", "worker_type": "gpu"})
    assert "no pool 'gpu'" in unknown["error"]["data"]["fields"]["params.worker_type"]


def test_inject_adds_and_corrects_queued_tasks_with_an_audit(system: Deployed) -> None:
    control(system, action="pause", worker_type="reasoning")
    try:
        added = result(system.base_url, "inject", {"action": "add", "task": {
            "tool": "echo", "input": {"prompt": "by hand"}, "priority": 2}}, path="v1/inject")
        low = result(system.base_url, "run_task", {"tool": "echo", "prompt": "first in line", "priority": 5})
        corrected = result(system.base_url, "inject", {"action": "correct", "task_id": added["task_id"],
                                                       "priority": 9, "input": {"prompt": "corrected"}})
        assert corrected["requeued"] is True and corrected["status"] == "queued"
        record = result(system.base_url, "get_task", {"task_id": added["task_id"]})
        assert record["priority"] == 9 and record["input"] == {"prompt": "corrected"}
        bad = rpc(system.base_url, "inject", {"action": "correct", "task_id": added["task_id"],
                                              "input": {"prompt": 3}})
        assert bad["error"]["code"] == -32602 and "params.input.prompt" in bad["error"]["data"]["fields"]
    finally:
        control(system, action="resume", worker_type="reasoning")
    done = finished(system.base_url, added["task_id"])
    first = finished(system.base_url, low["task_id"])
    assert done["result"]["text"] == "corrected"  # the worker ran the corrected input
    assert done["started_at"] <= first["started_at"]  # and its new priority put it first
    late = rpc(system.base_url, "inject", {"action": "correct", "task_id": added["task_id"], "priority": 1})
    assert "only a task that has not started" in late["error"]["data"]["fields"]["params.task_id"]
    audit = control(system, action="audit_log", count=10)["audit_log"]
    actions = [e["action"] for e in audit]
    assert "inject.add" in actions and "inject.correct" in actions
    correction = next(e for e in audit if e["action"] == "inject.correct")
    assert correction["details"] == {"task_id": added["task_id"], "priority": 9, "input": {"prompt": "corrected"}}
