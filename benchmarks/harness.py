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
if str(ROOT) not in sys.path:  # run as a script: make `tests.support` and the packages importable
    sys.path.insert(0, str(ROOT))


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


def _redis_server_class() -> Any:
    """tests.support.RedisServer from a checkout; else a minimal equivalent (an installed package has no tests)."""
    try:
        from tests.support import RedisServer

        return RedisServer
    except ImportError:
        pass

    import socket
    import subprocess

    import redis

    class MiniRedisServer:
        def __init__(self, aof: bool = False, appendfsync: str = "always") -> None:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.port = int(sock.getsockname()[1])
            self.dir = Path(tempfile.mkdtemp(prefix="orch-bench-redis-"))
            self.aof, self.appendfsync = aof, appendfsync
            self.proc: subprocess.Popen[bytes] | None = None

        @property
        def url(self) -> str:
            return f"redis://127.0.0.1:{self.port}/0"

        def start(self) -> MiniRedisServer:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                 "--save", "", "--appendonly", "yes" if self.aof else "no", "--appendfsync", self.appendfsync],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            client, deadline = redis.Redis(port=self.port), time.monotonic() + 10
            while True:
                with contextlib.suppress(redis.ConnectionError):
                    if client.ping():
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError("redis-server did not answer PING")
                time.sleep(0.02)  # poll interval
            client.close()
            return self

        def kill(self) -> None:
            if self.proc is not None:
                self.proc.kill()
                self.proc.wait()
                self.proc = None

        def stop(self) -> None:
            self.kill()
            shutil.rmtree(self.dir, ignore_errors=True)

    return MiniRedisServer


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def own_system(overrides: dict[str, Any], keep_logs: bool = False) -> Iterator[tuple[str, Any]]:
    """redis-server, Ray, Serve and the orchestrator, all ours and all stopped on the way out.

    Yields the base URL and the Settings (built from `overrides`) the system runs with.
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
    import ray
    from ray import serve

    from deployments.app import deploy, teardown
    from orchestrator.settings import Settings

    redis_server = _redis_server_class()(aof=aof, appendfsync="always").start()
    ray_dir = tempfile.mkdtemp(prefix="orch-bench-ray-")
    settings: Any = None
    try:
        ray.init(include_dashboard=False, _temp_dir=ray_dir, log_to_driver=False, namespace="bench")
        # ray.init replaced our SIGTERM handler with one that kills the node's processes and exits
        # without running our cleanup (the redis-server, Ray's agents and the temp dir stay behind).
        signal.signal(signal.SIGTERM, raise_interrupt)
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        unique = uuid.uuid4().hex[:8]
        settings = Settings(
            namespace=f"bench{unique}", redis={"url": redis_server.url, "prefix": f"bench{unique}"}, **overrides
        )
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
