"""Test helpers: free ports, a redis-server the tests own, polling with a deadline."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes" if self.aof else "no", "--appendfsync", self.appendfsync]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(up, 10, "redis-server to answer PING")
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
