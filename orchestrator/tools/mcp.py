"""The `mcp` tool kind: a tool of a downstream MCP server, called over one reused connection per server.

`McpConnections` (one per worker process) keeps one live MCP client per configured server: a stdio
subprocess or a Streamable HTTP endpoint. The SDK's transports are anyio context managers that must be
entered and exited by one task, so each connection is owned by a background task that opens it, hands
the connected client to callers, and waits for the close signal. Requests from many tasks share that one
client; the SDK matches responses to requests by id.

Reconnection: a call whose connection turns out dead (the stdio server exited, the HTTP server went away
or forgot the session) reconnects once and is sent again. If the server died while running it, it runs
again, as it would on a task retry, only sooner. If the server cannot be reached, the call fails with a
retryable `ToolError`, and the next call tries to connect again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import ClassVar, cast

import anyio
import mcp_types
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client  # the SDK's default timeouts, plus our headers
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from orchestrator import tracing
from orchestrator.errors import ToolError
from orchestrator.settings import McpServerSettings, ToolSettings
from orchestrator.tools.base import JsonValue, Tool, ToolCall, ToolContext

logger = logging.getLogger(__name__)

DEFAULT_SCHEMA: Mapping[str, JsonValue] = {"type": "object"}
CONNECT_TIMEOUT_S = 60.0  # a stdio server may first have to install itself (npx, uvx)
CLOSE_TIMEOUT_S = 10.0  # the SDK's stdio shutdown waits 2 s for exit, then SIGTERM, then 2 s, then SIGKILL
MAX_TOOL_PAGES = 100  # tools/list pages read by discover_tools: a paginator that never ends cannot hang startup
_MESSAGE_CHARS = 2000
_CLIENT_INFO = mcp_types.Implementation(name="mcp-orchestrator", version="0.1.0")

class _ConnectionLost(Exception):
    """The connection a request went out on is gone; another connection may work."""


class _Connection:
    """One connected MCP client of one server, owned by a background task from open to close."""

    def __init__(self, name: str, server: McpServerSettings) -> None:
        self.name = name
        self._server = server
        self._ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        self._closing = asyncio.Event()
        self.lost = False  # set by a caller that saw the connection die
        self._task = asyncio.create_task(self._own(), name=f"mcp-connection-{name}")

    @property
    def usable(self) -> bool:
        """Connecting or connected, and not known to be dead."""
        if self.lost or self._task.done():
            return False
        return not self._ready.done() or (not self._ready.cancelled() and self._ready.exception() is None)

    async def client(self) -> Client:
        """The connected client; ToolError (retryable) when the server cannot be reached."""
        try:
            return await asyncio.shield(self._ready)  # a caller that gives up must not cancel the shared connect
        except ToolError as exc:  # one failure, many waiters: each raises its own copy
            raise ToolError(exc.message, retryable=exc.tool_retryable) from None

    async def close(self) -> None:
        """Exit the SDK's contexts (for stdio: end the server process) and wait for it, bounded."""
        self._closing.set()
        if not self._ready.done():
            self._task.cancel()  # still connecting: nothing to close politely
        done, _ = await asyncio.wait({self._task}, timeout=CLOSE_TIMEOUT_S)
        if not done:
            logger.warning("MCP connection did not close in time; cancelling it", extra={"mcp_server": self.name})
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=CLOSE_TIMEOUT_S)

    async def _own(self) -> None:
        failure: ToolError | None = None
        try:
            with anyio.CancelScope() as connect_scope:
                connect_scope.deadline = anyio.current_time() + CONNECT_TIMEOUT_S
                async with connect(self._server) as client:
                    connect_scope.deadline = math.inf  # connected: only the close signal ends it now
                    self._ready.set_result(client)
                    logger.info("MCP server connected", extra={"mcp_server": self.name,
                                                                "protocol_version": client.protocol_version})
                    await self._closing.wait()
            if connect_scope.cancelled_caught and not self._ready.done():
                failure = ToolError(f"MCP server {self.name} did not finish connecting within {CONNECT_TIMEOUT_S:g}s",
                                    retryable=True)
        except Exception as exc:  # the transport's task group fails with an ExceptionGroup
            reason = describe_failure(exc)
            if self._ready.done():
                logger.warning("MCP connection lost", extra={"mcp_server": self.name, "reason": reason})
            else:
                logger.warning("MCP server unreachable", extra={"mcp_server": self.name, "reason": reason})
                failure = ToolError(f"MCP server {self.name} is unreachable: {reason}", retryable=True)
        finally:
            if not self._ready.done():
                self._ready.set_exception(failure or ToolError(f"MCP server {self.name}: connection closed",
                                                               retryable=True))
                self._ready.exception()  # retrieved: no "exception was never retrieved" noise without callers


