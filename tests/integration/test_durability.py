"""Durability: checkpoints, heartbeats and the stuck-task sweep, dead letters, event streams over SSE."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import ray

from orchestrator.inputs import APPROVAL_SCHEMA
from tests.conftest import Deployed, deployed, make_settings
from tests.integration.test_spine import finished, result, rpc
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration

WORKER = "worker:reasoning:0"


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int) -> Iterator[Deployed]:
    settings = make_settings(
        redis_server.url,
        pools={"reasoning": {"workers": 1, "slots": 2}},
        router={"visibility_timeout_s": 2, "heartbeat_interval_s": 0.3, "max_attempts": 2},
    )
    with deployed(settings, ray_session) as running:
        yield running


def worker_pid(system: Deployed) -> int:
    """The worker's pid, once it answers (it may be restarting)."""
    pids: list[int] = []

    def answered() -> bool:
        handle = ray.get_actor(WORKER, namespace=system.settings.namespace)
        try:
            pids.append(int(ray.get(handle.__ray_call__.remote(lambda _self: os.getpid()), timeout=10)))
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            return False
        return True

    wait_until(answered, 60, f"{WORKER} to answer")
    return pids[-1]


def start_long_task(base: str, steps: int = 10, delay_ms: int = 4000) -> str:
    task_id = str(result(base, "run_task", {"tool": "echo", "prompt": "long",
                                            "context": {"delay_ms": delay_ms, "steps": steps}})["task_id"])
    wait_until(lambda: (result(base, "get_task", {"task_id": task_id}).get("checkpoint") or {}).get("step", 0) >= 1,
               30, "the task to checkpoint a step")
    return task_id


def sse_events(base: str, task_id: str, last_event_id: str | None = None) -> list[dict[str, Any]]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{base}/v1/tasks/{task_id}/events", headers=headers, timeout=30) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        event: dict[str, Any] = {}
        for line in response.iter_lines():
            if line.startswith(("id", "event", "data")):
                key, _, value = line.partition(": ")
                event[key] = value
            elif not line and event:
                events.append(event)
                event = {}
    return events


def test_checkpoints_are_counted_and_the_latest_shown(system: Deployed) -> None:
    record = result(system.base_url, "run_task",
                    {"tool": "echo", "prompt": "c", "context": {"delay_ms": 30, "steps": 4}, "wait": 30})
    assert record["status"] == "succeeded"
    assert record["checkpoints"] == 3 and record["checkpoint"] == {"step": 3}  # none after the last step


def test_sse_replays_history_follows_live_and_resumes(system: Deployed) -> None:
    base = system.base_url
    task_id = result(base, "run_task", {"tool": "echo", "prompt": "s", "context": {"delay_ms": 600, "steps": 3}})[
        "task_id"]
    events = sse_events(base, task_id)  # connects while the task runs; ends at its final event
    assert [e["event"] for e in events] == ["queued", "running", "progress", "progress", "progress", "succeeded"]
    assert '"text":"s"' in events[-1]["data"]
    resumed = sse_events(base, task_id, last_event_id=events[2]["id"])
    assert [e["id"] for e in resumed] == [e["id"] for e in events[3:]]
    assert httpx.get(f"{base}/v1/tasks/nope/events", timeout=10).status_code == 404
    bad = httpx.get(f"{base}/v1/tasks/{task_id}/events", headers={"Last-Event-ID": "x"}, timeout=10)
    assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["error"]["data"]["fields"]


def test_a_silent_worker_is_replaced_and_its_task_resumes(system: Deployed) -> None:
    base = system.base_url
    task_id = start_long_task(base)
    pid = worker_pid(system)
    os.kill(pid, signal.SIGSTOP)  # alive but silent: no heartbeats, no progress
    try:
        record = finished(base, task_id, timeout_s=60)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the router had it killed, as it should
            os.kill(pid, signal.SIGCONT)
    assert record["status"] == "succeeded" and record["result"] == {"text": "long", "steps": 10}
    assert record["attempts"] == 2 and WORKER in record["last_failure"]
    assert record["resumed_from"]["step"] >= 1
    assert worker_pid(system) != pid


