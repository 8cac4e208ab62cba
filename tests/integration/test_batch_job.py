"""The batch ML job submitted with `ray job submit` to an orchestrator started by `orchestrator up`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_cli import cli, kill_what_state_names, ok, read_state
from tests.support import free_port, wait_until

pytestmark = pytest.mark.integration

JOB = Path(__file__).resolve().parents[2] / "deployments" / "batch_ml.py"
SUMMARY_MARK = "batch_ml summary:"


def env_for(data_dir: Path) -> dict[str, str]:
    """No ORCH_* from outside; our own data dir; one ml worker, no codegen worker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(ORCH_DATA_DIR=str(data_dir), RAY_USAGE_STATS_ENABLED="0", ORCH_POOLS__CODEGEN__WORKERS="0",
               ORCH_POOLS__ML__WORKERS="1")
    return env


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A short data dir whose orchestrator is stopped after the test, whatever happened, and then removed."""
    path = Path(tempfile.mkdtemp(prefix="orch-job-"))
    yield path
    state = read_state(path)
    if state is not None:
        cli(env_for(path), "down", timeout_s=120)
        kill_what_state_names(state)
    shutil.rmtree(path, ignore_errors=True)


def dashboard_address(state: dict[str, Any]) -> str | None:
    """The local Ray's dashboard (`host:port`): in the state file if recorded, else in the daemon's log."""
    if state.get("dashboard_url"):
        return str(state["dashboard_url"])
    found = re.findall(r"dashboard_url=(\S+)", Path(state["log_file"]).read_text(errors="replace"))
    return found[-1] if found and found[-1] != "None" else None


def ray_cli(env: dict[str, str], *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    """The `ray` CLI; reaching a cluster by address needs token auth announced (Ray 2.60)."""
    return subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], env={**env, "RAY_AUTH_MODE": "token"},
                          capture_output=True,
                          text=True, timeout=timeout_s, check=False)


def job_summary(output: str) -> dict[str, Any]:
    """The JSON summary the job prints last (Ray may print its own lines after it)."""
    assert SUMMARY_MARK in output, output[-3000:]
    text = output[output.rindex(SUMMARY_MARK) + len(SUMMARY_MARK):].lstrip()
    value, _ = json.JSONDecoder().raw_decode(text)
    return dict(value)


def test_batch_job_tunes_every_dataset_through_the_orchestrator(data_dir: Path) -> None:
    env = env_for(data_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ok(cli(env, "up", "--port", str(port), "--dashboard", "--timeout", "240", timeout_s=300))
    state = read_state(data_dir)
    assert state is not None
    wait_until(lambda: dashboard_address(state) is not None, 30, "the daemon to log Ray's dashboard address")
    dashboard = dashboard_address(state)

    job_args = ["--url", url, "--datasets", "iris,wine", "--models", "logistic_regression", "--cv", "3",
                "--search", '{"C": [0.1, 1.0]}', "--timeout-s", "300", "--poll-interval-s", "0.5",
                "--run-id", uuid.uuid4().hex]
    submission_id = f"batch-ml-{uuid.uuid4().hex[:8]}"
    attempts: list[subprocess.CompletedProcess[str]] = []

    def submit() -> bool:
        """Submit the job; False while Ray's job agent is still starting (it answers 500 until then)."""
        attempts.append(ray_cli(env, "job", "submit", "--address", f"http://{dashboard}", "--submission-id",
                                submission_id, "--", sys.executable, str(JOB), *job_args))
        return "No available agent" not in attempts[-1].stderr

    wait_until(submit, 120, "Ray's job agent to take the submission")
    submitted = attempts[-1]
    assert submitted.returncode == 0, f"stdout:\n{submitted.stdout[-3000:]}\nstderr:\n{submitted.stderr[-3000:]}"

    status = ray_cli(env, "job", "status", "--address", f"http://{dashboard}", submission_id, timeout_s=60)
    assert f"Job '{submission_id}' succeeded" in status.stdout, status.stdout + status.stderr
    logs = ray_cli(env, "job", "logs", "--address", f"http://{dashboard}", submission_id, timeout_s=60)
    summary = job_summary(logs.stdout)
    assert summary["all_succeeded"] is True and summary["error"] is None
    assert summary["totals"] == {"tasks": 2, "succeeded": 2, "failed": 0, "cancelled": 0, "rejected": 0,
                                 "timed_out": 0, "unsubmitted": 0}
    assert {t["dataset"] for t in summary["tasks"]} == {"iris", "wine"}
    for task in summary["tasks"]:
        assert task["status"] == "succeeded" and task["model"] == "logistic_regression"
        assert 0 < task["best_score"] <= 1 and task["best_params"]["C"] in (0.1, 1.0)
    assert "[" in logs.stdout and "logistic_regression succeeded: best_score=" in logs.stdout  # progress lines

    # The same job again follows the same tasks: idempotency keys, nothing submitted twice.
    again = subprocess.run([sys.executable, str(JOB), *job_args], env=env, capture_output=True, text=True,
                           timeout=120, check=False)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    repeated = job_summary(again.stdout)
    assert [t["task_id"] for t in repeated["tasks"]] == [t["task_id"] for t in summary["tasks"]]
    assert all(t["duplicate"] for t in repeated["tasks"])
    assert [t["best_score"] for t in repeated["tasks"]] == [t["best_score"] for t in summary["tasks"]]

    assert "stopped" in ok(cli(env, "down", timeout_s=120))