class McpConnections:
    """The live MCP connections of one worker process, one per server name, shared by all its mcp tools."""

    def __init__(self) -> None:
        self._connections: dict[str, _Connection] = {}
        self._retiring: set[asyncio.Task[None]] = set()  # dead connections exiting their contexts
        self._lock = asyncio.Lock()
        self._closed = False

    async def call_tool(
        self,
        server_name: str,
        server: McpServerSettings,
        tool: str,
        arguments: Mapping[str, JsonValue],
        progress: ProgressFnT | None = None,
    ) -> mcp_types.CallToolResult:
        """`tools/call` on the server's shared connection, reconnecting once if that connection died. (The SDK
        sends the current trace context in the request's `_meta`, SEP-414, under a span of its own.)

        Raises ToolError (retryable) when the server cannot be reached; errors the server answers with
        (`MCPError`) and invalid results propagate for the caller to word.
        """
        connection = await self._connection(server_name, server)
        try:
            return await _call_once(connection, tool, arguments, progress)
        except _ConnectionLost:
            logger.info("MCP connection died; reconnecting", extra={"mcp_server": server_name})
            tracing.event("reconnect", {"mcp_server": server_name})
        connection = await self._connection(server_name, server)
        try:
            return await _call_once(connection, tool, arguments, progress)
        except _ConnectionLost:
            raise ToolError(f"MCP server {server_name} closed the connection during tools/call {tool}",
                            retryable=True) from None

    async def aclose(self) -> None:
        """Close every connection (stdio servers exit); later calls fail."""
        async with self._lock:
            self._closed = True
            connections = list(self._connections.values())
            self._connections.clear()
        await asyncio.gather(*(c.close() for c in connections), *self._retiring)

    async def _connection(self, server_name: str, server: McpServerSettings) -> _Connection:
        """The server's usable connection, opened now if there is none (one per server, however many ask)."""
        async with self._lock:
            if self._closed:
                raise ToolError("MCP connections are closed (the worker is stopping)", retryable=True)
            connection = self._connections.get(server_name)
            if connection is None or not connection.usable:
                if connection is not None:  # a dead one still has to exit its contexts (and reap its process)
                    retiring = asyncio.create_task(connection.close())
                    self._retiring.add(retiring)
                    retiring.add_done_callback(self._retiring.discard)
                connection = _Connection(server_name, server)
                self._connections[server_name] = connection
        await connection.client()  # outside the lock: a slow connect must not hold up other servers
        return connection


async def _call_once(
    connection: _Connection, tool: str, arguments: Mapping[str, JsonValue], progress: ProgressFnT | None
) -> mcp_types.CallToolResult:
    client = await connection.client()
    try:
        return await client.call_tool(tool, dict(arguments), progress_callback=progress)
    except MCPError as exc:
        if not _connection_lost(exc):
            raise
    connection.lost = True
    raise _ConnectionLost()


def _connection_lost(exc: MCPError) -> bool:
    if exc.code == mcp_types.CONNECTION_CLOSED:
        return True
    # Streamable HTTP: the server answered 404 to our session id, e.g. after a restart.
    return exc.code == mcp_types.INVALID_REQUEST and exc.message == "Session terminated"


@asynccontextmanager
async def connect(server: McpServerSettings) -> AsyncGenerator[Client, None]:
    """A connected MCP client of `server` (handshake done); enter and exit it in one task."""
    if server.command is not None:
        params = StdioServerParameters(command=server.command[0], args=server.command[1:], env=server.env or None)
        async with Client(params, client_info=_CLIENT_INFO) as client:
            yield client
        return
    if server.url is None:  # McpServerSettings guarantees one of the two
        raise ValueError("an MCP server needs command or url")
    headers = {key: value.get_secret_value() for key, value in server.headers.items()}
    async with create_mcp_http_client(headers=headers) as http:
        async with Client(streamable_http_client(server.url, http_client=http), client_info=_CLIENT_INFO) as client:
            yield client