def test_exhausted_attempts_go_to_dead_letters_and_can_be_requeued(system: Deployed) -> None:
    base = system.base_url
    task_id = start_long_task(base, steps=4, delay_ms=2000)
    for attempt in range(1, system.settings.router.max_attempts + 1):
        def running(attempt: int = attempt) -> bool:
            record = result(base, "get_task", {"task_id": task_id})
            return bool(record["status"] == "running" and record["attempts"] == attempt)

        wait_until(running, 30, f"attempt {attempt} to run")
        os.kill(worker_pid(system), signal.SIGKILL)
    record = finished(base, task_id, timeout_s=60)
    assert record["status"] == "failed" and record["error"]["code"] == -32007
    assert "gave up after 2 attempts" in record["error"]["message"] and "died" in record["error"]["message"]
    letters = result(base, "control", {"action": "dead_letters"}, path="v1/control")["dead_letters"]
    assert [d["task_id"] for d in letters] == [task_id] and letters[0]["attempts"] == 2
    assert result(base, "control", {"action": "requeue", "task_id": task_id})["requeued"] == task_id
    record = finished(base, task_id, timeout_s=60)
    assert record["status"] == "succeeded" and record["dead_letter"] is None
    assert result(base, "control", {"action": "dead_letters"})["dead_letters"] == []
    bad = httpx.post(f"{base}/v1/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "control",
                                             "params": {"action": "requeue", "task_id": task_id}}, timeout=10).json()
    assert bad["error"]["data"]["fields"] == {"params.task_id": "not a dead letter"}


def test_fanout_children_receive_the_result_and_are_linked(system: Deployed) -> None:
    base = system.base_url
    children = [{"tool": "echo", "prompt": "child-a"},
                {"tool": "echo", "input": {"prompt": "child-b", "steps": 2}, "priority": 9}]
    parent = result(base, "run_task", {"tool": "echo", "prompt": "parent", "children": children,
                                       "context": {"delay_ms": 300}, "wait": 30})
    assert parent["status"] == "succeeded" and len(parent["children"]) == 2
    kids = [finished(base, child_id) for child_id in parent["children"]]
    assert [k["result"]["text"] for k in kids] == ["child-a", "child-b"]
    assert all(k["result"]["parent_result"] == {"text": "parent", "steps": 1} for k in kids)
    assert all(k["parent"] == parent["task_id"] and k["status"] == "succeeded" for k in kids)
    assert all(k["context"] == {} for k in kids)  # the record keeps what was asked for
    assert [k["priority"] for k in kids] == [5, 9]
    events = sse_events(base, parent["children"][0])
    assert [e["event"] for e in events][:2] == ["waiting", "queued"]


def test_children_of_a_failed_or_cancelled_parent_are_cancelled(system: Deployed) -> None:
    base = system.base_url
    past = "2000-01-01T00:00:00+00:00"
    failed = result(base, "run_task", {"tool": "echo", "input": {"prompt": "p"}, "deadline": past, "wait": 30,
                                       "children": [{"tool": "echo", "prompt": "never"}]}, path="v2/rpc")
    assert failed["status"] == "failed"
    child = finished(base, failed["children"][0])
    assert child["status"] == "cancelled" and child["error"]["code"] == -32008 and child["attempts"] == 0
    parent = result(base, "run_task", {"tool": "echo", "prompt": "p", "context": {"delay_ms": 20_000, "steps": 200},
                                       "children": [{"tool": "echo", "prompt": "never"}]})
    waiting = result(base, "get_task", {"task_id": parent["task_id"]})["children"][0]
    assert result(base, "get_task", {"task_id": waiting})["status"] == "waiting"
    result(base, "cancel_task", {"task_id": parent["task_id"]})
    assert finished(base, waiting)["status"] == "cancelled"


def test_bad_children_name_the_field(system: Deployed) -> None:
    reply = httpx.post(f"{system.base_url}/v1/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "run_task", "params": {
        "tool": "echo", "prompt": "p", "children": [{"tool": "nope", "prompt": "x"}, {"tool": "echo"}]}},
        timeout=10).json()
    assert set(reply["error"]["data"]["fields"]) == {"params.children.0.tool", "params.children.1"}


ASK = {"key": "go", "message": "Deploy?", "schema": APPROVAL_SCHEMA}


def asking_task(base: str, prompt: str) -> str:
    params = {"tool": "echo", "input": {"prompt": prompt, "ask": ASK}}
    return str(result(base, "run_task", params, path="v2/rpc")["task_id"])


