"""The local installation `orchestrator up` manages: where things live, the state file, the daemon, the redis-server, and stopping exactly what was started."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

# soft_wrap: a message stays one line however narrow the terminal.
err = Console(stderr=True, highlight=False, soft_wrap=True)

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
REDIS_PASSWORD_BYTES = 32


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
    def redis_password_file(self) -> Path:
        return self.redis_dir / "password"

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


# ---------------------------------------------------------------- up and down


DAEMON_REDIS_URL = "ORCH_DAEMON_REDIS_URL"  # in the environment, not the command line: `ps` shows arguments


def spawn_daemon(
    layout: Layout, host: str, port: int, redis_url: str, address: str | None, dashboard: bool,
    ray_temp_dir: Path | None,
) -> subprocess.Popen[bytes]:
    """Start the daemon process in its own session, its output appended to the log file.

    The daemon (and through it every actor) gets the local redis-server's URL with its password, in its
    environment.
    """
    args = [sys.executable, "-m", "orchestrator.cli", "_daemon", "--host", host, "--port", str(port),
            "--dashboard" if dashboard else "--no-dashboard"]
    if address:
        args += ["--address", address]
    if ray_temp_dir is not None:
        ray_temp_dir.mkdir(parents=True, exist_ok=True)
        args += ["--ray-temp-dir", str(ray_temp_dir)]
    with layout.log_file.open("ab") as log:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1",
                                                             DAEMON_REDIS_URL: authenticated(layout, redis_url)})


def wait_healthy(url: str, daemon: subprocess.Popen[bytes], timeout_s: float) -> str | None:
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


def stop(state: State, layout: Layout, daemon_timeout_s: float = DAEMON_STOP_TIMEOUT_S) -> list[str]:
    """Stop what the state says `up` started (and only that); returns what was stopped."""
    stopped: list[str] = []
    daemon_was_alive = is_daemon(state.daemon_pid)
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
        _stop_redis(state.redis_pid)
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


def start_redis(layout: Layout, appendfsync: Appendfsync) -> tuple[int, str]:
    """Start (or adopt, if one of ours survived) the local redis-server; returns its pid and URL.

    The server requires the data dir's password (`redis_password`); the URL returned does not carry it, so
    it can be printed and recorded: `authenticated` adds it for the daemon.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise CliError("redis-server was not found on PATH: install Redis 7 (for example `apt-get install "
                       "redis-server`) or pass --redis-url redis://HOST:PORT/0 to use a running server.")
    layout.redis_dir.mkdir(parents=True, exist_ok=True)
    password = redis_password(layout)
    pid, recorded = _read_pid(layout.redis_pidfile), _recorded_port(layout)
    if pid is not None and recorded is not None and _is_redis(pid, recorded):
        if _ping(_with_password(_local_url(recorded), password)):
            return pid, _local_url(recorded)  # left running by an interrupted `down`; same data dir, so keep it
        _stop_redis(pid)  # ours, but without the password (started by an older version): restart it with one
    layout.redis_pidfile.unlink(missing_ok=True)
    port = _redis_port(layout)
    url = _local_url(port)
    authed = _with_password(url, password)
    # `-` reads the password's config line from stdin: it never shows in the server's command line.
    args = [binary, "-", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(layout.redis_dir.resolve()),
            "--daemonize", "yes", "--pidfile", str(layout.redis_pidfile.resolve()),
            "--logfile", str(layout.redis_log.resolve()), "--appendonly", "yes",
            "--appendfsync", appendfsync.value, "--save", ""]  # AOF only: no RDB save that could refuse a SIGTERM
    log_offset = layout.redis_log.stat().st_size if layout.redis_log.exists() else 0
    launched = subprocess.run(args, input=f"requirepass {password}\n", capture_output=True, text=True, check=False)
    if launched.returncode != 0:
        raise CliError(f"redis-server did not start: {(launched.stderr or launched.stdout).strip()}")

    def ready() -> bool:
        return _read_pid(layout.redis_pidfile) is not None and _ping(authed)

    if not _poll(ready, REDIS_START_TIMEOUT_S):
        pid = _read_pid(layout.redis_pidfile)
        if pid is not None and _is_redis(pid, port):
            _signal(pid, signal.SIGKILL)
        err.print(tail(layout.redis_log, log_offset), markup=False)
        raise CliError(f"redis-server did not answer PING on {url} within {REDIS_START_TIMEOUT_S:g} s: "
                       f"see {layout.redis_log}.")
    pid = _read_pid(layout.redis_pidfile)
    assert pid is not None
    return pid, url


