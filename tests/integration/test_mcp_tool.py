"""The `mcp` tool against a real MCP server (tests/mcp_server.py) over stdio and Streamable HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from orchestrator.errors import ToolError
from orchestrator.settings import McpServerSettings, ToolSettings
from orchestrator.tools.base import ToolCall
from orchestrator.tools.mcp import McpConnections, McpTool, discover_tools
from tests.mcp_server import HttpMcpServer, http_server, process_alive, stdio_command, stdio_env
from tests.support import RecordingContext

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def http_mcp() -> Iterator[HttpMcpServer]:
    with http_server() as server:
        yield server


@pytest.fixture
async def connections() -> AsyncIterator[McpConnections]:
    conns = McpConnections()
    yield conns
    await conns.aclose()


def stdio_settings(*extra: str, timeout_s: float = 10.0, **kw: Any) -> McpServerSettings:
    return McpServerSettings(command=stdio_command(*extra), env=stdio_env(), timeout_s=timeout_s, **kw)


def tool(name: str, server: McpServerSettings, connections: McpConnections, **kw: Any) -> McpTool:
    return McpTool(name, ToolSettings(kind="mcp", server="test", **kw), "test", server, connections)


async def run(t: McpTool, tool_input: dict[str, Any], ctx: RecordingContext | None = None,
              deadline: float | None = None) -> Any:
    call = ToolCall(task_id="t1", attempt=1, input=tool_input, deadline=deadline)
    return await t.run(call, ctx or RecordingContext())


async def server_pid(server: McpServerSettings, connections: McpConnections) -> int:
    return (await run(tool("pid", server, connections), {}))["structured"]["result"]


async def test_round_trip_over_stdio(connections: McpConnections) -> None:
    server = stdio_settings()
    assert await run(tool("add", server, connections), {"a": 2, "b": 3}) == {
        "content": [{"type": "text", "text": "5"}], "structured": {"result": 5}, "text": "5",
    }
    # A local name mapped to the server's tool name.
    loud = tool("loud", server, connections, remote_tool="shout")
    assert (await run(loud, {"text": "hi"}))["text"] == "HI!"


async def test_round_trip_over_http_sends_the_configured_headers(
    http_mcp: HttpMcpServer, connections: McpConnections
) -> None:
    server = McpServerSettings(url=http_mcp.url, headers={"X-Api-Key": SecretStr("k-123")})
    assert (await run(tool("add", server, connections), {"a": 40, "b": 2}))["structured"] == {"result": 42}
    assert (await run(tool("header", server, connections), {"name": "x-api-key"}))["text"] == "k-123"


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_concurrent_calls_share_one_connection(transport: str, connections: McpConnections) -> None:
    with contextlib.ExitStack() as stack:
        if transport == "stdio":
            server = stdio_settings()
        else:  # a server process of its own: the handshake counter is per process
            server = McpServerSettings(url=stack.enter_context(http_server()).url)
        add = tool("add", server, connections)
        results = await asyncio.gather(*(run(add, {"a": i, "b": 1000}) for i in range(20)))
        assert [r["structured"]["result"] for r in results] == [i + 1000 for i in range(20)]
        assert (await run(tool("handshakes", server, connections), {}))["structured"]["result"] == 1


async def test_progress_notifications_reach_the_context(connections: McpConnections) -> None:
    ctx = RecordingContext()
    result = await run(tool("slow_count", stdio_settings(), connections), {"n": 3, "delay_ms": 10}, ctx)
    assert result["text"] == "counted to 3"
    assert ctx.progress_calls == [
        {"progress": 1.0, "total": 3.0, "message": "step 1"},
        {"progress": 2.0, "total": 3.0, "message": "step 2"},
        {"progress": 3.0, "total": 3.0, "message": "step 3"},
    ]


async def test_error_result_is_a_non_retryable_tool_error(connections: McpConnections) -> None:
    with pytest.raises(ToolError) as caught:
        await run(tool("fail", stdio_settings(), connections), {"message": "disk full"})
    assert "disk full" in str(caught.value)
    assert caught.value.tool_retryable is False


async def test_unknown_remote_tool_is_a_clear_error(connections: McpConnections) -> None:
    with pytest.raises(ToolError) as caught:
        await run(tool("nope", stdio_settings(), connections), {})
    assert "Unknown tool: nope" in str(caught.value)
    assert caught.value.tool_retryable is False


async def test_killed_stdio_server_is_restarted_transparently(connections: McpConnections) -> None:
    server = stdio_settings()
    first = await server_pid(server, connections)
    os.kill(first, signal.SIGKILL)
    second = await server_pid(server, connections)  # no error: one reconnect, a new server process
    assert second != first
    assert (await run(tool("add", server, connections), {"a": 1, "b": 1}))["text"] == "2"


async def test_http_server_down_is_retryable_and_back_works_again(connections: McpConnections) -> None:
    http = HttpMcpServer().start()
    try:
        server = McpServerSettings(url=http.url)
        add = tool("add", server, connections)
        assert (await run(add, {"a": 1, "b": 2}))["text"] == "3"
        http.kill()
        with pytest.raises(ToolError) as caught:
            await run(add, {"a": 1, "b": 2})
        assert caught.value.tool_retryable is True
        assert str(caught.value).startswith("MCP server test is unreachable")
        http.start()  # same port
        assert (await run(add, {"a": 1, "b": 2}))["text"] == "3"
    finally:
        http.stop()


async def test_unstartable_stdio_server_is_a_retryable_error(connections: McpConnections) -> None:
    server = McpServerSettings(command=["/nonexistent/mcp-server"])
    with pytest.raises(ToolError) as caught:
        await run(tool("add", server, connections), {"a": 1, "b": 2})
    assert caught.value.tool_retryable is True
    assert "unreachable" in str(caught.value) and "/nonexistent/mcp-server" in str(caught.value)


async def test_timeout_is_retryable_and_the_connection_survives(connections: McpConnections) -> None:
    server = stdio_settings(timeout_s=2)  # also the bound of the calls after it: not too tight for a loaded machine
    with pytest.raises(ToolError) as caught:
        await run(tool("sleep", server, connections), {"seconds": 30})
    assert caught.value.tool_retryable is True
    assert "within 2s" in str(caught.value)
    assert (await run(tool("add", server, connections), {"a": 1, "b": 1}))["text"] == "2"
    assert (await run(tool("handshakes", server, connections), {}))["structured"]["result"] == 1


async def test_task_deadline_bounds_the_call(connections: McpConnections) -> None:
    server = stdio_settings(timeout_s=30)
    await server_pid(server, connections)  # connected, so the deadline below is spent in the call
    with pytest.raises(ToolError) as caught:
        await run(tool("sleep", server, connections), {"seconds": 30}, deadline=time.time() + 0.5)
    assert caught.value.tool_retryable is False
    assert "deadline" in str(caught.value)


async def test_discover_tools_pages_through_tools_list() -> None:
    server = stdio_settings("--page-size", "2", tool_prefix="t_", worker_type="codegen")
    tools = await discover_tools("test", server)
    assert set(tools) == {"t_add", "t_shout", "t_slow_count", "t_fail", "t_sleep", "t_header", "t_traceparent",
                          "t_handshakes", "t_pid"}
    add = tools["t_add"]
    assert (add.kind, add.server, add.remote_tool, add.worker_type) == ("mcp", "test", "add", "codegen")
    assert add.description == "Adds two integers."
    assert add.input_schema is not None
    assert add.input_schema["required"] == ["a", "b"]
    assert add.input_schema["properties"]["a"]["type"] == "integer"


async def test_imported_tool_publishes_the_servers_schema(connections: McpConnections) -> None:
    server = stdio_settings()
    settings = (await discover_tools("test", server))["shout"]
    shout = McpTool("shout", settings, "test", server, connections)
    assert shout.input_schema["required"] == ["text"]
    assert (await run(shout, {"text": "ok"}))["text"] == "OK!"


async def test_aclose_ends_the_stdio_server() -> None:
    connections = McpConnections()
    pid = await server_pid(stdio_settings(), connections)
    assert process_alive(pid)
    await connections.aclose()
    assert not process_alive(pid)
    with pytest.raises(ToolError):
        await server_pid(stdio_settings(), connections)
