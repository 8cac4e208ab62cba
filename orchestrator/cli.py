"""The `orchestrator` command (the composition root): start and stop a local orchestrator, run tasks, show status."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from orchestrator.settings import Settings

logger = logging.getLogger(__name__)

# soft_wrap: a message stays one line however narrow the terminal (tables still fit its width).
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

app = typer.Typer(
    name="orchestrator",
    help="MCP Orchestrator: run it locally (`up`, `down`), submit tasks (`run`) and look at it (`status`). "
    "Settings come from ORCH_* environment variables (e.g. ORCH_DATA_DIR, ORCH_REDIS__URL) or ORCH_CONFIG_FILE.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

# Ray puts `<temp dir>/session_<date>_<pid>/sockets/plasma_store` in an AF_UNIX address (at most 107 bytes);
# a temp dir longer than this leaves too little room for the rest.
RAY_TEMP_DIR_MAX_CHARS = 40
DAEMON_STOP_TIMEOUT_S = 60.0
# A daemon still starting may sit in ray.init's C code, where no Python signal handler runs; nothing to flush yet.
STARTING_DAEMON_STOP_TIMEOUT_S = 10.0
REDIS_STOP_TIMEOUT_S = 30.0
REDIS_START_TIMEOUT_S = 10.0
REDIS_PING_TIMEOUT_S = 3.0
LEFTOVER_GRACE_S = 5.0
POLL_INTERVAL_S = 0.1
LOG_TAIL_LINES = 30


class Appendfsync(StrEnum):
    ALWAYS = "always"
    EVERYSEC = "everysec"
    NO = "no"


class CliError(Exception):
    """A failure the user can act on: printed as one sentence, exit code 1."""


@dataclass(frozen=True, slots=True)
class Layout:
    """Where `up` keeps things under the (absolute) data dir."""

    data_dir: Path

    @property
    def state_file(self) -> Path:
        return self.data_dir / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.data_dir / "lock"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "orchestrator.log"

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    @property
    def redis_pidfile(self) -> Path:
        return self.redis_dir / "redis.pid"

    @property
    def redis_port_file(self) -> Path:
        return self.redis_dir / "port"

    @property
    def redis_log(self) -> Path:
        return self.redis_dir / "redis.log"

    @property
    def ray_temp_dir(self) -> Path:
        """`<data_dir>/ray`, or a fixed short dir in the system temp dir when that path is too long for Ray."""
        preferred = self.data_dir / "ray"
        if len(str(preferred)) <= RAY_TEMP_DIR_MAX_CHARS:
            return preferred
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"orch-ray-{digest}"


@dataclass(frozen=True, slots=True)
class State:
    """What a running `up` left behind: enough for `down` to stop exactly what it started."""

    daemon_pid: int
    redis_pid: int | None
    url: str
    redis_url: str
    started_redis: bool
    ray_temp_dir: str | None
    ray_address: str | None
    log_file: str


# ---------------------------------------------------------------- commands


@app.command()
def up(
    host: Annotated[str, typer.Option(help="interface the HTTP ingress listens on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port of the HTTP ingress")] = 8000,
    redis_url: Annotated[
        str | None,
        typer.Option(help="use this running Redis (default: ORCH_REDIS__URL, else start a local redis-server)"),
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="connect to this Ray cluster instead of starting a local one")
    ] = None,
    dashboard: Annotated[bool, typer.Option(help="start Ray's dashboard with the local Ray (about 1 GiB more)")] = True,
    appendfsync: Annotated[
        Appendfsync,
        typer.Option(help="fsync policy of the local redis-server's AOF: `always` loses nothing even on power "
                     "failure (slowest); `everysec` may lose the last second on a crash; `no` leaves it to the OS. "
                     "`down` always flushes."),
    ] = Appendfsync.EVERYSEC,
    timeout: Annotated[float, typer.Option(min=1, help="seconds to wait for /healthz to answer 200")] = 120.0,
) -> None:
    """Start the orchestrator in the background (Ray, Serve, router, workers; a local Redis unless given one)."""
    settings = _load_settings()
    layout = _layout(settings)
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    with _locked(layout):
        state = _read_state(layout)
        if state is not None:
            if _is_daemon(state.daemon_pid):
                out.print(f"orchestrator is already running: {state.url} (daemon pid {state.daemon_pid})",
                          markup=False)
                return
            _stop(state, layout)  # stale: a daemon that died; clear what it left
        _check_port_free(host, port)
        given_redis = redis_url or (settings.redis.url if "url" in settings.redis.model_fields_set else None)
        if given_redis is not None:
            _check_redis(given_redis)
            redis_pid, effective_redis = None, given_redis
        else:
            redis_pid, effective_redis = _start_redis(layout, appendfsync)
        url = f"http://{_connect_host(host)}:{port}"
        ray_temp_dir = None if address else layout.ray_temp_dir
        log_offset = layout.log_file.stat().st_size if layout.log_file.exists() else 0
        daemon = _spawn_daemon(layout, host, port, effective_redis, address, dashboard, ray_temp_dir)
        state = State(
            daemon_pid=daemon.pid, redis_pid=redis_pid, url=url, redis_url=effective_redis,
            started_redis=redis_pid is not None, ray_temp_dir=str(ray_temp_dir) if ray_temp_dir else None,
            ray_address=address, log_file=str(layout.log_file),
        )
        _write_state(layout, state)
        try:
            with err.status("starting the orchestrator (Ray, Serve, router, workers)…"):
                problem = _wait_healthy(url, daemon, timeout)
        except KeyboardInterrupt:
            err.print("interrupted: stopping what `up` started…")
            _stop(state, layout, STARTING_DAEMON_STOP_TIMEOUT_S)
            raise typer.Exit(130) from None
        if problem is not None:
            tail = _tail(layout.log_file, log_offset)
            _stop(state, layout, STARTING_DAEMON_STOP_TIMEOUT_S)
            err.print(f"{problem}; its log is {layout.log_file}, last lines:", markup=False)
            err.print(tail, markup=False)
            raise CliError("orchestrator up failed: stopped what it had started.")
    ray_desc = f"ray {address}" if address else "ray local"
    out.print(f"orchestrator up: {url} (redis {effective_redis}, {ray_desc})", markup=False)


@app.command()
def down() -> None:
    """Stop what `up` started (daemon, its local Ray, its redis-server); the Redis data stays."""
    settings = _load_settings()
    layout = _layout(settings)
    if not layout.data_dir.exists():
        out.print("orchestrator down: nothing is running.")
        return
    with _locked(layout):
        state = _read_state(layout)
        if state is None:
            out.print("orchestrator down: nothing is running.")
            return
        stopped = _stop(state, layout)
    if stopped:
        out.print("orchestrator down: stopped " + ", ".join(stopped) + ".", markup=False)
    else:
        out.print("orchestrator down: nothing was running; removed the stale state file.")


@app.command()
def run(
    prompt: Annotated[str, typer.Argument(help="the task's text input")],
    tool: Annotated[str, typer.Option("--tool", "-t", help="a tool from `orchestrator status`")],
    priority: Annotated[int | None, typer.Option(min=0, max=10, help="0 (bulk) .. 10 (urgent, preempts)")] = None,
    context: Annotated[str | None, typer.Option(help='JSON object passed to the tool, e.g. \'{"steps": 3}\'')] = None,
    wait: Annotated[bool, typer.Option(help="wait for the result (else print the task id)")] = True,
    wait_s: Annotated[float, typer.Option(min=0, help="seconds to wait (capped by the server)")] = 60.0,
    agent: Annotated[str | None, typer.Option(help="the submitting agent or tenant")] = None,
    url: Annotated[str | None, typer.Option(help="orchestrator URL (default: the one `up` started)")] = None,
) -> None:
    """Submit a task with `run_task`; print the finished record, or {task_id, status} with --no-wait."""
    params: dict[str, Any] = {"tool": tool, "prompt": prompt}
    if priority is not None:
        params["priority"] = priority
    if context is not None:
        params["context"] = _parse_context(context)
    if wait:
        params["wait"] = wait_s
    if agent is not None:
        params["agent"] = agent
    result = _call(_resolve_url(url), "run_task", params, timeout_s=(wait_s if wait else 0) + 30)
    out.print_json(data=result)


@app.command()
def status(
    url: Annotated[str | None, typer.Option(help="orchestrator URL (default: the one `up` started)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw `status` result")] = False,
) -> None:
    """Show pools, workers, tools and queue depth."""
    result = _call(_resolve_url(url), "status", {}, timeout_s=30)
    if as_json:
        out.print_json(data=result)
        return
    _print_status(result)


@app.command("_daemon", hidden=True)
def daemon(
    host: Annotated[str, typer.Option()],
    port: Annotated[int, typer.Option()],
    redis_url: Annotated[str, typer.Option()],
    address: Annotated[str | None, typer.Option()] = None,
    dashboard: Annotated[bool, typer.Option()] = True,
    ray_temp_dir: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Run Ray, Serve and the app in the foreground until SIGTERM/SIGINT (started by `up`)."""
    handler = logging.StreamHandler()
    handler.setFormatter(_FieldsFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    stop = threading.Event()
    _on_stop_signals(stop)
    settings = _with_endpoints(_load_settings(), redis_url=redis_url, host=host, port=port)
    raise typer.Exit(_serve_until_stopped(settings, stop, address, dashboard, ray_temp_dir))


def main() -> None:
    """Entry point of the `orchestrator` console script."""
    try:
        app()  # click handles usage errors and typer.Exit; our own errors come out here
    except CliError as exc:
        err.print(str(exc), markup=False)
        sys.exit(1)


# ---------------------------------------------------------------- the daemon


def _serve_until_stopped(
    settings: Settings, stop: threading.Event, address: str | None, dashboard: bool, ray_temp_dir: str | None
) -> int:
    if address:
        # Ray 2.60 connects by address only with token auth announced before `import ray`.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray
    from ray import serve

    from deployments.app import deploy, teardown

    if address:
        context = ray.init(address=address, namespace=settings.namespace)
    else:
        context = ray.init(include_dashboard=dashboard, namespace=settings.namespace, _temp_dir=ray_temp_dir)
    logger.info("ray connected", extra={"address": context.address_info.get("gcs_address"),
                                        "dashboard_url": context.dashboard_url or None})
    _on_stop_signals(stop)  # ray.init replaced our SIGTERM handler with one that calls sys.exit
    started_serve = not (address and _serve_running())
    code = 0
    try:
        serve.start(http_options={"host": settings.http.host, "port": settings.http.port})
        deploy(settings)
        logger.info("orchestrator serving", extra={"host": settings.http.host, "port": settings.http.port,
                                                   "redis_url": settings.redis.url, "ray": address or "local"})
        while not stop.wait(1.0):
            continue
        logger.info("stop requested")
    except Exception:
        logger.exception("orchestrator failed")
        code = 1
    finally:
        steps: list[tuple[str, Callable[[], object]]] = [("teardown", lambda: teardown(settings))]
        if started_serve:  # on a cluster we only joined, Serve may serve other apps too
            steps.append(("serve shutdown", serve.shutdown))
        steps.append(("ray shutdown", ray.shutdown))  # only disconnects when we joined by address
        for step, call in steps:
            try:
                call()
            except Exception:
                logger.exception("shutdown step failed", extra={"step": step})
        logger.info("orchestrator stopped", extra={"exit_code": code})
    return code


def _serve_running() -> bool:
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True


def _on_stop_signals(stop: threading.Event) -> None:
    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


class _FieldsFormatter(logging.Formatter):
    """Appends the record's `extra` fields as key=value, so fixed messages still carry their context."""

    _standard = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = {k: v for k, v in record.__dict__.items() if k not in self._standard and not k.startswith("_")}
        if extra:
            text += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return text


# ---------------------------------------------------------------- up and down


def _spawn_daemon(
    layout: Layout, host: str, port: int, redis_url: str, address: str | None, dashboard: bool,
    ray_temp_dir: Path | None,
) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "orchestrator.cli", "_daemon", "--host", host, "--port", str(port),
            "--redis-url", redis_url, "--dashboard" if dashboard else "--no-dashboard"]
    if address:
        args += ["--address", address]
    if ray_temp_dir is not None:
        ray_temp_dir.mkdir(parents=True, exist_ok=True)
        args += ["--ray-temp-dir", str(ray_temp_dir)]
    with layout.log_file.open("ab") as log:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_healthy(url: str, daemon: subprocess.Popen[bytes], timeout_s: float) -> str | None:
    """None once /healthz answers 200; else what went wrong."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            code = daemon.poll()
            if code is not None:
                return f"the orchestrator daemon exited with code {code} while starting"
            try:
                if client.get(f"{url}/healthz").status_code == 200:
                    return None
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(POLL_INTERVAL_S)
    return f"the orchestrator did not answer 200 on {url}/healthz within {timeout_s:g} s"


def _stop(state: State, layout: Layout, daemon_timeout_s: float = DAEMON_STOP_TIMEOUT_S) -> list[str]:
    """Stop what the state says `up` started (and only that); returns what was stopped."""
    stopped: list[str] = []
    daemon_was_alive = _is_daemon(state.daemon_pid)
    if daemon_was_alive:
        _signal(state.daemon_pid, signal.SIGTERM)
        if _wait_gone(state.daemon_pid, daemon_timeout_s):
            stopped.append(f"the daemon (pid {state.daemon_pid})")
        else:
            _signal(state.daemon_pid, signal.SIGKILL)
            _wait_gone(state.daemon_pid, 10)
            stopped.append(f"the daemon (pid {state.daemon_pid}, killed after {daemon_timeout_s:g} s)")
    leftovers = _kill_leftovers(state, daemon_was_alive=daemon_was_alive)
    if leftovers:
        stopped.append(f"{leftovers} leftover Ray process{'es' if leftovers > 1 else ''}")
    redis_port = urllib.parse.urlsplit(state.redis_url).port
    if state.started_redis and state.redis_pid is not None and _is_redis(state.redis_pid, redis_port):
        _signal(state.redis_pid, signal.SIGTERM)  # Redis fsyncs the AOF on SIGTERM before it exits
        if not _wait_gone(state.redis_pid, REDIS_STOP_TIMEOUT_S):
            _signal(state.redis_pid, signal.SIGKILL)
            _wait_gone(state.redis_pid, 10)
        stopped.append(f"redis-server (pid {state.redis_pid}; data kept in {layout.redis_dir})")
    layout.state_file.unlink(missing_ok=True)
    return stopped


def _kill_leftovers(state: State, *, daemon_was_alive: bool) -> int:
    """SIGKILL Ray processes of ours still alive a moment after the daemon: in its session or using its temp dir."""

    def ours() -> list[int]:
        found: list[int] = []
        for pid in _pids():
            if pid == os.getpid():
                continue
            if state.ray_temp_dir and _mentions(pid, state.ray_temp_dir) and _looks_like_ray(pid):
                found.append(pid)  # not, say, a `tail -f` of one of its logs
            elif _session(pid) == state.daemon_pid and (daemon_was_alive or _looks_like_ray(pid)):
                # Ray's helpers rename themselves (`ray::DashboardAgent`) but stay in the daemon's session. Once
                # the daemon is long gone its pid may be reused, so then only Ray-looking processes count.
                found.append(pid)
        return found

    if not ours():
        return 0
    _poll(lambda: not ours(), LEFTOVER_GRACE_S)  # they exit by themselves once the raylet is gone
    left = ours()
    for pid in left:
        _signal(pid, signal.SIGKILL)
    _poll(lambda: not ours(), 10)
    return len(left)


# ---------------------------------------------------------------- redis


def _start_redis(layout: Layout, appendfsync: Appendfsync) -> tuple[int, str]:
    """Start (or adopt, if one of ours survived) the local redis-server; returns its pid and URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise CliError("redis-server was not found on PATH: install Redis 7 (for example `apt-get install "
                       "redis-server`) or pass --redis-url redis://HOST:PORT/0 to use a running server.")
    layout.redis_dir.mkdir(parents=True, exist_ok=True)
    port = _redis_port(layout)
    url = f"redis://127.0.0.1:{port}/0"
    pid = _read_pid(layout.redis_pidfile)
    if pid is not None and _is_redis(pid, port) and _ping(url):
        return pid, url  # left running by an interrupted `down`; same data dir, so keep it
    layout.redis_pidfile.unlink(missing_ok=True)
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(layout.redis_dir.resolve()),
            "--daemonize", "yes", "--pidfile", str(layout.redis_pidfile.resolve()),
            "--logfile", str(layout.redis_log.resolve()), "--appendonly", "yes",
            "--appendfsync", appendfsync.value, "--save", ""]  # AOF only: no RDB save that could refuse a SIGTERM
    log_offset = layout.redis_log.stat().st_size if layout.redis_log.exists() else 0
    launched = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if launched.returncode != 0:
        raise CliError(f"redis-server did not start: {(launched.stderr or launched.stdout).strip()}")

    def ready() -> bool:
        return _read_pid(layout.redis_pidfile) is not None and _ping(url)

    if not _poll(ready, REDIS_START_TIMEOUT_S):
        pid = _read_pid(layout.redis_pidfile)
        if pid is not None and _is_redis(pid, port):
            _signal(pid, signal.SIGKILL)
        err.print(_tail(layout.redis_log, log_offset), markup=False)
        raise CliError(f"redis-server did not answer PING on {url} within {REDIS_START_TIMEOUT_S:g} s: "
                       f"see {layout.redis_log}.")
    pid = _read_pid(layout.redis_pidfile)
    assert pid is not None
    return pid, url


