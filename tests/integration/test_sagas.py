"""Sagas through the whole system: steps as tasks, compensation of completed steps, coordinator crashes,
cancellation, the built-in code_pipeline against the fake provider returning real code, and tenants' limits
(steps held to the tenant's active tasks, running sagas per tenant)."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray

from deployments.fake_provider import FakeProviderConfig
from orchestrator.adapters.artifact_store import ArtifactStore
from orchestrator.adapters.saga_store import SagaStore
from orchestrator.adapters.task_store import redis_client
from orchestrator.auth import hash_key, new_key
from orchestrator.naming import SAGA_COORDINATOR_NAME
from tests.conftest import Deployed, deployed, make_settings
from tests.fakeprovider import RunningFakeProvider, fake_provider
from tests.integration.test_spine import result, rpc
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration

GOOD_CODE = '''Here you are.
```python
def add(a, b):
    return a + b


if __name__ == "__main__":
    print(add(2, 3))
```
```python
import unittest

from solution import add


class AddTest(unittest.TestCase):
    def test_add(self):
        self.assertEqual(add(2, 3), 5)
```
'''
BAD_CODE = GOOD_CODE.replace("return a + b", "return a - b")
RESPONSES = {"PLAN-GOOD": GOOD_CODE, "PLAN-BAD": BAD_CODE, "task-good": "PLAN-GOOD", "task-bad": "PLAN-BAD"}


def echo_step(name: str, delay: str | int = 0, timeout_s: float | None = None, undo: str | None = "undo",
              **extra: Any) -> dict[str, Any]:
    step: dict[str, Any] = {"name": name, "tool": "step",
                            "input": {"prompt": f"{name} of {{{{ saga.id }}}}", "delay_ms": delay}, **extra}
    if timeout_s is not None:
        step["timeout_s"] = timeout_s
    if undo is not None:
        step["compensation"] = {"tool": undo, "input": {"prompt": f"undo {name} of {{{{ saga.id }}}}"},
                                "retry": {"max_attempts": 5, "backoff_s": 0.1}}
    return step


WORKFLOWS = {
    "three": {"name": "three", "steps": [
        echo_step("one"), echo_step("two", "{{ input.two_ms }}"),
        echo_step("three", "{{ input.three_ms }}", timeout_s=1.5),
    ]},
    "flaky_undo": {"name": "flaky_undo", "steps": [
        echo_step("one", undo="flaky-undo"), echo_step("two", 3000, timeout_s=0.3, undo=None),
    ]},
    "hopeless_undo": {"name": "hopeless_undo", "steps": [
        {**echo_step("one", undo="flaky-undo"),
         "compensation": {"tool": "flaky-undo", "input": {"prompt": "undo"}, "retry": {"max_attempts": 2}}},
        echo_step("two", 3000, timeout_s=0.3, undo=None),
    ]},
    "resumable": {"name": "resumable", "steps": [
        echo_step("one", undo=None), echo_step("two"), echo_step("three", "{{ input.three_ms }}", timeout_s=0.5),
    ]},
    "approved_deploy": {"name": "approved_deploy", "steps": [
        echo_step("one"), {**echo_step("deploy", undo=None), "approval": {"message": "Ship {{ saga.id }}?"}},
    ]},
    "deploy_then_fail": {"name": "deploy_then_fail", "steps": [
        {"name": "deploy", "tool": "artifacts",
         "input": {"action": "publish", "artifact": "{{ input.artifact }}", "content": "{{ input.content }}"},
         "compensation": {"tool": "artifacts", "input": {"action": "restore", "artifact": "{{ input.artifact }}",
                                                         "version": "{{ steps.deploy.output.previous_version }}"}}},
        echo_step("smoke_test", "{{ input.smoke_ms }}", timeout_s=0.5, undo=None),
    ]},
}


@pytest.fixture(scope="module")
def provider() -> Iterator[RunningFakeProvider]:
    with fake_provider(FakeProviderConfig(responses=RESPONSES)) as running:
        yield running


@pytest.fixture(scope="module")
def effects() -> Path:
    return Path(tempfile.mkdtemp(prefix="saga-effects-"))


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int, provider: RunningFakeProvider,
           effects: Path) -> Iterator[Deployed]:
    llm = {"kind": "openai", "base_url": provider.base_url, "model": "fake-model", "timeout_s": 10}
    settings = make_settings(
        redis_server.url,
        tools={
            "step": {"kind": "echo", "effect_dir": str(effects)},
            "undo": {"kind": "echo", "effect_dir": str(effects)},
            "flaky-undo": {**llm, "provider": "flaky"},
            "planner": llm,
            "coder": {**llm, "worker_type": "codegen"},
        },
        providers={"flaky": {"max_retries": 0}},
        sagas={"planner_tool": "planner", "coder_tool": "coder", "step_timeout_s": 60},
        workflows=WORKFLOWS,
    )
    with deployed(settings, ray_session) as running:
        yield running


def run_saga(system: Deployed, workflow: str, saga_input: dict[str, Any]) -> str:
    reply = result(system.base_url, "run_saga", {"workflow": workflow, "input": saga_input})
    assert reply["status"] == "running"
    return str(reply["saga_id"])


def saga_state(system: Deployed, saga_id: str) -> dict[str, Any]:
    return dict(result(system.base_url, "get_saga", {"saga_id": saga_id}))


def settled(system: Deployed, saga_id: str, timeout_s: float = 60) -> dict[str, Any]:
    state: dict[str, Any] = {}

    def finished() -> bool:
        state.update(saga_state(system, saga_id))
        return state["status"] in ("succeeded", "failed", "cancelled", "failed_compensation")

    wait_until(finished, timeout_s, f"saga {saga_id} to settle")
    return state


def steps(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in state["steps"]}


def effect_lines(effects: Path, saga_id: str) -> list[str]:
    """The side effects performed by the saga's tasks (each is once per task id, by construction)."""
    task_ids = set()
    for step in saga_state_cache[saga_id]["steps"]:
        task_ids |= {a["task_id"] for a in step["attempts"] + step["compensation_attempts"]}
    log = effects / "effects.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines if line.split()[0] in task_ids]


