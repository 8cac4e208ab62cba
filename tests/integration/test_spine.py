"""End to end over real HTTP: Serve ingress → Redis stream → router → worker → result."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests import redis_view
from tests.conftest import Deployed
from tests.support import wait_until

pytestmark = pytest.mark.integration


def rpc(base_url: str, method: str, params: Any = None, *, path: str = "v1/rpc", id: Any = 1) -> Any:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        body["params"] = params
    reply = httpx.post(f"{base_url}/{path}", json=body, timeout=60)
    reply.raise_for_status()
    return reply.json()


def result(base_url: str, method: str, params: Any = None, path: str = "v1/rpc") -> Any:
    reply = rpc(base_url, method, params, path=path)
    assert "error" not in reply, reply
    return reply["result"]


def finished(base_url: str, task_id: str, timeout_s: float = 30) -> dict[str, Any]:
    record: dict[str, Any] = {}

    def done() -> bool:
        record.update(result(base_url, "get_task", {"task_id": task_id}))
        return record["status"] in ("succeeded", "failed", "cancelled")

    wait_until(done, timeout_s, f"task {task_id} to finish")
    return record


def test_echo_round_trip_with_wait(orchestrator: Deployed) -> None:
    record = result(orchestrator.base_url, "run_task", {"tool": "echo", "prompt": "hello", "wait": 30})
    assert record["status"] == "succeeded"
    assert record["result"] == {"text": "hello", "steps": 1}
    assert record["attempts"] == 1
    assert record["worker"].startswith("worker:reasoning:")
    assert record["created_at"] <= record["started_at"] <= record["finished_at"]
    assert record["queue_wait_ms"] >= 0 and record["run_ms"] >= 0


def test_submit_then_poll_and_progress(orchestrator: Deployed) -> None:
    accepted = result(orchestrator.base_url, "run_task",
                      {"tool": "echo", "prompt": "steps", "context": {"delay_ms": 200, "steps": 4}})
    assert accepted == {"task_id": accepted["task_id"], "status": "queued", "duplicate": False}
    record = finished(orchestrator.base_url, accepted["task_id"])
    assert record["status"] == "succeeded"
    assert record["result"] == {"text": "steps", "steps": 4}
    assert record["progress"] == {"step": 4, "steps": 4}
    assert record["run_ms"] >= 200


def test_task_is_durable_before_acknowledged(orchestrator: Deployed) -> None:
    """The answer comes only after the record exists in Redis, in the shard its id names, stored once."""
    accepted = result(orchestrator.base_url, "run_task", {"tool": "echo", "prompt": "x" * 100, "priority": 7,
                                                          "agent": "alice"})
    client = redis_view.client(orchestrator.settings)
    record = redis_view.stored(client, orchestrator.settings, accepted["task_id"])
    assert record is not None and record["i"] == accepted["task_id"]
    assert record["t"] == "echo" and record["p"] == 7 and record["a"] == "alice" and record["w"] == "reasoning"
    assert json.loads(record["inp"]) == {"prompt": "x" * 100}
    record.pop("r", None)  # the result (echo's is its prompt) may be there already
    assert json.dumps(record).count("x" * 100) == 1, "the prompt is stored once"
    finished(orchestrator.base_url, accepted["task_id"])


def test_idempotency_key_returns_same_task(orchestrator: Deployed) -> None:
    params = {"tool": "echo", "prompt": "once", "idempotency_key": f"k-{time.time_ns()}"}
    first = result(orchestrator.base_url, "run_task", params)
    second = result(orchestrator.base_url, "run_task", params)
    assert second["task_id"] == first["task_id"] and second["duplicate"] is True
    assert finished(orchestrator.base_url, first["task_id"])["attempts"] == 1


def test_every_accepted_task_finishes_once_and_is_acked(orchestrator: Deployed) -> None:
    batch = [{"jsonrpc": "2.0", "method": "run_task", "id": i,
              "params": {"tool": "echo", "prompt": f"t{i}", "priority": i % 11}} for i in range(60)]
    replies = httpx.post(f"{orchestrator.base_url}/v1/rpc", json=batch, timeout=60).json()
    ids = [r["result"]["task_id"] for r in sorted(replies, key=lambda r: r["id"])]
    assert len(set(ids)) == 60
    records = [finished(orchestrator.base_url, task_id) for task_id in ids]
    assert [r["result"]["text"] for r in records] == [f"t{i}" for i in range(60)]
    assert all(r["attempts"] == 1 + r["preemptions"] for r in records)  # priority 10 may preempt others
    client = redis_view.client(orchestrator.settings)
    wait_until(lambda: redis_view.pending(client, orchestrator.settings) == 0, 10, "all deliveries acked")
    wait_until(lambda: redis_view.active(client, orchestrator.settings) == 0, 10, "active counter back to zero")


def test_cancel_queued_and_running(orchestrator: Deployed) -> None:
    running = result(orchestrator.base_url, "run_task",
                     {"tool": "echo", "prompt": "long", "context": {"delay_ms": 60_000, "steps": 600}})
    wait_until(lambda: result(orchestrator.base_url, "get_task", {"task_id": running["task_id"]})["status"]
               == "running", 20, "task to start")
    cancelled = result(orchestrator.base_url, "cancel_task", {"task_id": running["task_id"]})
    assert cancelled["task_id"] == running["task_id"]
    record = finished(orchestrator.base_url, running["task_id"])
    assert record["status"] == "cancelled" and record["result"] is None
    again = result(orchestrator.base_url, "cancel_task", {"task_id": running["task_id"]})
    assert again["status"] == "cancelled"  # idempotent
    done = result(orchestrator.base_url, "run_task", {"tool": "echo", "prompt": "quick", "wait": 30})
    refused = rpc(orchestrator.base_url, "cancel_task", {"task_id": done["task_id"]})
    assert refused["error"]["code"] == -32003 and "succeeded" in refused["error"]["message"]


def test_get_unknown_task_is_not_found(orchestrator: Deployed) -> None:
    reply = rpc(orchestrator.base_url, "get_task", {"task_id": "nope"})
    assert reply["error"]["code"] == -32001 and "not found" in reply["error"]["message"]


def test_status_reports_pools_workers_and_tools(orchestrator: Deployed) -> None:
    status = result(orchestrator.base_url, "status", path="v1/status")
    pools = {p["worker_type"]: p for p in status["pools"]}
    assert pools["reasoning"]["workers"] == 1 and pools["reasoning"]["slots"] == 4
    assert pools["codegen"]["workers"] == 1 and pools["ml"]["workers"] == 0
    assert {w["name"] for w in status["workers"]} == {"worker:reasoning:0", "worker:codegen:0"}
    tools = {t["name"]: t for t in status["tools"]}
    assert tools["echo"]["input_schema"]["properties"]["delay_ms"]["type"] == "integer"
    assert status["active_tasks"] >= 0 and status["stream_length"] >= 0


def test_healthz_and_docs(orchestrator: Deployed) -> None:
    health = httpx.get(f"{orchestrator.base_url}/healthz", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok", "redis": True, "router": True}
    spec = httpx.get(f"{orchestrator.base_url}/openapi.json", timeout=10).json()
    assert {"/v1/rpc", "/v2/rpc", "/v1/run_task", "/v1/status", "/healthz"} <= set(spec["paths"])
    assert httpx.get(f"{orchestrator.base_url}/docs", timeout=10).status_code == 200


def test_cancel_a_queued_task_while_every_slot_is_busy(orchestrator: Deployed) -> None:
    slots = orchestrator.settings.pools["reasoning"].slots
    long_params = {"tool": "echo", "prompt": "hold", "context": {"delay_ms": 60_000, "steps": 600}}
    holders = [result(orchestrator.base_url, "run_task", long_params)["task_id"] for _ in range(slots)]
    queued = result(orchestrator.base_url, "run_task", {"tool": "echo", "prompt": "waiting"})["task_id"]
    wait_until(lambda: all(result(orchestrator.base_url, "get_task", {"task_id": t})["status"] == "running"
                           for t in holders), 20, "every slot to be busy")
    assert result(orchestrator.base_url, "get_task", {"task_id": queued})["status"] == "queued"
    assert result(orchestrator.base_url, "cancel_task", {"task_id": queued})["status"] == "cancelled"
    for task_id in holders:
        result(orchestrator.base_url, "cancel_task", {"task_id": task_id})
    assert all(finished(orchestrator.base_url, t)["status"] == "cancelled" for t in holders)
    record = finished(orchestrator.base_url, queued)
    assert record["status"] == "cancelled" and record["attempts"] == 0 and record["started_at"] is None