def describe_failure(exc: BaseException) -> str:
    """Why a connection failed, in a few words: the first leaf error's type and message, no traceback."""
    exc = _leaf(exc)
    if isinstance(exc, MCPError):
        if exc.code == mcp_types.CONNECTION_CLOSED:
            return "the connection closed during the handshake (did the server exit, or is it not an MCP server?)"
        return f"handshake refused: {exc.message}"
    message = _short(str(exc), 200)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class McpTool(Tool):
    """One tool of a downstream MCP server, called through the worker's shared `McpConnections`."""

    kind: ClassVar[str] = "mcp"
    input_schema: ClassVar[Mapping[str, JsonValue]] = DEFAULT_SCHEMA  # per tool: the server's, see __init__

    def __init__(
        self,
        name: str,
        settings: ToolSettings,
        server_name: str,
        server: McpServerSettings,
        connections: McpConnections,
    ) -> None:
        super().__init__(name)
        self.remote_tool = settings.remote_tool or name
        self.server_name = server_name
        self._server = server
        self._connections = connections
        self._clock: Callable[[], float] = time.time
        # The server's own schema (from tools/list): `schema`, as the python tools name it, and `input_schema`
        # shadowing the class default, so whoever reads `tool.input_schema` gets this tool's.
        self.schema: Mapping[str, JsonValue] = settings.input_schema or DEFAULT_SCHEMA
        self.input_schema = self.schema  # pyright: ignore[reportAttributeAccessIssue]

    async def run(self, call: ToolCall, ctx: ToolContext) -> JsonValue:
        """Call the remote tool with the task's input; progress notifications become task progress."""
        limit_s, by_deadline = self._time_limit_s(call.deadline)
        updates: asyncio.Queue[dict[str, JsonValue] | None] = asyncio.Queue()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            update: dict[str, JsonValue] = {"progress": progress}
            if total is not None:
                update["total"] = total
            if message is not None:
                update["message"] = message
            updates.put_nowait(update)

        # Progress is reported from a task of this call, in order, and all of it before the result returns.
        forwarder = asyncio.create_task(_forward_progress(updates, ctx))
        try:
            with tracing.span(f"tools/call {self.remote_tool}", kind=tracing.SpanKind.CLIENT) as span:
                if span.is_recording():
                    span.set_attributes({"mcp.method.name": "tools/call", "gen_ai.tool.name": self.remote_tool,
                                         "orchestrator.mcp_server": self.server_name})
                result = await self._call(call.input, limit_s, by_deadline, on_progress)
        except BaseException:
            forwarder.cancel()
            await asyncio.wait({forwarder})
            if not forwarder.cancelled():
                forwarder.exception()  # the call's own error is the one to report
            raise
        updates.put_nowait(None)
        await forwarder
        return self._result(result)

    async def _call(
        self, tool_input: Mapping[str, JsonValue], limit_s: float, by_deadline: bool, progress: ProgressFnT
    ) -> mcp_types.CallToolResult:
        try:
            async with asyncio.timeout(limit_s):
                return await self._connections.call_tool(
                    self.server_name, self._server, self.remote_tool, tool_input, progress
                )
        except TimeoutError:
            if by_deadline:
                raise ToolError(f"task deadline reached while waiting for MCP server {self.server_name} "
                                f"({limit_s:.3g}s)") from None
            raise ToolError(f"MCP server {self.server_name} did not answer tools/call {self.remote_tool} "
                            f"within {limit_s:g}s", retryable=True) from None
        except MCPError as exc:
            raise self._refused(exc) from None
        except (ValidationError, RuntimeError) as exc:  # a malformed result, or one the SDK cannot finish
            logger.warning("invalid MCP result", extra={"mcp_server": self.server_name, "tool": self.remote_tool,
                                                        "error": type(exc).__name__})
            raise ToolError(f"MCP server {self.server_name} returned an invalid result for tool "
                            f"{self.remote_tool}") from None
        except ToolError:
            raise
        except Exception as exc:  # whatever else the SDK raises: a readable error here, the traceback in the log
            logger.warning("MCP call failed", exc_info=True, extra={"mcp_server": self.server_name,
                                                                     "tool": self.remote_tool})
            raise ToolError(f"MCP server {self.server_name}: tools/call {self.remote_tool} failed "
                            f"({type(exc).__name__})", retryable=True) from None

    def _time_limit_s(self, deadline: float | None) -> tuple[float, bool]:
        """Seconds this call may take, and whether the task deadline (not timeout_s) set it."""
        timeout_s = self._server.timeout_s
        if deadline is None:
            return timeout_s, False
        left_s = deadline - self._clock()
        if left_s <= 0:
            raise ToolError(f"task deadline passed before MCP server {self.server_name} was called")
        return (left_s, True) if left_s < timeout_s else (timeout_s, False)

    def _refused(self, exc: MCPError) -> ToolError:
        """The server answered tools/call with a JSON-RPC error (unknown tool, invalid params, its own fault)."""
        message = _short(exc.message, _MESSAGE_CHARS)
        if exc.code == mcp_types.REQUEST_TIMEOUT:
            return ToolError(f"MCP server {self.server_name}: tools/call {self.remote_tool} timed out", retryable=True)
        if exc.code == mcp_types.METHOD_NOT_FOUND:
            return ToolError(f"MCP server {self.server_name} does not serve tools (tools/call: {message})")
        # -32603 is also what the HTTP transport reports for a 5xx without a JSON-RPC body: worth a retry.
        retryable = exc.code == mcp_types.INTERNAL_ERROR
        return ToolError(f"MCP server {self.server_name} refused tools/call {self.remote_tool}: {message}",
                         retryable=retryable)

    def _result(self, result: mcp_types.CallToolResult) -> dict[str, JsonValue]:
        text = "\n".join(block.text for block in result.content if isinstance(block, mcp_types.TextContent))
        if result.is_error:
            raise ToolError(_short(text, _MESSAGE_CHARS) if text else
                            f"MCP tool {self.remote_tool} on server {self.server_name} failed (no message)")
        return {
            "content": [block.model_dump(by_alias=True, mode="json", exclude_none=True) for block in result.content],
            "structured": result.structured_content,
            "text": text,
        }


