"""SIGKILL of the saga coordinator at its worst moments: a step finished and a cancel recorded but neither acted
on, a compensation in flight, a step whose idempotency key expired (in flight, or submitted before its id was
saved). After Ray restarts it, each step runs once, each completed step is compensated once, every saga settles.

The coordinator is frozen (SIGSTOP) while the test arranges the moment — releasing a step, recording a cancel
as `cancel_saga` does, moving the clock past an idempotency key's expiry (deleting the key) — then killed, so
nothing it would have done in between can hide the fault.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import redis

from orchestrator.adapters.keys import Keys
from orchestrator.naming import SAGA_COORDINATOR_NAME
from orchestrator.tasks import shard_of
from tests.conftest import Deployed, deployed, make_settings
from tests.faults.load import restarted_pid
from tests.integration.test_sagas import GATE_TOOL, gated, release, runs, saga_state, settled, steps
from tests.integration.test_spine import result
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration

STEPS = {"name": "steps", "steps": [
    {"name": "one", "tool": "gate", "input": gated("{{ saga.id }}.one", False),
     "compensation": {"tool": "gate", "input": gated("{{ saga.id }}.undo-one", False)}},
    {"name": "two", "tool": "gate", "input": gated("{{ saga.id }}.two"),
     "compensation": {"tool": "gate", "input": gated("{{ saga.id }}.undo-two")}},
    {"name": "three", "tool": "gate", "input": gated("{{ saga.id }}.three")},
]}

FAN = {"name": "fan", "steps": [
    {"name": "prepare", "tool": "gate", "input": gated("{{ saga.id }}.prepare", False),
     "compensation": {"tool": "gate", "input": gated("{{ saga.id }}.undo-prepare", False)}},
    {"name": "branches", "parallel": [
        {"name": "left", "tool": "gate", "input": gated("{{ saga.id }}.left"),
         "compensation": {"tool": "gate", "input": gated("{{ saga.id }}.undo-left")}},
        {"name": "right", "tool": "gate", "input": {**gated("{{ saga.id }}.right"), "fail": True},
         "compensation": {"tool": "gate", "input": gated("{{ saga.id }}.undo-right", False)}},
        {"name": "slow", "tool": "gate", "input": gated("{{ saga.id }}.slow"),
         "compensation": {"tool": "gate", "input": gated("{{ saga.id }}.undo-slow", False)}},
    ]},
    {"name": "after", "tool": "gate", "input": gated("{{ saga.id }}.after", False)},
]}


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int) -> Iterator[Deployed]:
    settings = make_settings(redis_server.url, tools={"gate": GATE_TOOL}, workflows={"steps": STEPS, "fan": FAN})
    with deployed(settings, ray_session) as running:
        yield running


@pytest.fixture
def store(system: Deployed) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(system.settings.redis.url, decode_responses=True)
    yield client
    client.close()


def start(system: Deployed, directory: Path, workflow: str = "steps") -> str:
    return str(result(system.base_url, "run_saga", {"workflow": workflow, "input": {"dir": str(directory)}})["saga_id"])


def running(system: Deployed, saga_id: str, step: str, compensation: bool = False) -> dict[str, Any]:
    """The attempt of a step (or its compensation) once its task runs on a worker."""
    kind = "compensation_attempts" if compensation else "attempts"
    found: dict[str, Any] = {}

    def runs_now() -> bool:
        attempts = steps(saga_state(system, saga_id))[step][kind]
        found.update(attempts[-1] if attempts else {})
        return found.get("status") == "submitted" and task_status(system, found["task_id"]) == "running"

    wait_until(runs_now, 30, f"{saga_id}'s {step} {kind} to run")
    return found


def task_status(system: Deployed, task_id: str) -> str:
    return str(result(system.base_url, "get_task", {"task_id": task_id})["status"])


def freeze_coordinator(system: Deployed) -> int:
    """SIGSTOP the coordinator: it does nothing until killed. Its pid."""
    handle = ray.get_actor(SAGA_COORDINATOR_NAME, namespace=system.settings.namespace)
    pid = int(ray.get(handle.pid.remote(), timeout=30))
    os.kill(pid, signal.SIGSTOP)
    return pid


def kill_coordinator(system: Deployed, pid: int) -> None:
    """SIGKILL it, and wait for Ray to restart it."""
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: restarted_pid(SAGA_COORDINATOR_NAME, system.settings.namespace, pid) is not None, 60,
               "Ray to restart the saga coordinator")


def expire_key(system: Deployed, store: redis.Redis, attempt: dict[str, Any]) -> None:
    """The clock moved past the idempotency key's expiry: the key maps to the task no more."""
    settings = system.settings.redis
    shard = shard_of(attempt["task_id"], settings.shards)
    assert shard is not None
    assert store.delete(Keys(settings.prefix).shard(shard).idempotency(attempt["key"], None)) == 1