def _redis_port(layout: Layout) -> int:
    """The port chosen the first time, kept next to the data so every `up` finds the same server address."""
    try:
        port = int(layout.redis_port_file.read_text().strip())
    except (OSError, ValueError):
        port = 0
    if port <= 0 or _port_taken("127.0.0.1", port):
        port = _free_port()
        layout.redis_port_file.write_text(f"{port}\n")
    return port


def _check_redis(url: str) -> None:
    if not _ping(url):
        raise CliError(f"cannot reach Redis at {url}: start it, or fix --redis-url / ORCH_REDIS__URL.")


def _ping(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=REDIS_PING_TIMEOUT_S,
                                      socket_timeout=REDIS_PING_TIMEOUT_S)
    except ValueError:  # not a redis:// URL
        return False
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


# ---------------------------------------------------------------- JSON-RPC client


def _call(url: str, method: str, params: dict[str, Any], *, timeout_s: float) -> Any:
    """One JSON-RPC call; any failure becomes a CliError (a JSON-RPC error is printed with its data first)."""
    body = {"jsonrpc": "2.0", "method": method, "params": params, "id": 1}
    try:
        reply = httpx.post(f"{url}/v1/rpc", json=body, timeout=timeout_s)
    except httpx.ConnectError:
        raise CliError(f"no orchestrator answers at {url}: start it with `orchestrator up`.") from None
    except httpx.TimeoutException:
        raise CliError(f"{url} did not answer within {timeout_s:g} s.") from None
    except httpx.HTTPError as exc:
        raise CliError(f"the request to {url} failed: {exc}.") from None
    try:
        payload: Any = reply.json()
    except ValueError:
        raise CliError(f"{url} answered HTTP {reply.status_code} without a JSON-RPC reply: "
                       "is it the orchestrator?") from None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error: dict[str, Any] = payload["error"]
        err.print(f"error {error.get('code')}: {error.get('message')}", markup=False)
        if error.get("data") is not None:
            err.print(json.dumps(error["data"], indent=2), markup=False)
        raise typer.Exit(1)
    if not isinstance(payload, dict) or "result" not in payload:
        raise CliError(f"{url} answered HTTP {reply.status_code} without a JSON-RPC result: is it the orchestrator?")
    return payload["result"]