saga_state_cache: dict[str, dict[str, Any]] = {}


def test_success_runs_each_step_once(system: Deployed, effects: Path) -> None:
    saga_id = run_saga(system, "three", {"two_ms": 0, "three_ms": 0})
    state = saga_state_cache[saga_id] = settled(system, saga_id)
    assert state["status"] == "succeeded", state
    by_name = steps(state)
    assert [len(s["attempts"]) for s in state["steps"]] == [1, 1, 1]
    assert by_name["two"]["output"]["text"] == f"two of {saga_id}"
    assert [s["compensation"] for s in state["steps"]] == ["none"] * 3
    assert len(effect_lines(effects, saga_id)) == 3


def test_failure_compensates_completed_steps_in_reverse_exactly_once(system: Deployed, effects: Path) -> None:
    saga_id = run_saga(system, "three", {"two_ms": 0, "three_ms": 5000})  # step three times out
    state = saga_state_cache[saga_id] = settled(system, saga_id)
    assert state["status"] == "failed" and "step 'three' failed" in state["error"]
    by_name = steps(state)
    assert by_name["three"]["status"] == "failed" and by_name["three"]["compensation"] == "none"
    assert by_name["one"]["compensation"] == by_name["two"]["compensation"] == "succeeded"
    undo_two, undo_one = by_name["two"]["compensation_attempts"], by_name["one"]["compensation_attempts"]
    assert len(undo_two) == len(undo_one) == 1
    assert undo_two[0]["finished_at"] <= undo_one[0]["started_at"]  # reverse order
    assert len(effect_lines(effects, saga_id)) == 4  # one, two, undo two, undo one: each once


def test_a_compensation_failing_at_first_is_retried_until_it_succeeds(system: Deployed,
                                                                       provider: RunningFakeProvider) -> None:
    provider.control(fail_next=2, fail_status=503)
    saga_id = run_saga(system, "flaky_undo", {})
    state = settled(system, saga_id)
    assert state["status"] == "failed", state
    undo = steps(state)["one"]
    assert undo["compensation"] == "succeeded"
    assert [a["status"] for a in undo["compensation_attempts"]] == ["failed", "failed", "succeeded"]
    assert "provider error 503" in undo["compensation_attempts"][0]["error"]


def test_a_compensation_that_never_succeeds_is_a_dead_letter(system: Deployed,
                                                             provider: RunningFakeProvider) -> None:
    provider.control(fail_next=2, fail_status=503)
    saga_id = run_saga(system, "hopeless_undo", {})
    state = settled(system, saga_id)
    assert state["status"] == "failed_compensation"
    assert steps(state)["one"]["compensation"] == "failed"
    assert "provider error 503" in steps(state)["one"]["compensation_error"]
    letters = dead_letters(system)
    assert any(d["saga_id"] == saga_id and d["step"] == "one" and "503" in d["reason"] for d in letters)