def waiting_for_input(base: str, task_id: str) -> dict[str, Any]:
    record: dict[str, Any] = {}

    def asked() -> bool:
        record.update(result(base, "get_task", {"task_id": task_id}))
        return record["status"] == "input_required"

    wait_until(asked, 30, f"task {task_id} to ask for input")
    return record


def test_a_task_asking_for_input_frees_its_slot_and_resumes_with_the_answer(system: Deployed) -> None:
    base = system.base_url
    asking = [asking_task(base, f"asks-{i}") for i in range(system.settings.pools["reasoning"].slots)]
    record = waiting_for_input(base, asking[0])
    waiting_for_input(base, asking[1])
    assert record["input_requests"]["go"]["message"] == "Deploy?" and record["input_requests"]["go"]["schema"] == (
        APPROVAL_SCHEMA)
    meanwhile = result(base, "run_task", {"tool": "echo", "prompt": "meanwhile", "wait": 30})
    assert meanwhile["status"] == "succeeded"  # every slot was free: the waiting tasks hold none
    refused = rpc(base, "provide_input", {"task_id": asking[0], "input": {"approve": "yes"}})["error"]
    assert refused["code"] == -32602 and set(refused["data"]["fields"]) == {"params.input.approve"}
    answer = {"task_id": asking[0], "input": {"approve": True}}
    assert result(base, "provide_input", answer) == {"task_id": asking[0], "key": "go", "status": "queued",
                                                     "duplicate": False}
    record = finished(base, asking[0])
    assert record["status"] == "succeeded" and record["result"]["answer"] == {"approve": True}
    assert record["attempts"] == 2 and record["inputs"] == {"go": {"action": "accept", "content": {"approve": True}}}
    assert result(base, "provide_input", answer)["duplicate"] is True  # delivered twice: nothing changes
    late = rpc(base, "provide_input", {"task_id": asking[0], "key": "other", "input": {}})["error"]
    assert late["code"] == -32015 and "not waiting for input" in late["message"]
    kinds = [e["event"] for e in sse_events(base, asking[0])]
    assert kinds == ["queued", "running", "input_required", "input_received", "queued", "running", "progress",
                     "succeeded"]
    assert result(base, "cancel_task", {"task_id": asking[1]})["status"] == "cancelled"
    gone = rpc(base, "provide_input", {"task_id": asking[1], "input": {"approve": True}})["error"]
    assert gone["code"] == -32015 and "cancelled" in gone["message"]


def test_a_task_waiting_for_input_survives_its_worker_and_resumes(system: Deployed) -> None:
    base = system.base_url
    task_id = asking_task(base, "outlives")
    waiting_for_input(base, task_id)
    pid = worker_pid(system)
    os.kill(pid, signal.SIGKILL)
    assert worker_pid(system) != pid  # a new incarnation, which holds nothing of it
    assert result(base, "get_task", {"task_id": task_id})["status"] == "input_required"
    result(base, "provide_input", {"task_id": task_id, "input": {"approve": False, "comment": "not today"}})
    record = finished(base, task_id, timeout_s=60)
    assert record["status"] == "succeeded" and record["result"]["answer"] == {"approve": False,
                                                                             "comment": "not today"}
    assert record["attempts"] == 2 and record["last_failure"] is None  # an input round is no lost attempt


def test_a_task_waiting_for_input_fails_at_its_deadline_unanswered(system: Deployed) -> None:
    """The deadline keeps counting while nobody answers: at it, the task fails (and stops counting against its
    tenant's open tasks); an answer coming after that is refused."""
    deadline = datetime.now(UTC) + timedelta(seconds=2)
    params = {"tool": "echo", "input": {"prompt": "late", "ask": ASK}, "deadline": deadline.isoformat()}
    task_id = str(result(system.base_url, "run_task", params, path="v2/rpc")["task_id"])
    waiting_for_input(system.base_url, task_id)
    record = finished(system.base_url, task_id)
    assert record["status"] == "failed" and record["error"]["message"] == "deadline passed while it waited for input"
    assert record["finished_at"] >= deadline.timestamp(), record
    late = rpc(system.base_url, "provide_input", {"task_id": task_id, "input": {"approve": True}})
    assert late["error"]["code"] == -32015, late