def _resolve_url(url: str | None) -> str:
    """--url, else the URL `up` recorded, else the configured host and port."""
    if url:
        return url.rstrip("/")
    settings = _load_settings()
    state = _read_state(_layout(settings))
    if state is not None:
        return state.url
    return f"http://{_connect_host(settings.http.host)}:{settings.http.port}"


def _parse_context(text: str) -> dict[str, Any]:
    try:
        value: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"--context is not valid JSON: {exc}.") from None
    if not isinstance(value, dict):
        raise CliError("--context must be a JSON object, e.g. '{\"steps\": 3}'.")
    return value  # pyright: ignore[reportUnknownVariableType]


def _print_status(result: dict[str, Any]) -> None:
    pools = result.get("pools", [])
    priorities = [str(p) for p in range(10, -1, -1)]
    matrix = result.get("matrix", {})
    out.print(_table("pools", ["type", "workers", "slots", "running", "queued"],
                     [[p["worker_type"], p["workers"], p["slots"], p["running"], p["queued"]] for p in pools]))
    out.print(_table("queued by priority", ["type", *priorities],
                     [[t, *(row.get(p, "") for p in priorities)] for t, row in matrix.items() if row]))
    out.print(_table("workers", ["name", "type", "slots", "running", "queued"],
                     [[w["name"], w["worker_type"], w["slots"], w["running"], w["queued"]]
                      for w in result.get("workers", [])]))
    out.print(_table("running", ["task", "tool", "priority", "worker", "agent", "preemptions"],
                     [[r["task_id"], r["tool"], r["priority"], r["worker"], r.get("agent") or "", r["preemptions"]]
                      for r in result.get("running", [])]))
    out.print(_table("tools", ["name", "kind", "worker type"],
                     [[t["name"], t["kind"], t["worker_type"]] for t in result.get("tools", [])]))
    length = result.get("stream_length")
    out.print(f"stream: {length} entr{'y' if length == 1 else 'ies'}, {result.get('stream_pending')} pending; "
              f"active tasks: {result.get('active_tasks')}", markup=False)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    """A table whose first column is left-aligned text and the rest right-aligned values."""
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 or column in ("type", "tool", "worker", "kind", "worker type") else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    return table


