"""The SLA policy actor resizing a pool: a burst grows it, idleness shrinks it, and no task is lost."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import ray

from orchestrator.naming import SLA_POLICY_NAME
from tests.conftest import Deployed, deployed, make_settings
from tests.integration.test_spine import finished, result, rpc
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int) -> Iterator[Deployed]:
    targets = {"min_workers": 1, "max_workers": 3, "queue_wait_p95_s": 0.5, "cooldown_up_s": 0,
               "cooldown_down_s": 0, "scale_down_after_s": 1, "max_step": 2}
    settings = make_settings(redis_server.url, pools={"reasoning": {"workers": 1, "slots": 2}},
                             sla={"interval_s": 0.5, "pools": {"reasoning": targets}})
    with deployed(settings, ray_session) as running:
        yield running


def workers(system: Deployed) -> int:
    return sum(1 for w in result(system.base_url, "status")["workers"]
               if w["worker_type"] == "reasoning" and not w["draining"])


def test_a_burst_grows_the_pool_and_idleness_brings_it_back(system: Deployed) -> None:
    ids = [result(system.base_url, "run_task", {"tool": "echo", "prompt": f"b{i}",
                                                "context": {"delay_ms": 1000, "steps": 4}})["task_id"]
           for i in range(40)]  # 10 s of work for the first worker's 2 slots: the queue outlasts the growth
    wait_until(lambda: workers(system) == 3, 30, "the SLA policy to grow the pool to max_workers")

    def newest_runs() -> bool:
        return any(r["worker"] == "worker:reasoning:2" for r in result(system.base_url, "status")["running"])

    wait_until(newest_runs, 30, "the newest worker to take queued tasks once placed")
    records = [finished(system.base_url, task_id, timeout_s=60) for task_id in ids]
    assert [r["status"] for r in records] == ["succeeded"] * len(ids)
    assert all(r["attempts"] == 1 for r in records)  # draining lost nothing
    wait_until(lambda: workers(system) == 1, 30, "the pool to shrink back to min_workers when idle")
    state: dict[str, Any] = ray.get(ray.get_actor(SLA_POLICY_NAME, namespace=system.settings.namespace)
                                    .state.remote())
    assert state["reasoning"]["target_workers"] == 1
    audit = result(system.base_url, "control", {"action": "audit_log", "count": 50})["audit_log"]
    assert {e["who"] for e in audit if e["action"] == "scale"} == {"sla-policy"}


def test_status_and_top_show_pools_and_the_sla_state(system: Deployed) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    wait_until(lambda: "reasoning" in result(system.base_url, "status")["sla"], 10, "an SLA evaluation")
    shown = {}
    for command in (["status"], ["top", "--once", "--window", "60"]):
        done = subprocess.run([sys.executable, "-m", "orchestrator.cli", *command, "--url", system.base_url],
                              env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        shown[command[0]] = done.stdout
    assert "SLA" in shown["status"] and ("idle" in shown["status"] or "within the SLA" in shown["status"])
    assert "worker:reasoning:0" in shown["status"]
    top = shown["top"]
    assert "pools" in top and "reasoning" in top and "SLA target" in top and "running (highest priority first)" in top
    assert "tasks/s" in top and "active 0" in top


def test_sla_targets_can_be_changed_through_control(system: Deployed) -> None:
    def codegen_workers() -> int:
        return sum(1 for w in result(system.base_url, "status")["workers"]
                   if w["worker_type"] == "codegen" and not w["draining"])

    assert codegen_workers() == 1  # no SLA targets for codegen in the settings
    reply = result(system.base_url, "control", {"action": "sla", "worker_type": "codegen",
                                                "targets": {"min_workers": 2, "max_workers": 2}})
    assert reply["sla_targets"]["min_workers"] == 2 and reply["sla_targets"]["queue_wait_p95_s"] == 5.0
    wait_until(lambda: codegen_workers() == 2, 30, "the SLA policy to apply the new min_workers")
    bad = rpc(system.base_url, "control", {"action": "sla", "worker_type": "codegen",
                                           "targets": {"max_workers": 0, "colour": "red"}})
    assert set(bad["error"]["data"]["fields"]) == {"params.targets.max_workers", "params.targets.colour"}
    audit = result(system.base_url, "control", {"action": "audit_log", "count": 50})["audit_log"]
    change = next(e for e in audit if e["action"] == "sla")
    assert change["details"]["targets"] == {"min_workers": 2, "max_workers": 2}