def dead_letters(system: Deployed) -> list[dict[str, str]]:
    async def read() -> list[dict[str, str]]:
        client = redis_client(system.settings.redis)
        redis = system.settings.redis
        try:
            return await SagaStore(client, redis.prefix, redis.retention_s, redis.idempotency_ttl_s).dead_letters()
        finally:
            await client.aclose()

    return asyncio.run(read())


def test_cancel_mid_saga_stops_the_step_and_compensates(system: Deployed) -> None:
    saga_id = run_saga(system, "three", {"two_ms": 20_000, "three_ms": 0})
    wait_until(lambda: steps(saga_state(system, saga_id))["two"]["status"] == "running", 30, "step two to run")
    reply = result(system.base_url, "cancel_saga", {"saga_id": saga_id})
    assert reply["cancel_requested"] is True
    state = settled(system, saga_id)
    by_name = steps(state)
    assert state["status"] == "cancelled"
    assert by_name["two"]["status"] == "cancelled" and by_name["three"]["status"] == "pending"
    assert by_name["one"]["compensation"] == "succeeded" and by_name["two"]["compensation"] == "none"
    again = rpc(system.base_url, "cancel_saga", {"saga_id": saga_id})
    assert again["error"]["code"] == -32010


def test_coordinator_killed_mid_saga_resumes_without_rerunning_steps(system: Deployed, effects: Path) -> None:
    saga_id = run_saga(system, "three", {"two_ms": 3000, "three_ms": 0})
    wait_until(lambda: steps(saga_state(system, saga_id))["two"]["status"] == "running", 30, "step two to run")
    coordinator = ray.get_actor(SAGA_COORDINATOR_NAME, namespace=system.settings.namespace)
    os.kill(ray.get(coordinator.pid.remote()), signal.SIGKILL)
    state = saga_state_cache[saga_id] = settled(system, saga_id, timeout_s=90)
    assert state["status"] == "succeeded", state
    assert [len(s["attempts"]) for s in state["steps"]] == [1, 1, 1]  # two was awaited, not started again
    assert len(effect_lines(effects, saga_id)) == 3


def test_a_failed_saga_is_rerun_from_where_it_stopped(system: Deployed, effects: Path) -> None:
    failed_id = run_saga(system, "resumable", {"three_ms": 5000})  # three times out
    failed = saga_state_cache[failed_id] = settled(system, failed_id)
    assert failed["status"] == "failed" and steps(failed)["two"]["compensation"] == "succeeded"
    before = len(effect_lines(effects, failed_id))

    again = result(system.base_url, "rerun_saga", {"saga_id": failed_id, "input": {"three_ms": 0}})
    assert again["status"] == "running" and again["saga_id"] != failed_id
    rerun = saga_state_cache[again["saga_id"]] = settled(system, again["saga_id"])
    assert rerun["status"] == "succeeded" and rerun["rerun_of"] == failed_id and rerun["input"] == {"three_ms": 0}
    assert saga_state(system, failed_id)["reruns"] == [again["saga_id"]]
    kept, redone = steps(rerun), steps(failed)
    assert kept["one"]["attempts"] == redone["one"]["attempts"]  # completed, nothing undone: not run again
    assert [a["task_id"] for a in kept["two"]["attempts"]] != [a["task_id"] for a in redone["two"]["attempts"]]
    new_effects = set(effect_lines(effects, again["saga_id"])) - set(effect_lines(effects, failed_id))
    assert len(new_effects) == 2  # two and three ran again; one's effect is the original's, done once
    assert len(effect_lines(effects, failed_id)) == before == 3  # one, two, undo two: untouched

    refused = rpc(system.base_url, "rerun_saga", {"saga_id": again["saga_id"]})
    assert refused["error"]["code"] == -32602
    assert refused["error"]["data"]["fields"] == {
        "params.saga_id": f"saga {again['saga_id']} is succeeded: only a failed or cancelled saga can be re-run"}