# ---------------------------------------------------------------- settings and state


def _load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CliError(f"invalid settings: {where}: {first['msg']} (check the ORCH_* variables "
                       "and the config file).") from None
    except FileNotFoundError as exc:
        raise CliError(f"{exc}.") from None


def _layout(settings: Settings) -> Layout:
    """The data dir made absolute, so `down` finds what `up` wrote from any working directory."""
    return Layout(settings.data_dir.expanduser().resolve())


def _with_endpoints(settings: Settings, *, redis_url: str, host: str, port: int) -> Settings:
    return settings.model_copy(update={
        "redis": settings.redis.model_copy(update={"url": redis_url}),
        "http": settings.http.model_copy(update={"host": host, "port": port}),
    })


def _read_state(layout: Layout) -> State | None:
    try:
        data: Any = json.loads(layout.state_file.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise CliError(f"the state file {layout.state_file} is unreadable: check that no orchestrator "
                       "runs, then remove it.") from None
    try:
        return State(**{f.name: data.get(f.name) for f in fields(State)})
    except (AttributeError, TypeError):
        raise CliError(f"the state file {layout.state_file} is not an orchestrator state file: check that "
                       "no orchestrator runs, then remove it.") from None


def _write_state(layout: Layout, state: State) -> None:
    partial = layout.state_file.with_suffix(".json.tmp")
    partial.write_text(json.dumps(asdict(state), indent=2) + "\n")
    partial.replace(layout.state_file)


@contextmanager
def _locked(layout: Layout) -> Iterator[None]:
    """One `up` or `down` at a time per data dir."""
    with layout.lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------- processes and ports (Linux /proc)


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, session, ...)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def _alive(pid: int) -> bool:
    stat = _stat_fields(pid)
    return stat is not None and stat[0] not in ("Z", "X")  # a zombie has exited; its parent just hasn't reaped it


