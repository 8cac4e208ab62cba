"""The SLA policy drives Ray's autoscaler: on Ray's fake multi-node cluster (started by hand, as
../shared/RAY-NOTES.md describes; never `ray stop`), a burst grows the pool beyond the head's CPUs,
`request_resources` makes the autoscaler add a node for the new workers, and when the pool shrinks
again the idle node goes away. No task is lost on the way."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_cli import kill_what_state_names, read_state
from tests.support import alive, free_port, wait_until

pytestmark = pytest.mark.integration


def _ray(*args: str, env: dict[str, str], timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], env=env, capture_output=True,
                          text=True, timeout=timeout_s, check=False)


def _pids_mentioning(directory: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if directory.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@dataclass(frozen=True)
class FakeCluster:
    address: str  # its GCS
    auth_env: dict[str, str]  # what a process connecting to it needs: token auth mode and the cluster's token


@pytest.fixture
def fake_cluster() -> Iterator[FakeCluster]:
    """A fake autoscaling cluster of our own: a 1-CPU head, up to 2 fake nodes of 2 CPUs."""
    root = tempfile.mkdtemp(prefix="orch-fake-")  # short: Ray's socket paths have a length limit
    port = free_port()
    config = {
        "cluster_name": "orch-fake", "max_workers": 2, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.1,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{port}"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "ray.worker.cpu": {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default",
        # What `ray up` would fill in; the monitor reads them. Empty start commands: no `ray stop` anywhere.
        "auth": {}, "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }
    config_file = Path(root) / "autoscaler.yaml"
    config_file.write_text(json.dumps(config))  # JSON is YAML
    # A token of its own: connecting by address needs token auth (Ray 2.60), and ~/.ray/auth_token may not exist.
    token_file = Path(root) / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    env = {**os.environ, **auth_env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}
    started = _ray("start", "--head", f"--port={port}", f"--autoscaling-config={config_file}", "--num-cpus=1",
                   f"--temp-dir={root}/ray", "--include-dashboard=false",
                   f"--dashboard-agent-listen-port={free_port()}", env=env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield FakeCluster(f"127.0.0.1:{port}", auth_env)
    finally:  # stop exactly what this cluster started (its processes name our temp dir), never `ray stop`
        for pid in _pids_mentioning(root):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        shutil.rmtree(root, ignore_errors=True)


def test_the_sla_policy_adds_and_releases_nodes(fake_cluster: FakeCluster, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(fake_cluster.auth_env)
    env.update(ORCH_DATA_DIR=str(tmp_path), RAY_USAGE_STATS_ENABLED="0", ORCH_POOLS__CODEGEN__WORKERS="0",
               ORCH_POOLS__ML__WORKERS="0", ORCH_POOLS__REASONING__WORKERS="1", ORCH_POOLS__REASONING__SLOTS="2",
               ORCH_POOLS__REASONING__NUM_CPUS="1", ORCH_SLA__INTERVAL_S="1",
               ORCH_SLA__POOLS__REASONING__MIN_WORKERS="1", ORCH_SLA__POOLS__REASONING__MAX_WORKERS="3",
               ORCH_SLA__POOLS__REASONING__QUEUE_WAIT_P95_S="0.5", ORCH_SLA__POOLS__REASONING__COOLDOWN_UP_S="0",
               ORCH_SLA__POOLS__REASONING__COOLDOWN_DOWN_S="0", ORCH_SLA__POOLS__REASONING__SCALE_DOWN_AFTER_S="2")
    up = subprocess.run([sys.executable, "-m", "orchestrator.cli", "up", "--address", fake_cluster.address,
                         "--port", str(port), "--no-dashboard", "--timeout", "240"], env=env, capture_output=True, text=True, timeout=300,
                        check=False)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        url = f"http://127.0.0.1:{port}"

        def call(method: str, params: dict[str, Any]) -> Any:
            reply = httpx.post(f"{url}/v1/rpc", json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
                               timeout=60).json()
            assert "error" not in reply, reply
            return reply["result"]

        assert call("status", {})["nodes"] == 1
        ids = [call("run_task", {"tool": "echo", "prompt": f"t{i}", "context": {"delay_ms": 1500, "steps": 3}})
               ["task_id"] for i in range(24)]
        seen: dict[str, int] = {"nodes": 0, "workers": 0}

        def grew() -> bool:
            status = call("status", {})
            live = sum(1 for w in status["workers"] if w["worker_type"] == "reasoning" and not w["draining"])
            seen["nodes"], seen["workers"] = max(seen["nodes"], status["nodes"]), max(seen["workers"], live)
            busy = {r["worker"] for r in status["running"]}
            return status["nodes"] >= 2 and len(busy) == 3  # a new node, and the workers on it running tasks

        wait_until(grew, 120, f"the autoscaler to add a node for the new workers (seen {seen})")
        records = [call("get_task", {"task_id": t}) for t in ids]

        def all_done() -> bool:
            nonlocal records
            records = [call("get_task", {"task_id": t}) for t in ids]
            return all(r["status"] in ("succeeded", "failed", "cancelled") for r in records)

        wait_until(all_done, 180, "every task to finish")
        assert [r["status"] for r in records] == ["succeeded"] * len(ids)
        assert all(r["attempts"] == 1 for r in records)
        wait_until(lambda: call("status", {})["nodes"] == 1, 180, "the idle node to be released")
        live = [w for w in call("status", {})["workers"] if w["worker_type"] == "reasoning" and not w["draining"]]
        assert len(live) == 1
    finally:
        state = read_state(tmp_path)
        subprocess.run([sys.executable, "-m", "orchestrator.cli", "down"], env=env, capture_output=True, timeout=120,
                       check=False)
        if state is not None:
            kill_what_state_names(state)
            assert not alive(state["daemon_pid"])