def test_deploy_is_undone_by_restoring_the_previous_version(system: Deployed) -> None:
    ok = run_saga(system, "deploy_then_fail", {"artifact": "site", "content": "v1", "smoke_ms": 0})
    assert settled(system, ok)["status"] == "succeeded"
    failing = run_saga(system, "deploy_then_fail", {"artifact": "site", "content": "v2", "smoke_ms": 3000})
    state = settled(system, failing)
    deploy = steps(state)["deploy"]
    assert state["status"] == "failed"
    assert deploy["output"] == {"artifact": "site", "version": 2, "previous_version": 1}
    assert deploy["compensation"] == "succeeded"
    assert live_artifact(system, "site") == (1, "v1")


def live_artifact(system: Deployed, name: str) -> Any:
    async def read() -> Any:
        client = redis_client(system.settings.redis)
        try:
            return await ArtifactStore(client, system.settings.redis.prefix).live(name)
        finally:
            await client.aclose()

    return asyncio.run(read())


def test_code_pipeline_runs_end_to_end_offline(system: Deployed) -> None:
    saga_id = run_saga(system, "code_pipeline", {"task": "task-good: add two numbers", "artifact": "adder"})
    state = settled(system, saga_id, timeout_s=120)
    assert state["status"] == "succeeded", state
    by_name = steps(state)
    assert by_name["reasoning"]["output"]["text"] == "PLAN-GOOD"
    assert by_name["sandbox_exec"]["output"]["stdout"].strip() == "5"
    assert by_name["test"]["output"]["passed"] == 1 and by_name["test"]["output"]["failed"] == 0
    assert by_name["deploy"]["output"]["version"] == 1
    live = live_artifact(system, "adder")
    assert live[0] == 1 and "def add" in live[1]["answer"] and live[1]["saga_id"] == saga_id


def test_code_pipeline_failing_tests_stop_before_deploy(system: Deployed) -> None:
    saga_id = run_saga(system, "code_pipeline", {"task": "task-bad: add two numbers", "artifact": "adder2"})
    state = settled(system, saga_id, timeout_s=120)
    by_name = steps(state)
    assert state["status"] == "failed" and "step 'test' failed" in state["error"]
    assert "tests failed" in by_name["test"]["error"]
    assert by_name["deploy"]["status"] == "pending" and by_name["deploy"]["compensation"] == "none"
    assert live_artifact(system, "adder2") is None


def test_bad_saga_requests_name_the_field(system: Deployed) -> None:
    unknown = rpc(system.base_url, "run_saga", {"workflow": "nope", "input": {}})
    assert unknown["error"]["code"] == -32602
    assert "known: approved_deploy, code_pipeline, deploy_then_fail" in unknown["error"]["data"]["fields"][
        "params.workflow"]
    missing = rpc(system.base_url, "run_saga", {"workflow": "code_pipeline", "input": {"task": "x"}})
    assert missing["error"]["data"]["fields"] == {"params.input.artifact": "required"}
    huge = rpc(system.base_url, "run_saga", {"workflow": "three", "input": {"blob": "x" * 300_000}})
    assert huge["error"]["data"]["fields"] == {"params.input": "larger than 262144 bytes"}
    absent = rpc(system.base_url, "get_saga", {"saga_id": "nope"})
    assert absent["error"]["code"] == -32009
    workflows = {w["name"]: w for w in result(system.base_url, "list_workflows")}
    assert [s["name"] for s in workflows["code_pipeline"]["steps"]][-1] == "deploy"
    assert set(workflows) == {"code_pipeline", "three", "flaky_undo", "hopeless_undo", "deploy_then_fail", "resumable",
                              "approved_deploy"}


# ---------------------------------------------------------------- a tool that finishes when released


async def gate(tool_input: dict[str, Any]) -> dict[str, Any]:
    """A test tool (kind python): when `gated`, waits until released (`<dir>/<name>.go` exists); then logs the run
    in `<dir>/runs.log`, one line per run — a step run twice shows twice — and fails if told to (`fail`)."""
    directory, name = Path(tool_input["dir"]), str(tool_input["name"])
    deadline = time.monotonic() + 120
    while tool_input.get("gated") and not (directory / f"{name}.go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} was never released")
        await asyncio.sleep(0.02)  # the work itself: busy until released (or cancelled)
    with (directory / "runs.log").open("a") as log:  # O_APPEND: one whole line per write
        log.write(f"{name}\n")
    if tool_input.get("fail"):
        raise RuntimeError(f"{name} failed")
    return {"name": name}


GATE_TOOL = {"kind": "python", "function": f"{__name__}:gate"}


