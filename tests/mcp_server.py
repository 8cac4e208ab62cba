"""A small MCP server for the tests, built on the SDK's MCPServer; runs over stdio or Streamable HTTP.

    python -m tests.mcp_server stdio
    python -m tests.mcp_server http --port 8765      # Streamable HTTP at http://127.0.0.1:8765/mcp

Tools: add, shout, slow_count (reports progress), fail (raises: an isError result), sleep, header (what the
client sent), traceparent (what the call's _meta carried), handshakes (how many clients connected to this process: proves connection reuse) and pid.
`--page-size N` makes tools/list return N tools per page, to exercise cursor paging.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ListToolsResult

from tests.support import alive, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
# A client connects with either handshake: `server/discover` (2026 protocol) or `initialize` (earlier ones).
_HANDSHAKES = ("server/discover", "initialize")


class _Counters:
    handshakes = 0


def build_server(page_size: int | None = None) -> MCPServer:
    async def count_handshakes(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method in _HANDSHAKES and ctx.request_id is not None:
            _Counters.handshakes += 1
        return await call_next(ctx)

    async def paginate_tools(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        result = await call_next(ctx)
        if ctx.method != "tools/list" or page_size is None or not isinstance(result, ListToolsResult):
            return result
        cursor = (ctx.params or {}).get("cursor")
        start = int(cursor) if isinstance(cursor, str) and cursor.isdigit() else 0
        end = start + page_size
        next_cursor = str(end) if end < len(result.tools) else None
        return ListToolsResult(tools=result.tools[start:end], next_cursor=next_cursor)

    server = MCPServer("orchestrator-test", middleware=[count_handshakes, paginate_tools], log_level="WARNING")

    @server.tool(description="Adds two integers.")
    def add(a: int, b: int) -> int:
        return a + b

    @server.tool(description="Upper-cases a text.")
    def shout(text: str) -> str:
        return text.upper() + "!"

    @server.tool(description="Counts to n, reporting progress after each step.")
    async def slow_count(n: int, delay_ms: int, ctx: Context) -> str:
        for i in range(1, n + 1):
            await asyncio.sleep(delay_ms / 1000)  # the "work"
            await ctx.report_progress(i, n, f"step {i}")
        return f"counted to {n}"

    @server.tool(description="Always fails with the given message (an isError result).")
    def fail(message: str) -> str:
        raise ToolError(message)  # the SDK's: its message is the result's text

    @server.tool(description="Sleeps, then returns how long it slept.")
    async def sleep(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    @server.tool(description="How many clients have connected to this server process.")
    def handshakes() -> int:
        return _Counters.handshakes

    @server.tool(description="The value of an HTTP request header ('' over stdio or when absent).")
    def header(name: str, ctx: Context) -> str:
        return (ctx.headers or {}).get(name.lower(), "")

    @server.tool(description="The W3C traceparent the call carried in its _meta ('' without one).")
    def traceparent(ctx: Context) -> str:
        return str((ctx.request_context.meta or {}).get("traceparent", ""))

    @server.tool(description="The server's process id.")
    def pid() -> int:
        return os.getpid()

    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.mcp_server")
    parser.add_argument("transport", choices=["stdio", "http"])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--page-size", type=int, default=None)
    args = parser.parse_args(argv)
    server = build_server(args.page_size)
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.port)


def stdio_command(*extra: str) -> list[str]:
    """argv that starts this server over stdio (run from the repository root)."""
    return [sys.executable, "-m", "tests.mcp_server", "stdio", *extra]


def stdio_env() -> dict[str, str]:
    """Environment for the stdio server: it must find the `tests` package."""
    return {"PYTHONPATH": str(ROOT)}


class HttpMcpServer:
    """This server over Streamable HTTP as a subprocess on a port; stoppable, killable and restartable."""

    def __init__(self, port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self, timeout_s: float = 20.0) -> HttpMcpServer:
        args = [sys.executable, "-m", "tests.mcp_server", "http", "--port", str(self.port), *self.extra]
        env: Mapping[str, str] = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(args, cwd=ROOT, env=dict(env), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"MCP test server exited with {proc.returncode}")
            try:  # any HTTP answer means uvicorn is serving; the MCP endpoint refuses a bare GET
                httpx.get(self.url, timeout=1.0)
                return True
            except httpx.TransportError:
                return False

        wait_until(up, timeout_s, "the MCP test server to answer")
        return self

    def kill(self) -> None:
        """SIGKILL: the server dies without closing anything."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@contextmanager
def http_server(*extra: str) -> Iterator[HttpMcpServer]:
    """The HTTP flavour on a free port, answering before the body runs; terminated afterwards."""
    server = HttpMcpServer(extra=extra).start()
    try:
        yield server
    finally:
        server.stop()


process_alive = alive


if __name__ == "__main__":
    main()