async def _forward_progress(updates: asyncio.Queue[dict[str, JsonValue] | None], ctx: ToolContext) -> None:
    """Report each update; when they arrive faster than they are persisted, only the newest of a backlog."""
    while (update := await updates.get()) is not None:
        while not updates.empty():
            newer = updates.get_nowait()
            if newer is None:
                await ctx.progress(update)
                return
            update = newer
        await ctx.progress(update)


async def discover_tools(server_name: str, server: McpServerSettings) -> dict[str, ToolSettings]:
    """The server's tools (every tools/list page) as mcp tool settings, named `<tool_prefix><remote name>`.

    Raises ToolError (retryable) when the server cannot be reached or listed within its timeout_s.
    """
    try:
        async with asyncio.timeout(server.timeout_s):
            async with connect(server) as client:
                try:
                    listed = await _list_tools(client, server_name)
                except MCPError as exc:
                    message = _short(exc.message, 200)
                    raise ToolError(f"MCP server {server_name} refused tools/list: {message}") from None
    except TimeoutError:
        raise ToolError(f"MCP server {server_name} did not list its tools within {server.timeout_s:g}s",
                        retryable=True) from None
    except Exception as exc:  # the SDK's task groups may wrap our own ToolError in an ExceptionGroup
        leaf = _leaf(exc)
        if isinstance(leaf, ToolError):
            raise leaf from None
        raise ToolError(f"MCP server {server_name} is unreachable: {describe_failure(exc)}", retryable=True) from None
    return {
        server.tool_prefix + tool.name: ToolSettings(
            kind="mcp",
            server=server_name,
            remote_tool=tool.name,
            worker_type=server.worker_type,
            description=tool.description or tool.title or "",
            input_schema=dict(tool.input_schema),
        )
        for tool in listed
    }


async def _list_tools(client: Client, server_name: str) -> list[mcp_types.Tool]:
    """Every page of tools/list, following the cursor."""
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    for _ in range(MAX_TOOL_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            return tools
    logger.warning("tools/list did not end; keeping the tools listed so far",
                   extra={"mcp_server": server_name, "pages": MAX_TOOL_PAGES})
    return tools


def _leaf(exc: BaseException) -> BaseException:
    """The first non-group exception inside (anyio task groups wrap what fails in them)."""
    while isinstance(exc, BaseExceptionGroup):
        group = cast(BaseExceptionGroup[BaseException], exc)
        exc = group.exceptions[0]
    return exc


def _short(message: str, limit: int) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"