def _session(pid: int) -> int | None:
    stat = _stat_fields(pid)
    return int(stat[3]) if stat is not None else None


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")


def _mentions(pid: int, directory: str) -> bool:
    return any(directory + "/" in arg or arg.endswith(directory) for arg in _cmdline(pid))


def _looks_like_ray(pid: int) -> bool:
    """A Ray process: renamed (`ray::RouterActor`, `ray-dashboard-NodeHead-0`) or a program of the ray package."""
    args = _cmdline(pid)
    package = _ray_package_dir()
    return bool(args) and (args[0].startswith(("ray::", "ray-dashboard-"))
                           or any(arg.startswith(package) for arg in args[:4]))


def _ray_package_dir() -> str:
    spec = importlib.util.find_spec("ray")  # finds the package without importing it
    if spec is None or spec.origin is None:
        return "/nonexistent/ray/"
    return str(Path(spec.origin).parent) + "/"


def _is_daemon(pid: int) -> bool:
    """Alive and really our daemon (not another process that got the pid later)."""
    args = _cmdline(pid)
    return _alive(pid) and "orchestrator.cli" in args and "_daemon" in args


def _is_redis(pid: int, port: int | None) -> bool:
    """Alive and a redis-server on `port` (it shows `redis-server 127.0.0.1:<port>` as its command line)."""
    text = " ".join(_cmdline(pid))
    return _alive(pid) and "redis-server" in text and (port is None or f":{port}" in text)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int, timeout_s: float) -> bool:
    return _poll(lambda: not _alive(pid), timeout_s)


def _poll(check: Callable[[], bool], timeout_s: float) -> bool:
    """True as soon as `check` holds, False if it still does not after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL_S)
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _tail(path: Path, offset: int, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(the log is empty)"


def _connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _port_taken(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        # Like the servers we start: a port left in TIME_WAIT is free to them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}.") from None
    return False


def _check_port_free(host: str, port: int) -> None:
    if _port_taken(host, port):
        raise CliError(f"port {port} on {host} is already in use: stop what listens there, or pick another --port.")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    main()
