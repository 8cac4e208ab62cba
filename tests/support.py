"""Test helpers: free ports, ASGI apps served on them, redis-servers and a Redis Cluster, polling with a deadline."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis
import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(app: Any, ready_path: str, startup_timeout_s: float = 10) -> Iterator[str]:
    """An ASGI app served by uvicorn on a free loopback port in a background thread; yields its URL once
    `ready_path` answers."""
    # We bind and listen ourselves: the port is known up front and early connections wait in the backlog.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"served-{port}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        # One request with a deadline: it is answered as soon as the server accepts from the backlog.
        httpx.get(f"{url}{ready_path}", timeout=startup_timeout_s).raise_for_status()
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def alive(pid: int) -> bool:
    """Whether a process exists and has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def wait_until(check: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)  # poll interval


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)  # poll interval


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL a process and reap it."""
    if proc is not None:
        proc.kill()
        proc.wait()


def spawn_redis(port: int, directory: Path, *args: str) -> subprocess.Popen[bytes]:
    """A redis-server on 127.0.0.1:`port` keeping its files in `directory`, answering PING before this returns."""
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
                             "--save", "", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_until(up, 10, f"redis-server on port {port} to answer PING")
    except TimeoutError:
        stop_process(proc)
        raise
    finally:
        client.close()
    return proc


class RedisServer:
    """A redis-server process on a free port in its own directory; AOF optional; killable and restartable."""

    def __init__(self, aof: bool = False, appendfsync: str = "always") -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="orch-redis-"))
        self.aof, self.appendfsync = aof, appendfsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = spawn_redis(self.port, self.dir, "--appendonly", "yes" if self.aof else "no",
                                "--appendfsync", self.appendfsync)
        return self

    def kill(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisCluster:
    """Three cluster-enabled masters (no replicas) on free ports, each in its own directory; one can be killed
    and restarted on the same port and directory, so it rejoins with its nodes.conf.

    A master that stops answering is marked failing after `node_timeout_ms` (and the cluster with it: no
    replica takes over); once it answers again, the others clear the mark 2 * `node_timeout_ms` after setting it.
    """

    SIZE = 3

    def __init__(self, node_timeout_ms: int = 5000) -> None:
        self.node_timeout_ms = node_timeout_ms
        self.ports = [free_port() for _ in range(self.SIZE)]
        # The bus defaults to port + 10000, which may be taken or above 65535 for an ephemeral port.
        self.bus_ports = [free_port() for _ in range(self.SIZE)]
        self.dirs = [Path(tempfile.mkdtemp(prefix=f"orch-cluster-{port}-")) for port in self.ports]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * self.SIZE

    @property
    def nodes(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(self.nodes)

    def start(self) -> RedisCluster:
        try:
            for i in range(self.SIZE):
                self.start_node(i, wait=False)
            subprocess.run(["redis-cli", "--cluster", "create", *self.nodes, "--cluster-replicas", "0",
                            "--cluster-yes"], check=True, capture_output=True, timeout=30)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def start_node(self, i: int, wait: bool = True) -> None:
        assert self.procs[i] is None, f"node {i} is running"  # a second server would fail to bind, unnoticed
        port, directory = self.ports[i], self.dirs[i]
        self.procs[i] = spawn_redis(port, directory, "--appendonly", "no", "--cluster-enabled", "yes",
                                    "--cluster-config-file", str(directory / f"nodes-{port}.conf"),
                                    "--cluster-port", str(self.bus_ports[i]),
                                    "--cluster-node-timeout", str(self.node_timeout_ms))
        if wait:
            self.wait_ready()

    def kill_node(self, i: int) -> None:
        stop_process(self.procs[i])
        self.procs[i] = None

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Until every node reports cluster_state:ok and all of them map the 16384 slots to the same ports."""
        timeout_s = timeout_s or 10 + 3 * self.node_timeout_ms / 1000  # covers clearing a failed master's mark
        clients = [redis.Redis(port=port, decode_responses=True, socket_timeout=2) for port in self.ports]

        def slot_map(client: redis.Redis) -> list[tuple[int, int, int]]:
            return sorted((int(start), int(end), int(master[1]))
                          for start, end, master, *_replicas in client.execute_command("CLUSTER", "SLOTS"))

        def ready() -> bool:
            try:
                if not all("cluster_state:ok" in client.execute_command("CLUSTER", "INFO") for client in clients):
                    return False
                maps = [slot_map(client) for client in clients]
            except redis.RedisError:
                return False
            covered = sum(end - start + 1 for start, end, _port in maps[0])
            return covered == 16384 and all(m == maps[0] for m in maps)

        try:
            wait_until(ready, timeout_s, "the cluster to be ok on every node with one slot map")
        finally:
            for client in clients:
                client.close()

    def stop(self) -> None:
        for i in range(self.SIZE):
            self.kill_node(i)
        for directory in self.dirs:
            shutil.rmtree(directory, ignore_errors=True)


class RecordingContext:
    """A ToolContext that remembers what a tool reported."""

    def __init__(self) -> None:
        self.progress_calls: list[dict[str, Any]] = []
        self.checkpoints: list[dict[str, Any]] = []

    async def progress(self, data: Mapping[str, Any]) -> None:
        self.progress_calls.append(dict(data))

    async def checkpoint(self, state: Mapping[str, Any], progress: Mapping[str, Any] | None = None) -> None:
        self.checkpoints.append(dict(state))
        if progress is not None:
            self.progress_calls.append(dict(progress))