def gated(name: str, gated: bool | str = True) -> dict[str, Any]:
    """A gate tool call's input (in a workflow): its run is logged as `name`."""
    return {"name": name, "dir": "{{ input.dir }}", "gated": gated}


def release(directory: Path, name: str) -> None:
    (directory / f"{name}.go").touch()


def runs(directory: Path) -> Counter[str]:
    log = directory / "runs.log"
    return Counter(log.read_text().splitlines() if log.exists() else [])


# ---------------------------------------------------------------- tenants


TOKENS = {name: new_key() for name in ("alice", "bob", "tiny")}
ONE_STEP = {"name": "one_step", "steps": [{"name": "work", "tool": "gate",
                                            "input": gated("{{ input.name }}", "{{ input.gated }}")}]}


@pytest.fixture(scope="module")
def tenants(redis_server: RedisServer, ray_session: int) -> Iterator[Deployed]:
    """Alice may run one saga at a time; tiny may have one unfinished task; bob is not limited."""
    keys = {name: {"hash": hash_key(token), "tenant": name, "scopes": ["submit", "read"]}
            for name, token in TOKENS.items()}
    settings = make_settings(
        redis_server.url, tools={"gate": GATE_TOOL}, workflows={"one_step": ONE_STEP},
        auth={"keys": keys, "quotas": {"alice": {"max_running_sagas": 1}, "tiny": {"max_active_tasks": 1}}})
    with deployed(settings, ray_session) as running:
        yield running


def as_tenant(system: Deployed, tenant: str, method: str, params: dict[str, Any]) -> Any:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    reply = httpx.post(f"{system.base_url}/v2/rpc", json=body, headers={"authorization": f"Bearer {TOKENS[tenant]}"},
                       timeout=60).json()
    assert "error" not in reply, reply
    return reply["result"]


def start_one_step(system: Deployed, tenant: str, directory: Path, name: str, gated: bool) -> str:
    started = as_tenant(system, tenant, "run_saga",
                        {"workflow": "one_step", "input": {"name": name, "dir": str(directory), "gated": gated}})
    return str(started["saga_id"])


def tenant_saga(system: Deployed, tenant: str, saga_id: str) -> dict[str, Any]:
    return dict(as_tenant(system, tenant, "get_saga", {"saga_id": saga_id}))


def tenant_settled(system: Deployed, tenant: str, saga_id: str, timeout_s: float = 30) -> dict[str, Any]:
    state: dict[str, Any] = {}

    def finished() -> bool:
        state.update(tenant_saga(system, tenant, saga_id))
        return state["status"] in ("succeeded", "failed", "cancelled", "failed_compensation")

    wait_until(finished, timeout_s, f"saga {saga_id} to settle")
    return state


def work_attempt(system: Deployed, tenant: str, saga_id: str, status: str, timeout_s: float = 30) -> dict[str, Any]:
    """The saga's step attempt, once it has `status`."""
    found: dict[str, Any] = {}

    def reached() -> bool:
        attempts = tenant_saga(system, tenant, saga_id)["steps"][0]["attempts"]
        found.update(attempts[-1] if attempts else {})
        return found.get("status") == status

    wait_until(reached, timeout_s, f"saga {saga_id}'s step to be {status}")
    return found


def test_a_tenant_beyond_its_running_sagas_waits_while_another_tenants_run(tenants: Deployed, tmp_path: Path) -> None:
    first = start_one_step(tenants, "alice", tmp_path, "alice-1", gated=True)
    work_attempt(tenants, "alice", first, "submitted")
    second = start_one_step(tenants, "alice", tmp_path, "alice-2", gated=False)
    bobs = start_one_step(tenants, "bob", tmp_path, "bob-1", gated=False)
    assert tenant_settled(tenants, "bob", bobs)["status"] == "succeeded"
    waiting = tenant_saga(tenants, "alice", second)  # queued before bob's, passed by it: not admitted
    assert waiting["status"] == "running" and waiting["steps"][0]["attempts"] == []
    dropped = start_one_step(tenants, "alice", tmp_path, "alice-3", gated=False)
    as_tenant(tenants, "alice", "cancel_saga", {"saga_id": dropped})  # settles now, not once there is room
    assert tenant_settled(tenants, "alice", dropped)["status"] == "cancelled"
    bobs_try = httpx.post(f"{tenants.base_url}/v2/rpc", headers={"authorization": f"Bearer {TOKENS['bob']}"},
                          json={"jsonrpc": "2.0", "id": 1, "method": "rerun_saga", "params": {"saga_id": dropped}})
    assert bobs_try.json()["error"]["code"] == -32009  # another tenant's saga is not found
    assert tenant_saga(tenants, "alice", first)["status"] == "running"
    release(tmp_path, "alice-1")
    assert tenant_settled(tenants, "alice", first)["status"] == "succeeded"
    assert tenant_settled(tenants, "alice", second)["status"] == "succeeded"
    assert runs(tmp_path) == {"alice-1": 1, "alice-2": 1, "bob-1": 1}