def test_a_cancel_as_its_step_finished_and_a_compensation_in_flight_settle_once(
        system: Deployed, store: redis.Redis, tmp_path: Path) -> None:
    finishing, compensating = start(system, tmp_path), start(system, tmp_path)
    release(tmp_path, f"{finishing}.undo-two")
    release(tmp_path, f"{compensating}.two")
    two = running(system, finishing, "two")
    running(system, compensating, "three")
    result(system.base_url, "cancel_saga", {"saga_id": compensating})  # three is cancelled, then two undone
    undo_two = running(system, compensating, "two", compensation=True)

    pid = freeze_coordinator(system)
    release(tmp_path, f"{finishing}.two")
    wait_until(lambda: task_status(system, two["task_id"]) == "succeeded", 30, "step two to finish")
    store.sadd(Keys(system.settings.redis.prefix).cancelled_sagas, finishing)  # as cancel_saga records it
    expire_key(system, store, undo_two)
    kill_coordinator(system, pid)
    release(tmp_path, f"{compensating}.undo-two")

    first, second = settled(system, finishing, 30), settled(system, compensating, 30)
    assert first["status"] == second["status"] == "cancelled", (first, second)
    by_name = steps(first)
    assert by_name["two"]["status"] == "succeeded"  # its outcome stood: a completed step, compensated
    assert by_name["one"]["compensation"] == by_name["two"]["compensation"] == "succeeded"
    assert by_name["two"]["compensation_attempts"][0]["finished_at"] <= by_name["one"]["compensation_attempts"][0][
        "started_at"]  # in reverse
    assert [a["task_id"] for a in steps(second)["two"]["compensation_attempts"]] == [undo_two["task_id"]]
    for saga_id in (finishing, compensating):
        assert {name.split(".")[1]: n for name, n in runs(tmp_path).items() if name.startswith(saga_id)} == {
            "one": 1, "two": 1, "undo-two": 1, "undo-one": 1}, saga_id  # three never finished its work


def test_a_step_in_flight_runs_once_after_its_idempotency_key_expired(
        system: Deployed, store: redis.Redis, tmp_path: Path) -> None:
    accepted, unconfirmed = start(system, tmp_path), start(system, tmp_path)
    for saga_id in (accepted, unconfirmed):
        release(tmp_path, f"{saga_id}.three")
    in_flight = {saga_id: running(system, saga_id, "two") for saga_id in (accepted, unconfirmed)}

    pid = freeze_coordinator(system)
    for attempt in in_flight.values():
        expire_key(system, store, attempt)
    # The other one died between saving its intent (id chosen, key) and learning that the submit was accepted.
    key = Keys(system.settings.redis.prefix).saga(unconfirmed)
    saved = json.loads(store.get(key) or "{}")
    saved["steps"][1]["attempts"][-1]["status"] = "submitting"
    store.set(key, json.dumps(saved))
    kill_coordinator(system, pid)
    for saga_id in in_flight:
        release(tmp_path, f"{saga_id}.two")

    for saga_id, attempt in in_flight.items():
        state = settled(system, saga_id, 30)
        assert state["status"] == "succeeded", state
        assert [a["task_id"] for a in steps(state)["two"]["attempts"]] == [attempt["task_id"]]
        assert runs(tmp_path)[f"{saga_id}.two"] == 1


def test_a_failed_branch_stops_its_siblings_and_completed_steps_are_undone_once_across_kills(
        system: Deployed, tmp_path: Path) -> None:
    saga_id = start(system, tmp_path, "fan")
    branches = {name: running(system, saga_id, name) for name in ("left", "right", "slow")}  # all three at once
    release(tmp_path, f"{saga_id}.left")
    wait_until(lambda: steps(saga_state(system, saga_id))["left"]["status"] == "succeeded", 30, "left to succeed")

    pid = freeze_coordinator(system)  # right fails and nobody is there to see it
    release(tmp_path, f"{saga_id}.right")
    wait_until(lambda: task_status(system, branches["right"]["task_id"]) == "failed", 30, "right to fail")
    kill_coordinator(system, pid)
    undo_left = running(system, saga_id, "left", compensation=True)  # slow was cancelled first, then left undone
    assert task_status(system, branches["slow"]["task_id"]) == "cancelled"

    kill_coordinator(system, freeze_coordinator(system))  # again, with a compensation in flight
    release(tmp_path, f"{saga_id}.undo-left")
    state = settled(system, saga_id, 30)
    assert state["status"] == "failed" and state["error"] == f"step 'right' failed: RuntimeError: {saga_id}.right failed"
    by_name = steps(state)
    assert {name: by_name[name]["status"] for name in ("left", "right", "slow", "after")} == {
        "left": "succeeded", "right": "failed", "slow": "cancelled", "after": "pending"}
    assert [a["task_id"] for a in by_name["left"]["compensation_attempts"]] == [undo_left["task_id"]]
    assert by_name["left"]["compensation_attempts"][0]["finished_at"] <= by_name["prepare"]["compensation_attempts"][
        0]["started_at"]  # in reverse
    assert {name.split(".", 1)[1]: n for name, n in runs(tmp_path).items()} == {
        "prepare": 1, "left": 1, "right": 1, "undo-left": 1, "undo-prepare": 1}  # slow never finished its work
    workflows = {w["name"]: w for w in result(system.base_url, "list_workflows")}
    assert [b["name"] for b in workflows["fan"]["steps"][1]["parallel"]] == ["left", "right", "slow"]