def redis_password(layout: Layout) -> str:
    """The local redis-server's password: generated by the first `up`, then kept in the data dir (mode 0600)."""
    path = layout.redis_password_file
    try:
        password = path.read_text().strip()
    except FileNotFoundError:
        password = ""
    if password:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return password
    password = secrets.token_urlsafe(REDIS_PASSWORD_BYTES)
    partial = path.with_name(path.name + ".tmp")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)
    return password


def authenticated(layout: Layout, url: str) -> str:
    """`url` with the local redis-server's password if it is the URL `start_redis` returned, else `url`."""
    port = _recorded_port(layout)
    if port is None or url != _local_url(port) or not layout.redis_password_file.exists():
        return url
    return _with_password(url, redis_password(layout))


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***` (for messages, logs and the state file)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.netloc.rpartition("@")[0].partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{parts.netloc.rpartition('@')[2]}"))


def _local_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def _with_password(url: str, password: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(netloc=f":{urllib.parse.quote(password, safe='')}@{parts.netloc}"))


def _stop_redis(pid: int) -> None:
    _signal(pid, signal.SIGTERM)  # Redis fsyncs the AOF on SIGTERM before it exits
    if not _wait_gone(pid, REDIS_STOP_TIMEOUT_S):
        _signal(pid, signal.SIGKILL)
        _wait_gone(pid, 10)


def _recorded_port(layout: Layout) -> int | None:
    try:
        port = int(layout.redis_port_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return port if port > 0 else None


def _redis_port(layout: Layout) -> int:
    """The port chosen the first time, kept next to the data so every `up` finds the same server address."""
    port = _recorded_port(layout)
    if port is None or _port_taken("127.0.0.1", port):
        port = _free_port()
        layout.redis_port_file.write_text(f"{port}\n")
    return port


def check_redis(url: str) -> None:
    """Raise CliError with one sentence unless the Redis at `url` answers PING."""
    if not _ping(url):
        raise CliError(f"cannot reach Redis at {redact_url(url)}: start it, or fix --redis-url / ORCH_REDIS__URL.")


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


# ---------------------------------------------------------------- state


def read_state(layout: Layout) -> State | None:
    """The state a running `up` left, or None."""
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


def write_state(layout: Layout, state: State) -> None:
    """Write the state file atomically (rename into place); a Redis password in it is redacted."""
    recorded = asdict(state)
    url = recorded["redis_url"]
    recorded["redis_url"] = [redact_url(u) for u in url] if isinstance(url, list) else redact_url(url)
    partial = layout.state_file.with_suffix(".json.tmp")
    partial.write_text(json.dumps(recorded, indent=2) + "\n")
    partial.replace(layout.state_file)


@contextmanager
def locked(layout: Layout) -> Iterator[None]:
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


def is_daemon(pid: int) -> bool:
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


def tail(path: Path, offset: int, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file written after `offset`."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(the log is empty)"


def connect_host(host: str) -> str:
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


def check_port_free(host: str, port: int) -> None:
    """Raise CliError if something already listens on host:port."""
    if _port_taken(host, port):
        raise CliError(f"port {port} on {host} is already in use: stop what listens there, or pick another --port.")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