def test_saga_steps_count_against_their_tenants_active_tasks(tenants: Deployed, tmp_path: Path) -> None:
    holder = start_one_step(tenants, "tiny", tmp_path, "tiny-1", gated=True)
    work_attempt(tenants, "tiny", holder, "submitted")  # tiny's one unfinished task
    waiting = start_one_step(tenants, "tiny", tmp_path, "tiny-2", gated=False)
    withdrawn = start_one_step(tenants, "tiny", tmp_path, "tiny-3", gated=False)
    held = work_attempt(tenants, "tiny", waiting, "held")
    assert "tenant tiny has 1 unfinished tasks" in held["error"]
    work_attempt(tenants, "tiny", withdrawn, "held")
    as_tenant(tenants, "tiny", "cancel_saga", {"saga_id": withdrawn})
    cancelled = tenant_settled(tenants, "tiny", withdrawn)
    assert cancelled["status"] == "cancelled" and cancelled["steps"][0]["attempts"][-1]["status"] == "withdrawn"
    release(tmp_path, "tiny-1")
    done = tenant_settled(tenants, "tiny", waiting)
    assert done["status"] == "succeeded"  # held, not failed: the same attempt ran once there was room
    assert [(a["status"], a["task_id"]) for a in done["steps"][0]["attempts"]] == [("succeeded", held["task_id"])]
    assert tenant_settled(tenants, "tiny", holder)["status"] == "succeeded"
    assert runs(tmp_path) == {"tiny-1": 1, "tiny-2": 1}


def waiting_step(system: Deployed, saga_id: str, step: str) -> dict[str, Any]:
    """The step once its task waits for input (the saga shows what for)."""
    found: dict[str, Any] = {}

    def asks() -> bool:
        found.update(steps(saga_state(system, saga_id))[step])
        return bool(found["input_requests"])

    wait_until(asks, 120, f"step {step} of saga {saga_id} to ask for input")
    return found


def test_code_pipeline_deploy_waits_for_approval_given_with_provide_input(system: Deployed) -> None:
    saga_id = run_saga(system, "code_pipeline", {"task": "task-good: add two numbers", "artifact": "approved",
                                                 "require_approval": True})
    deploy = waiting_step(system, saga_id, "deploy")
    assert deploy["input_requests"]["approval"]["message"] == "Publish the tested code as a new version of approved?"
    task_id = deploy["attempts"][-1]["task_id"]
    assert result(system.base_url, "get_task", {"task_id": task_id})["status"] == "input_required"
    assert live_artifact(system, "approved") is None  # nothing published before the approval
    result(system.base_url, "provide_input", {"task_id": task_id, "input": {"approve": True}})
    state = settled(system, saga_id, timeout_s=60)
    assert state["status"] == "succeeded", state
    assert steps(state)["deploy"]["output"]["version"] == 1 and steps(state)["deploy"]["input_requests"] == {}
    assert live_artifact(system, "approved")[0] == 1


def test_a_refused_approval_fails_the_step_and_compensates_once(system: Deployed, effects: Path) -> None:
    saga_id = run_saga(system, "approved_deploy", {})
    task_id = waiting_step(system, saga_id, "deploy")["attempts"][-1]["task_id"]
    result(system.base_url, "provide_input", {"task_id": task_id, "input": {"approve": False, "comment": "not now"}})
    state = saga_state_cache[saga_id] = settled(system, saga_id)
    by_name = steps(state)
    assert state["status"] == "failed" and by_name["deploy"]["error"] == "not approved: not now"
    assert by_name["one"]["compensation"] == "succeeded" and len(by_name["one"]["compensation_attempts"]) == 1
    assert len(effect_lines(effects, saga_id)) == 2  # step one and its undo, once each; deploy never ran its tool
