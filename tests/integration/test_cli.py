"""The `orchestrator` console script, run as real subprocesses: up, run, status, down, and its error sentences."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from orchestrator.auth import hash_key, new_key
from orchestrator.local import Layout
from tests.support import alive, free_port, wait_until

pytestmark = pytest.mark.integration


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """This environment without ORCH_* (so no ORCH_REDIS__URL), plus a data dir of the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(ORCH_DATA_DIR=str(data_dir), RAY_USAGE_STATS_ENABLED="0",
               ORCH_POOLS__CODEGEN__WORKERS="0", ORCH_POOLS__ML__WORKERS="0", **extra)
    return env


def cli(env: dict[str, str], *args: str, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout_s, check=False)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


def answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=2)
    except httpx.HTTPError:
        return False
    return True


def read_state(data_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((data_dir / "state.json").read_text())
    except FileNotFoundError:
        return None


def kill_what_state_names(state: dict[str, Any]) -> None:
    """Last resort after a failed `down`: the recorded pids and any process using the recorded Ray temp dir."""
    pids = [state.get("daemon_pid"), state.get("redis_pid") if state.get("started_redis") else None]
    temp_dir = state.get("ray_temp_dir")
    if temp_dir:
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    if f"{temp_dir}/".encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                        pids.append(int(name))
                except OSError:
                    continue
    for pid in pids:
        if pid and alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data dir whose orchestrator is stopped after the test, whatever happened, and then removed.

    Short, so Ray's temp dir fits under it (AF_UNIX socket paths) and goes away with it.
    """
    path = Path(tempfile.mkdtemp(prefix="orch-cli-"))
    yield path
    state = read_state(path)
    if state is not None:
        cli(cli_env(path), "down", timeout_s=120)
        kill_what_state_names(state)
    shutil.rmtree(path, ignore_errors=True)


def rpc(url: str, method: str, params: dict[str, object], key: str | None = None) -> dict[str, object]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    reply = httpx.post(f"{url}/v1/rpc", timeout=30, headers=headers,
                       json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).json()
    return dict(reply["result"])


def test_down_then_up_resumes_unfinished_tasks(data_dir: Path) -> None:
    env = cli_env(data_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    started = ok(cli(env, "up", "--port", str(port), "--no-dashboard"))
    assert f"orchestrator up: {url} (redis redis://127.0.0.1:" in started and "ray local" in started
    assert "auth off: no API keys are configured, so it listens on loopback only" in started
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    state = read_state(data_dir)
    assert state is not None
    assert state["url"] == url and state["started_redis"] is True and state["redis_url"].startswith("redis://")
    assert alive(state["daemon_pid"]) and alive(state["redis_pid"])
    assert state["ray_temp_dir"] == str(data_dir.resolve() / "ray")
    assert "already running" in ok(cli(env, "up", "--port", str(port), "--no-dashboard"))
    # The local Redis wants the password `up` generated (kept 0600 in the data dir), shown nowhere else.
    password_file = data_dir / "redis" / "password"
    password = password_file.read_text().strip()
    assert len(password) >= 32 and password_file.stat().st_mode & 0o777 == 0o600
    assert password not in started + (data_dir / "state.json").read_text()
    redis_port = int(state["redis_url"].rsplit(":", 1)[1].split("/")[0])
    with redis.Redis(port=redis_port) as anonymous, pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with redis.Redis(port=redis_port, password=password) as authenticated:
        assert authenticated.ping()
    assert password not in Path(f"/proc/{state['daemon_pid']}/cmdline").read_text()  # `ps` shows it to anyone
    assert password not in Layout(data_dir.resolve()).log_file.read_text()
    listed = json.loads(ok(cli(env, "keys", "list", "--redis-url", state["redis_url"], "--json")))
    assert listed == []  # straight to the local Redis by the URL `up` printed: its password is added

    record = json.loads(ok(cli(env, "run", "--tool", "echo", "hello", "--wait")))
    assert record["status"] == "succeeded" and record["result"]["text"] == "hello"
    status = json.loads(ok(cli(env, "status", "--json")))
    assert {p["worker_type"] for p in status["pools"]} == {"reasoning", "codegen", "ml"}
    table = ok(cli(env, "status"))
    assert "worker:reasoning:0" in table and "echo" in table

    # One task mid-run with checkpoints, one just submitted; then everything stops.
    running = json.loads(ok(cli(env, "run", "--tool", "echo", "long", "--no-wait",
                                "--context", '{"delay_ms": 6000, "steps": 20}')))
    wait_until(lambda: (rpc(url, "get_task", {"task_id": running["task_id"]}).get("checkpoint") or {}).get("step", 0)
               >= 2, 30, "the long task to checkpoint two steps")
    accepted = json.loads(ok(cli(env, "run", "--tool", "echo", "kept", "--no-wait", "--priority", "2")))
    assert accepted["status"] == "queued"
    stopped = ok(cli(env, "down"))
    assert f"pid {state['daemon_pid']}" in stopped and f"pid {state['redis_pid']}" in stopped
    wait_until(lambda: not alive(state["daemon_pid"]), 10, "the daemon to be gone")
    wait_until(lambda: not alive(state["redis_pid"]), 10, "redis-server to be gone")
    wait_until(lambda: not answers(url), 10, "the port to stop answering")
    assert read_state(data_dir) is None
    assert list((data_dir / "redis").rglob("*.aof")), "no AOF file under the data dir"
    assert "nothing is running" in ok(cli(env, "down"))

    # Up again, now with an API key (set in the environment) and on every interface.
    admin_key = new_key()
    keyed = {**env, "ORCH_AUTH__KEYS__OPS__HASH": hash_key(admin_key), "ORCH_AUTH__KEYS__OPS__TENANT": "ops",
             "ORCH_AUTH__KEYS__OPS__SCOPES": '["admin"]'}
    assert "auth on: 1 API key(s)" in ok(cli(keyed, "up", "--host", "0.0.0.0", "--port", str(port), "--no-dashboard"))
    again = read_state(data_dir)
    assert again is not None and again["redis_url"] == state["redis_url"]  # same port, same data
    assert password_file.read_text().strip() == password  # generated once
    refused = cli(keyed, "status")
    assert refused.returncode == 1 and "error -32011: unauthenticated: no API key" in refused.stderr
    assert "worker:reasoning:0" in ok(cli({**keyed, "ORCH_API_KEY": admin_key}, "status"))
    # Unfinished work resumes: the interrupted task from its checkpoint, the queued one from the stream.
    def done(task_id: str) -> bool:
        return rpc(url, "get_task", {"task_id": task_id}, admin_key)["status"] == "succeeded"

    wait_until(lambda: done(running["task_id"]) and done(accepted["task_id"]), 60, "unfinished tasks to finish")
    kept = rpc(url, "get_task", {"task_id": accepted["task_id"]}, admin_key)
    assert kept["prompt"] == "kept" and kept["priority"] == 2 and kept["result"]["text"] == "kept"
    resumed = rpc(url, "get_task", {"task_id": running["task_id"]}, admin_key)
    assert resumed["attempts"] == 2 and resumed["resumed_from"]["step"] >= 2
    assert resumed["result"] == {"text": "long", "steps": 20}
    ok(cli(env, "down"))
    wait_until(lambda: not alive(again["daemon_pid"]) and not alive(again["redis_pid"]), 10, "all stopped")


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "example.com"])
def test_up_refuses_other_interfaces_than_loopback_without_keys(data_dir: Path, host: str) -> None:
    done = cli(cli_env(data_dir), "up", "--host", host, "--port", str(free_port()))
    assert done.returncode == 1
    assert f"refusing to listen on {host!r} without API keys" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert read_state(data_dir) is None  # nothing was started


def test_up_without_redis_server_on_path(data_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    done = cli(cli_env(data_dir, PATH=str(empty)), "up", "--port", str(free_port()))
    assert done.returncode == 1
    assert ("redis-server was not found on PATH: install Redis 7 (for example `apt-get install redis-server`) "
            "or pass --redis-url redis://HOST:PORT/0 to use a running server.") in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert read_state(data_dir) is None


def test_up_with_unreachable_redis_url(data_dir: Path) -> None:
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    done = cli(cli_env(data_dir), "up", "--port", str(free_port()), "--redis-url", redis_url)
    assert done.returncode == 1
    assert f"cannot reach Redis at {redis_url}: start it, or fix --redis-url / ORCH_REDIS__URL." in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert read_state(data_dir) is None


def test_run_and_status_against_closed_port(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    env = cli_env(tmp_path / "data")
    for args in (("run", "--tool", "echo", "hi", "--url", url), ("status", "--url", url)):
        done = cli(env, *args)
        assert done.returncode == 1
        assert f"no orchestrator answers at {url}: start it with `orchestrator up`." in done.stderr
        assert "Traceback" not in done.stdout + done.stderr
    assert "nothing is running" in ok(cli(env, "down"))


def test_long_data_dir_gets_a_short_ray_temp_dir() -> None:
    """Ray's socket paths must fit AF_UNIX: a long data dir gets a fixed short temp dir of its own instead."""
    from orchestrator.local import RAY_TEMP_DIR_MAX_CHARS, Layout

    long = Path(tempfile.gettempdir()) / ("d" * 80)
    assert len(str(Layout(long).ray_temp_dir)) <= RAY_TEMP_DIR_MAX_CHARS
    assert Layout(long).ray_temp_dir == Layout(long).ray_temp_dir != Layout(long / "other").ray_temp_dir
    assert Layout(Path("/tmp/orch")).ray_temp_dir == Path("/tmp/orch/ray")
