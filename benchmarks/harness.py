"""What every benchmark needs: a self-hosted system (redis-server, Ray, Serve, the orchestrator) and percentiles."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout as a script: make `tests.support` importable
    sys.path.insert(0, str(ROOT))

from tests.support import RedisServer


def wait_healthy(base_url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{base_url}/healthz not ready after {timeout_s}s")
        time.sleep(0.2)  # poll interval


def raise_interrupt(signum: int, frame: Any) -> None:
    """SIGTERM handler: unwind through the same cleanup as Ctrl-C."""
    raise KeyboardInterrupt


# --- a system of our own ------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def own_system(overrides: dict[str, Any], keep_logs: bool = False) -> Iterator[tuple[str, Any]]:
    """redis-server, Ray, Serve and the orchestrator, all ours and all stopped on the way out.

    Yields the base URL and the Settings (built from `overrides`; a `redis` entry adds to the Redis URL and key
    prefix of our own) the system runs with.
    """
    with own_system_with_redis(overrides, keep_logs) as (base_url, settings, _redis_server):
        yield base_url, settings


@contextlib.contextmanager
def own_system_with_redis(overrides: dict[str, Any], keep_logs: bool = False, *,
                          aof: bool = False) -> Iterator[tuple[str, Any, Any]]:
    """own_system, also yielding its redis-server: `kill()` it (SIGKILL) and `start()` it again on the
    same port and directory. With `aof`, Redis appends every write to its AOF and fsyncs it before
    answering (appendfsync always), so a restart brings back every write it acknowledged.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from orchestrator.settings import HttpSettings, Settings

    os.environ.update(HttpSettings(**overrides.get("http", {})).ray_environment())  # before Serve is imported
    import ray
    from ray import serve

    from deployments.app import deploy, init_local_ray, teardown

    caller_sigterm = signal.getsignal(signal.SIGTERM)
    redis_server = RedisServer(aof=aof, appendfsync="always").start()
    ray_dir = tempfile.mkdtemp(prefix="orch-bench-ray-")
    settings: Any = None
    try:
        init_local_ray(include_dashboard=False, _temp_dir=ray_dir, log_to_driver=False, namespace="bench")
        # ray.init replaced our SIGTERM handler with one that kills the node's processes and exits
        # without running our cleanup (the redis-server, Ray's agents and the temp dir stay behind).
        signal.signal(signal.SIGTERM, raise_interrupt)
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        unique = uuid.uuid4().hex[:8]
        redis_settings = {"url": redis_server.url, "prefix": f"bench{unique}", **overrides.get("redis", {})}
        settings = Settings(namespace=f"bench{unique}", redis=redis_settings,
                            **{key: value for key, value in overrides.items() if key != "redis"})
        deploy(settings)
        base_url = f"http://127.0.0.1:{port}"
        wait_healthy(base_url)
        yield base_url, settings, redis_server
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        try:
            if settings is not None:
                with contextlib.suppress(Exception):
                    teardown(settings)
            if ray.is_initialized():
                with contextlib.suppress(Exception):
                    serve.shutdown()
                ray.shutdown()
        finally:
            # ray.shutdown leaves SIGTERM at its default action below Python (getsignal still names our
            # handler): a SIGTERM now, or while the next system starts, would kill us without cleanup.
            if caller_sigterm is not None:
                signal.signal(signal.SIGTERM, caller_sigterm)
            redis_server.stop()
            if keep_logs:
                print(f"Ray logs kept in {ray_dir}", file=sys.stderr)
            else:
                shutil.rmtree(ray_dir, ignore_errors=True)
            signal.signal(signal.SIGINT, previous)


# --- the report ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# --- CPU per process ----------------------------------------------------------------------------


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def cpu_by_process(root: int | None = None) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of a process and all its descendants: pid → (name, seconds).

    Ray's processes rename themselves (`ray::WorkerActor`), so the name is the process's own command line's
    first word, which tells the worker actors, the ingress replica, the proxy, redis-server and the rest apart.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    usage: dict[int, tuple[str, float]] = {}
    for pid in _descendants(root or os.getpid()):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            name = argv[0].decode(errors="replace").rsplit("/", 1)[-1] or "?"
            if name.startswith("python") and len(argv) > 1:
                name = argv[1].decode(errors="replace").rsplit("/", 1)[-1] or name
            usage[pid] = (name.split(" ")[0][:40], (int(fields[11]) + int(fields[12])) / ticks)
    return usage


def cpu_spent(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent between two `cpu_by_process` readings, summed per process name, largest first."""
    spent: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        spent[name] = spent.get(name, 0.0) + seconds - before.get(pid, (name, 0.0))[1]
    return dict(sorted(((n, round(s, 2)) for n, s in spent.items() if s >= 0.01), key=lambda kv: -kv[1]))


def rss_by_process(root: int | None = None) -> dict[str, int]:
    """Resident memory (bytes) of a process and its descendants, summed per process name (as `cpu_by_process`)."""
    found: dict[str, int] = {}
    for pid in _descendants(root or os.getpid()):
        with contextlib.suppress(OSError, IndexError, ValueError):
            status = Path(f"/proc/{pid}/status").read_text()
            rss_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            name = argv[0].decode(errors="replace").rsplit("/", 1)[-1] or "?"
            if name.startswith("python") and len(argv) > 1:
                name = argv[1].decode(errors="replace").rsplit("/", 1)[-1] or name
            name = name.split(" ")[0][:40]
            found[name] = found.get(name, 0) + rss_kb * 1024
    return found
