"""The MCP face at `/mcp`: the JSON-RPC methods, every registered tool and every workflow as MCP tools over
Streamable HTTP, served by any replica.

Every tool call is a JSON-RPC request handed to the same dispatcher as `/v2/rpc`, with the caller's API
key, so both faces accept exactly the same params and answer the same results and errors; a registered tool's
call is a `run_task` of it (a workflow's a `run_saga`), followed to its end. The SDK serves
each request statelessly (any replica can answer it); the sessions of the `initialize` handshake live in
Redis, so a session opened on one replica is served, and ended, by every other one — for the key that
opened it only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import mcp_types as types
import redis.asyncio as aioredis
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, SESSION_ID_PATTERN
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp.shared.jsonrpc_dispatcher import progress_token_from_params
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION
from pydantic import Field, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from deployments.http_auth import NOT_IN, caller, refusal
from orchestrator import events, inputs, mcp_tools
from orchestrator.adapters.channels import Channels
from orchestrator.adapters.key_store import KeyRing
from orchestrator.adapters.keys import Keys
from orchestrator.adapters.task_store import TaskStore, storage_errors
from orchestrator.adapters.tenant_slots import TenantSlots
from orchestrator.auth import READ, SUBMIT, Principal
from orchestrator.errors import InputNotExpectedError, InvalidParamsError, OrchestratorError, QuotaExceededError
from orchestrator.jsonrpc import Method, to_jsonrpc_error
from orchestrator.mcp_tools import Runnable
from orchestrator.models import FINISHED, RunTaskResult, TaskStatus, WaitSeconds
from orchestrator.settings import Settings

logger = logging.getLogger(__name__)

Rpc = Callable[[bytes, Principal], Awaitable[bytes | None]]
"""Answers one JSON-RPC request body (API v2) for a caller."""
Report = Callable[[float, float | None, str | None], Awaitable[None]]
"""Sends one progress notification (a no-op when the request carried no progressToken)."""

TOOLS = ("run_task", "get_task", "cancel_task", "provide_input", "rerun_task", "status", "analytics", "run_saga", "get_saga",
         "cancel_saga", "rerun_saga", "list_workflows", "create_schedule", "get_schedule", "list_schedules",
         "pause_schedule", "resume_schedule", "delete_schedule", "list_tasks", "list_sagas")
"""The methods offered as MCP tools, in this order, when the dispatcher has them."""

READ_ONLY = frozenset({"get_task", "status", "analytics", "get_saga", "list_workflows", "get_schedule",
                       "list_schedules", "list_tasks", "list_sagas"})
DESTRUCTIVE = frozenset({"cancel_task", "cancel_saga", "delete_schedule"})
SESSION_IDLE_S = 30 * 60  # as the SDK's stateful sessions: an unused session ends after this
SESSIONS = "max_mcp_sessions"  # the kind of slot a session holds (the quota a refusal names)
MAX_MESSAGE_CHARS = 2000  # of a progress message that is not partial model output
SAGA_POLL_S = 0.5  # how often a workflow's call reads its saga (sagas publish no events)
RETRY_S = 1.0  # after Redis failed us while following a call's task
CANCEL_TIMEOUT_S = 10.0  # to cancel the task of a call whose client went away
SAGA_FINISHED = frozenset({"succeeded", "failed", "cancelled", "failed_compensation"})
_PRINCIPAL = "orchestrator.principal"  # where a request's caller is kept in its ASGI scope
_NOBODY = Principal("nobody", None, frozenset())  # a request that did not come through __call__ may do nothing
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
_WAIT: TypeAdapter[float] = TypeAdapter(WaitSeconds)
_RUN_TASK_NOTE = (
    " Over MCP, a call with `wait` and a progressToken receives progress notifications from the task's events"
    " while it waits (an LLM's partial output as the message); without `wait` it answers at once with the"
    " task id, and `get_task` fetches the result later."
)


def tool_definitions(methods: Sequence[Method]) -> list[types.Tool]:
    """The MCP tools of the given JSON-RPC methods: their params models are the input schemas."""
    by_name = {method.name: method for method in methods}
    tools: list[types.Tool] = []
    for name in TOOLS:
        method = by_name.get(name)
        if method is None:
            continue
        tools.append(types.Tool(
            name=name,
            description=method.summary + (_RUN_TASK_NOTE if name == "run_task" else ""),
            # The very schema the dispatcher validates params against (Dispatcher.__init__).
            input_schema=method.params.model_json_schema(),
            output_schema=output_schema(method.result),
            execution=mcp_tools.execution("forbidden"),  # each answers at once (run_task: within its `wait`)
            annotations=types.ToolAnnotations(
                read_only_hint=name in READ_ONLY,
                destructive_hint=name in DESTRUCTIVE if name not in READ_ONLY else None,
                idempotent_hint=name in READ_ONLY or name in DESTRUCTIVE,
                open_world_hint=name == "run_task",
            ),
        ))
    return tools


def output_schema(result_type: Any) -> dict[str, Any]:
    """The JSON Schema of a method's structured result: the result itself when it is an object (or a
    choice of objects), else `{"result": …}`. MCP wants an object at the root."""
    schema: dict[str, Any] = TypeAdapter(result_type).json_schema()
    if schema.get("type") == "object":
        return schema
    if "anyOf" in schema and all(_is_object(branch, schema) for branch in schema["anyOf"]):
        return {"type": "object", **schema}
    definitions = schema.pop("$defs", None)
    wrapped: dict[str, Any] = {"type": "object", "properties": {"result": schema}, "required": ["result"],
                               "additionalProperties": False}
    if definitions:
        wrapped["$defs"] = definitions
    return wrapped


def _is_object(branch: Mapping[str, Any], root: Mapping[str, Any]) -> bool:
    ref = branch.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        branch = root.get("$defs", {}).get(ref.removeprefix("#/$defs/"), {})
    return branch.get("type") == "object"


def to_tool_result(reply: Mapping[str, Any]) -> types.CallToolResult:
    """A JSON-RPC response as an MCP tool result; an error becomes `isError` with its code, message and data."""
    if "error" in reply:
        error = dict(reply["error"])
        return types.CallToolResult(content=[types.TextContent(text=describe_error(error))],
                                    structured_content={"error": error}, is_error=True)
    result = reply.get("result")
    text = json.dumps(result, ensure_ascii=False, separators=(",", ":"))
    structured = result if isinstance(result, dict) else {"result": result}
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=structured)


def describe_error(error: Mapping[str, Any]) -> str:
    """One readable line: the message, the JSON-RPC code, and the offending fields or the reason."""
    text = f"{error.get('message', 'error')} (JSON-RPC error {error.get('code')})"
    data = error.get("data")
    if isinstance(data, dict):
        fields = data.get("fields")
        if isinstance(fields, dict) and fields:
            text += ": " + "; ".join(f"{path}: {why}" for path, why in fields.items())
        elif isinstance(data.get("reason"), str):
            text += f": {data['reason']}"
        elif isinstance(data.get("known"), list):
            text += f"; known: {', '.join(map(str, data['known']))}"
        if data.get("retryable"):
            after = data.get("retry_after_s")
            text += " (retryable" + (f" after {after} s)" if after is not None else ")")
    return text


def progress_message(kind: str, data: Any) -> str:
    """What a client shows for one task event: a model's partial output as is, else a short line."""
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return f"{kind}: {error['message']}"[:MAX_MESSAGE_CHARS]
    if kind in FINISHED:  # the result itself follows as the tool result
        return kind
    if kind == "progress" and isinstance(data, dict):
        if isinstance(data.get("delta"), str):
            return str(data["delta"])
        if isinstance(data.get("step"), int) and isinstance(data.get("steps"), int):
            return f"step {data['step']}/{data['steps']}"
    if kind == "running" and isinstance(data, dict) and "attempt" in data:
        return f"running (attempt {data['attempt']}, worker {data.get('worker')})"
    if data is None or data == {}:
        return kind
    return f"{kind} {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}"[:MAX_MESSAGE_CHARS]


def transport_security(host: str) -> TransportSecuritySettings:
    """DNS-rebinding protection: Host and Origin must name this machine's loopback or the configured host.

    Bound to a wildcard address the names clients use are unknown, so (like the SDK for any non-local
    host) the check is off; the API keys guard such a deployment.
    """
    if host in _WILDCARD_HOSTS:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    names: list[str] = list(_LOCAL_HOSTS)
    own = f"[{host}]" if ":" in host and not host.startswith("[") else host
    if own not in names:
        names.append(own)
    hosts = [pattern for name in names for pattern in (name, f"{name}:*")]
    origins = [f"{scheme}://{pattern}" for scheme in ("http", "https") for pattern in hosts]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                     allowed_origins=origins)


class SessionRegistry:
    """MCP sessions in Redis (id → negotiated protocol version, the key that opened it, when), shared by every
    replica; idle ones expire, every one ends after `max_s`, and a tenant holds at most `per_tenant` at once."""

    def __init__(self, client: aioredis.Redis, prefix: str, idle_s: int = SESSION_IDLE_S, *,
                 per_tenant: int = 64, max_s: float = 86_400.0) -> None:
        self._redis, self._keys, self._idle_s = client, Keys(prefix), idle_s
        self._slots = TenantSlots(client, prefix)
        self._per_tenant, self._max_s = per_tenant, max_s

    def _key(self, session_id: str) -> str:
        return self._keys.mcp_session(session_id)

    async def open(self, protocol_version: str, principal: Principal) -> str:
        """A new session's id; raises QuotaExceededError when the tenant has as many open as it may."""
        session_id = uuid.uuid4().hex
        await self._slots.take(SESSIONS, principal.tenant, session_id, self._per_tenant, self._idle_s)
        value = json.dumps({"version": protocol_version, "key": _holder(principal), "opened": time.time()})
        with storage_errors():
            await self._redis.set(self._key(session_id), value, ex=self._idle_s)
        return session_id

    async def touch(self, session_id: str, principal: Principal) -> str | None:
        """The session's protocol version (its idle time restarts), or None when it does not exist — or was
        opened with another key: a session id is no key of its own."""
        if len(session_id) > 64 or not SESSION_ID_PATTERN.fullmatch(session_id):
            return None
        with storage_errors():
            raw = await self._redis.getex(self._key(session_id), ex=self._idle_s)
        try:
            session = json.loads(raw) if raw is not None else None
        except ValueError:  # written by an older version: the client initializes again
            return None
        if not isinstance(session, dict) or session.get("key") != _holder(principal):
            return None
        left_s = float(session.get("opened", 0)) + self._max_s - time.time()
        if left_s <= 0:  # too old, idle or not: the client initializes again
            await self.close(session_id, principal)
            return None
        await self._slots.take(SESSIONS, principal.tenant, session_id, self._per_tenant, min(self._idle_s, left_s))
        return str(session.get("version"))

    async def close(self, session_id: str, principal: Principal) -> None:
        with storage_errors():
            await self._redis.delete(self._key(session_id))
        await self._slots.release(SESSIONS, principal.tenant, session_id)


class McpFace:
    """The MCP server of one ingress replica, as an ASGI app; `response()` hands it one HTTP exchange."""

    def __init__(self, settings: Settings, methods: Sequence[Method], rpc: Rpc, store: TaskStore, channels: Channels,
                 sessions: SessionRegistry, authenticator: KeyRing, *, version: str = "") -> None:
        self._settings, self._rpc, self._store, self._channels, self._sessions = settings, rpc, store, channels, sessions
        self._auth = authenticator
        self._tools = tool_definitions(methods)
        self._tool_names = frozenset(tool.name for tool in self._tools)
        self._scopes = {method.name: method.scope for method in methods}
        runnables, left_out = mcp_tools.runnables(settings.tools, settings.all_workflows(), self._tool_names)
        self._runnables = {runnable.name: runnable for runnable in runnables}
        for what, why in left_out.items():
            logger.warning("not offered as an MCP tool", extra={"tool": what, "reason": why})
        self._server: Server[Any] = Server(
            "mcp-orchestrator",
            version=version,
            instructions="Runs AI tasks (LLM calls, code generation, ML jobs) and sagas durably. Every tool and "
                         "workflow is an MCP tool: a call runs it as a durable task to its end (priority, "
                         f"idempotency key and deadline in _meta under {mcp_tools.META_PREFIX}). `run_task` "
                         "submits without waiting; `get_task` follows up.",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,  # type: ignore[arg-type]  # a CreateTaskResult is a dict
        )
        # The Tasks extension (2026-07-28 wire): advertised in server/discover and initialize.
        self._server.extensions[mcp_tools.TASKS] = {}
        self._server.add_request_handler("tasks/get", _TaskParams, self._get_task)
        self._server.add_request_handler("tasks/cancel", _TaskParams, self._cancel_task)
        self._server.add_request_handler("tasks/update", _UpdateParams, self._update_task)
        self._ttl_ms = settings.redis.retention_s * 1000  # a record outlives its creation at least this long
        security = transport_security(settings.http.host)
        self._security = TransportSecurityMiddleware(security)
        # Stateless: the SDK keeps nothing between requests, so any replica can serve any of them; the
        # handshake's sessions are kept in Redis by `__call__`.
        self._manager = StreamableHTTPSessionManager(
            self._server, stateless=True, json_response=False, security_settings=security,
            max_request_body_size=settings.limits.max_body_bytes,
        )
        self._runner: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None

    def response(self) -> Response:
        """A response object that serves the current HTTP exchange with this MCP server."""
        return _Exchange(self)

    def close(self) -> None:
        """Stop the SDK's session manager (its task group); requests in flight are cancelled."""
        if self._runner is not None and not self._runner.done():
            with contextlib.suppress(RuntimeError):  # the loop may already be closed at interpreter exit
                self._runner.cancel()

    # --- HTTP -------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._started()
        request = Request(scope, receive)
        # Host/Origin first, so nothing below (sessions, 404s) answers a DNS-rebound page.
        rejected = await self._security.validate_request(request, is_post=False)
        if rejected is not None:
            await rejected(scope, receive, send)
            return
        try:
            principal = await caller(self._auth, request.headers)
        except NOT_IN as exc:
            await refusal(exc)(scope, receive, send)
            return
        scope[_PRINCIPAL] = principal  # the SDK hands handlers a Request over this same scope
        version = request.headers.get(MCP_PROTOCOL_VERSION_HEADER)
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            # 2026-07-28 and later: every request carries its own envelope; there are no sessions.
            await self._manager.handle_request(scope, receive, send)
            return
        session_id = request.headers.get(MCP_SESSION_ID_HEADER)
        try:
            if session_id is None:
                await self._without_session(principal, scope, receive, send)
            else:
                await self._in_session(session_id, principal, scope, receive, send)
        except OrchestratorError as exc:  # Redis unreachable: a clear, retryable error
            await _json_error(to_jsonrpc_error(exc), 503)(scope, receive, send)

    async def _without_session(self, principal: Principal, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method == "GET":  # the standalone stream belongs to a session
            await _method_not_allowed(scope, receive, send)
            return
        if method == "DELETE":
            await _json_error({"code": types.INVALID_REQUEST, "message": "Bad Request: Missing session ID"},
                              400)(scope, receive, send)
            return
        if method != "POST":
            await self._manager.handle_request(scope, receive, send)
            return
        body, receive = await _buffer_body(receive, self._settings.limits.max_body_bytes)
        negotiated = None if body is None else _initialize_version(body)
        if negotiated is None:  # not an `initialize`: served without a session, as the SDK's stateless mode does
            await self._manager.handle_request(scope, receive, send)
            return
        try:
            session_id = await self._sessions.open(negotiated, principal)
        except QuotaExceededError as exc:
            await _busy(exc)(scope, receive, send)
            return
        status = await _serve(self._manager.handle_request, scope, receive, _with_session_header(send, session_id))
        if status is None or status >= 400:  # the handshake failed: nothing was established
            await self._sessions.close(session_id, principal)
        else:
            logger.info("mcp session opened", extra={"protocol_version": negotiated})

    async def _in_session(self, session_id: str, principal: Principal, scope: Scope, receive: Receive,
                          send: Send) -> None:
        version = await self._sessions.touch(session_id, principal)
        if version is None:  # unknown, expired or ended: the client must initialize again (spec)
            await _json_error({"code": types.INVALID_REQUEST, "message": "Session not found"}, 404)(
                scope, receive, send)
            return
        method = scope["method"]
        if method == "DELETE":
            await self._sessions.close(session_id, principal)
            await Response(status_code=200)(scope, receive, send)
            return
        if method == "GET":  # no server-initiated messages here: every reply rides its request's stream
            await _method_not_allowed(scope, receive, send)
            return
        # The version negotiated in the handshake rules the session's requests, as in the SDK's stateful mode.
        headers = [(k, v) for k, v in scope["headers"] if k != MCP_PROTOCOL_VERSION_HEADER.encode()]
        scope = {**scope, "headers": [*headers, (MCP_PROTOCOL_VERSION_HEADER.encode(), version.encode())]}
        await self._manager.handle_request(scope, receive, _with_session_header(send, session_id))

    async def _started(self) -> None:
        """Run the SDK's session manager (it owns the task group requests are served in) from first use."""
        if self._ready is None:
            self._ready = asyncio.Event()
            self._runner = asyncio.create_task(self._run(self._ready), name="mcp-session-manager")
        await self._ready.wait()

    async def _run(self, ready: asyncio.Event) -> None:
        try:
            async with self._manager.run():
                ready.set()
                await asyncio.Event().wait()  # until close() cancels us
        except Exception:
            logger.exception("MCP session manager stopped")
        finally:
            ready.set()  # never leave a request waiting for a manager that is gone: it fails instead

    # --- MCP --------------------------------------------------------------------------------------

    async def _list_tools(self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
                          ) -> types.ListToolsResult:
        """The tools the caller's key may call."""
        principal = _principal_of(ctx)
        allowed = [tool for tool in self._tools if (scope := self._scopes.get(tool.name)) is None
                   or principal.can(scope)]
        if principal.can(SUBMIT):  # a call submits a task (or starts a saga)
            allowed += [runnable.definition for runnable in self._runnables.values()]
        return types.ListToolsResult(tools=allowed)

    async def _call_tool(self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
                         ) -> types.CallToolResult | dict[str, Any]:
        principal = _principal_of(ctx)
        runnable = self._runnables.get(params.name)
        if runnable is not None:
            return await self._run_tool(runnable, params, principal, ctx)
        if params.name not in self._tool_names:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {params.name}",
                           data={"known": sorted(self._tool_names | self._runnables.keys())})
        arguments = params.arguments or {}
        token = progress_token_from_params(ctx.params)
        wait_s = _valid_wait(arguments.get("wait")) if params.name == "run_task" else None
        if token is not None and wait_s is not None:
            reply = await self._run_task_reporting(arguments, wait_s, principal, ctx)
        else:
            reply = await self._call(params.name, arguments, principal)
        return to_tool_result(reply)

    async def _call(self, method: str, params: Mapping[str, Any], principal: Principal) -> dict[str, Any]:
        """One JSON-RPC request through the dispatcher, as the caller; its decoded response."""
        # ASCII JSON: what the client sent arrives exactly as it would over /v2/rpc (NaN included, which the
        # dispatcher refuses as it refuses it there).
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
        reply = await self._rpc(body, principal)
        if reply is None:  # only a notification goes unanswered, and this request has an id
            raise MCPError(code=types.INTERNAL_ERROR, message="no reply from the dispatcher")
        decoded: dict[str, Any] = json.loads(reply)
        return decoded

    async def _run_task_reporting(self, arguments: Mapping[str, Any], wait_s: float, principal: Principal,
                                  ctx: ServerRequestContext[Any]) -> dict[str, Any]:
        """`run_task` with `wait`, reporting the task's events as progress while it waits.

        The dispatcher submits the task (`wait` left out, so it answers with the id at once); then we follow
        the task's events until it finishes or the wait (capped like the dispatcher's) runs out, and
        answer what `run_task` with `wait` answers: the finished record, else `{task_id, status, duplicate}`.
        """
        submitted = await self._call("run_task", {k: v for k, v in arguments.items() if k != "wait"}, principal)
        if "error" in submitted:
            return submitted
        task_id, duplicate = submitted["result"]["task_id"], bool(submitted["result"].get("duplicate"))
        timeout_s = min(wait_s, self._settings.limits.max_wait_s)
        try:
            await self._follow(task_id, ctx.session.report_progress, timeout_s=timeout_s)
        except OrchestratorError:  # events unreadable (Redis away): answer as the task stands now
            logger.warning("could not follow task events", extra={"task_id": task_id}, exc_info=True)
        current = await self._call("get_task", {"task_id": task_id}, principal)
        if "error" in current or current["result"]["status"] in FINISHED:
            return current
        answer = RunTaskResult(task_id=task_id, status=current["result"]["status"], duplicate=duplicate)
        return {"jsonrpc": "2.0", "id": 1, "result": answer.model_dump(mode="json")}

    async def _follow(self, task_id: str, report: Report, *, after: list[int] | None = None,
                      timeout_s: float | None = None) -> bool:
        """Report each of the task's events after `after[0]` (history first) until its final one; False on timeout.

        `after[0]` moves past each event reported, so a follower that failed resumes where it was; the event's
        number is the progress value, which must grow with every notification.
        """
        after = [0] if after is None else after
        try:
            async with asyncio.timeout(timeout_s):
                async for event in events.follow(self._store, self._channels, task_id, after[0], reread_s=1.0):
                    if event is None:
                        continue
                    after[0] = event.seq
                    await report(event.seq, None, progress_message(event.type, json.loads(event.data)))
                    if event.type in FINISHED or event.type == TaskStatus.INPUT_REQUIRED:
                        return True
        except TimeoutError:
            return False
        return False

    # --- registered tools and workflows -----------------------------------------------------------

    async def _run_tool(self, runnable: Runnable, params: types.CallToolRequestParams, principal: Principal,
                        ctx: ServerRequestContext[Any]) -> types.CallToolResult | dict[str, Any]:
        """Submit a task of the tool (a saga of the workflow) through the dispatcher, as `run_task` (`run_saga`)
        does; answer it as a task to a client that opted into the Tasks extension (2026-07-28 wire), else follow
        it to its end; a cancelled request (the client went away) cancels it.

        A task that asks for input while the call follows it is answered with `input_required` (SEP-2322): the
        client's elicitation answers come back with the call again (`inputResponses`, the `requestState` naming
        the task), which then goes on following the same task — or, for an `ask_first` tool, hands it over as a
        task once its first questions are answered."""
        modern = ctx.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS
        as_task = modern and mcp_tools.opted_in(params.meta) and runnable.task_support != "forbidden"
        if modern and runnable.task_support == "required" and not as_task:
            raise MCPError(code=types.MISSING_REQUIRED_CLIENT_CAPABILITY, message="Missing required client capability",
                           data=mcp_tools.REQUIRED_CAPABILITIES)
        follower = dataclasses.replace(principal, scopes=principal.scopes | {READ})  # submit may follow what it ran
        if params.request_state is not None:  # a call again, with the answers to what its task asked
            handle = _resumed_handle(runnable.name, params.request_state)
            responses = {k: v.model_dump(by_alias=True, mode="json", exclude_none=True)
                         for k, v in (params.input_responses or {}).items()}
            await self._deliver(handle, responses, follower)
        else:
            handle_or_refusal = await self._submit(runnable, params, principal)
            if isinstance(handle_or_refusal, types.CallToolResult):
                return handle_or_refusal
            handle = handle_or_refusal
            as_task = as_task and not runnable.ask_first  # its first questions are asked within the call
        if as_task:  # accepted means durable: tasks/get finds it from here on, on any replica
            return mcp_tools.created_task(handle, time.time(), self._ttl_ms)
        report = ctx.session.report_progress
        if runnable.workflow:
            async with _cancelling(lambda: self._call("cancel_saga", {"saga_id": handle}, principal)):
                settled = await self._until_settled(handle, follower, report)
            if "error" in settled:
                return _refused(settled["error"])
            asked = mcp_tools.detailed_saga(settled["result"], self._ttl_ms).get("inputRequests")
            return self._asking(runnable, handle, asked, ctx) if asked else mcp_tools.saga_result(settled["result"])
        async with _cancelling(lambda: self._call("cancel_task", {"task_id": handle}, principal)):
            finished = await self._until_finished(handle, follower, report)
        if "error" in finished:
            return _refused(finished["error"])
        if finished["result"]["status"] == "input_required":
            return self._asking(runnable, handle, mcp_tools.input_requests(finished["result"]["input_requests"]), ctx)
        return mcp_tools.task_result(finished["result"])

    async def _submit(self, runnable: Runnable, params: types.CallToolRequestParams,
                      principal: Principal) -> str | types.CallToolResult:
        """The id of the task (saga) a call submitted, or the refusal to answer."""
        submitted = mcp_tools.submission(params.meta)
        arguments = params.arguments or {}
        if runnable.workflow:
            if "deadline" in submitted:
                why = {"params.deadline": "a workflow takes no deadline: each step has its timeout_s"}
                return _refused({"code": types.INVALID_PARAMS, "message": "Invalid params", "data": {"fields": why}})
            method, call = "run_saga", {"workflow": runnable.name, "input": arguments, **submitted}
        else:
            method, call = "run_task", {"tool": runnable.name, "input": arguments, **submitted}
        reply = await self._call(method, call, principal)
        if "error" in reply:
            return _refused(reply["error"])
        return str(reply["result"]["saga_id" if runnable.workflow else "task_id"])

    def _asking(self, runnable: Runnable, handle: str, requests: Mapping[str, Any],
                ctx: ServerRequestContext[Any]) -> types.CallToolResult | dict[str, Any]:
        """A followed task waits for input: ask the client (input_required, on the 2026-07-28 wire to a client that
        can elicit), else a clear error naming the task, which goes on waiting for `provide_input`."""
        capabilities = ctx.session.client_capabilities
        if ctx.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS and capabilities is not None \
                and capabilities.elicitation is not None:
            return {"resultType": "input_required", "inputRequests": dict(requests),
                    "requestState": f"{runnable.name}{_STATE_SEP}{handle}"}
        keys = ", ".join(sorted(requests))
        return _refused({"code": InputNotExpectedError.code, "message": (
            f"{'saga' if runnable.workflow else 'task'} {handle} waits for input ({keys}) and this client cannot be "
            "asked (it declared no elicitation on the 2026-07-28 wire): answer with provide_input, or call with "
            "the Tasks extension and answer with tasks/update"), "data": {"task_id": handle,
                                                                         "input_requests": dict(requests)}})

    async def _deliver(self, handle: str, responses: Mapping[str, Any], who: Principal) -> None:
        """Answer what a task (or a saga's step) waits for with elicitation results: every answer checked against
        its request's schema before any is stored; answers to nothing pending are ignored."""
        pending = await self._pending(handle, who)
        checked: list[dict[str, Any]] = []
        try:
            for key, (action, content) in mcp_tools.answers({k: v for k, v in responses.items()
                                                             if k in pending}).items():
                task_id, own_key, request = pending[key]
                inputs.checked_answer(request, content, action, f"params.inputResponses.{key}.content")
                checked.append({"task_id": task_id, "key": own_key, "input": content, "action": action})
        except InvalidParamsError as exc:
            raise _invalid(exc) from None
        for answer in checked:
            reply = await self._call("provide_input", answer, who)
            if "error" in reply and reply["error"].get("code") != InputNotExpectedError.code:  # answered meanwhile
                raise _task_error(reply["error"])

    async def _pending(self, handle: str, who: Principal) -> dict[str, tuple[str, str, Mapping[str, Any]]]:
        """What a task, or a saga's steps, wait for: key → (task id, the task's own key, the request)."""
        reply = await self._call("get_task", {"task_id": handle}, who)
        if "result" in reply:
            return {k: (handle, k, r) for k, r in reply["result"]["input_requests"].items()}
        saga = await self._call("get_saga", {"saga_id": handle}, who) if _missing(reply) else reply
        if "error" in saga:
            raise _task_error(saga["error"])
        return {f"{step['name']}{mcp_tools.STEP_KEY}{k}": (step["attempts"][-1]["task_id"], k, r)
                for step in saga["result"]["steps"] if step.get("attempts")
                for k, r in (step.get("input_requests") or {}).items()}

    # --- the Tasks extension: tasks/get, tasks/cancel, tasks/update ------------------------------------

    async def _get_task(self, ctx: ServerRequestContext[Any], params: _TaskParams) -> dict[str, Any]:
        """The detailed task (a saga's id names its workflow's task)."""
        who = self._task_caller(ctx, params)
        reply = await self._call("get_task", {"task_id": params.task_id}, who)
        if "result" in reply:
            return mcp_tools.detailed_task(reply["result"], self._ttl_ms)
        saga = await self._call("get_saga", {"saga_id": params.task_id}, who) if _missing(reply) else reply
        if "result" in saga:
            return mcp_tools.detailed_saga(saga["result"], self._ttl_ms)
        raise _task_error(saga["error"])

    async def _cancel_task(self, ctx: ServerRequestContext[Any], params: _TaskParams) -> dict[str, Any]:
        """An empty acknowledgement; cancelling a finished task acknowledges too (idempotent)."""
        who = self._task_caller(ctx, params)
        reply = await self._call("cancel_task", {"task_id": params.task_id}, who)
        if _missing(reply):
            reply = await self._call("cancel_saga", {"saga_id": params.task_id}, who)
        if "error" in reply and reply["error"].get("code") not in _ALREADY_FINISHED:
            raise _task_error(reply["error"])
        return {}

    async def _update_task(self, ctx: ServerRequestContext[Any], params: _UpdateParams) -> dict[str, Any]:
        """Deliver `inputResponses` to what the task waits for (as provide_input, each checked against its
        request's schema); an empty acknowledgement — responses to nothing pending are ignored."""
        who = self._task_caller(ctx, params)
        await self._deliver(params.task_id, params.input_responses, who)
        return {}

    def _task_caller(self, ctx: ServerRequestContext[Any], params: _TaskParams) -> Principal:
        """The caller of a tasks/* request, once the request is one the extension allows: opted in, on the
        2026-07-28 wire, its Mcp-Name header naming the task. A key that may submit may follow its tasks."""
        if not mcp_tools.opted_in(params.meta):
            raise MCPError(code=types.MISSING_REQUIRED_CLIENT_CAPABILITY, message="Missing required client capability",
                           data=mcp_tools.REQUIRED_CAPABILITIES)
        request = ctx.request
        named = request.headers.get("mcp-name") if isinstance(request, Request) else None
        if ctx.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS and named != params.task_id:
            raise MCPError(code=types.HEADER_MISMATCH, message="Header mismatch",
                           data={"header": "Mcp-Name", "expected": "params.taskId"})
        principal = _principal_of(ctx)
        return dataclasses.replace(principal, scopes=principal.scopes | {READ}) if principal.can(SUBMIT) else principal

    async def _until_finished(self, task_id: str, principal: Principal, report: Report) -> dict[str, Any]:
        """The task's get_task reply once it finished or waits for input, its events reported meanwhile (Redis
        failing: retried)."""
        after = [0]
        while True:
            try:
                await self._follow(task_id, report, after=after)
            except OrchestratorError:  # Redis away: the task goes on; so do we, once it is back
                logger.warning("could not follow task events", extra={"task_id": task_id}, exc_info=True)
                await asyncio.sleep(RETRY_S)
                continue
            reply = await self._call("get_task", {"task_id": task_id}, principal)
            if "error" in reply and not _retryable(reply["error"]):
                return reply
            if "result" in reply and TaskStatus(reply["result"]["status"]).settled:
                return reply
            await asyncio.sleep(RETRY_S)

    async def _until_settled(self, saga_id: str, principal: Principal, report: Report) -> dict[str, Any]:
        """The saga's get_saga reply once it settled or a step waits for input; each step's change of status
        reported meanwhile."""
        seen: dict[str, str] = {}
        sent = 0
        while True:
            reply = await self._call("get_saga", {"saga_id": saga_id}, principal)
            if "error" in reply:
                if not _retryable(reply["error"]):
                    return reply
            else:
                state = reply["result"]
                for step in state["steps"]:
                    status = f"{step['status']}, compensation {step['compensation']}" \
                        if step.get("compensation", "none") != "none" else step["status"]
                    if seen.get(step["name"]) != status:
                        seen[step["name"]] = status
                        sent += 1
                        await report(sent, None, f"step {step['name']}: {status}")
                if state["status"] in SAGA_FINISHED or any(step.get("input_requests") for step in state["steps"]):
                    return reply
            await asyncio.sleep(SAGA_POLL_S)


class _Exchange(Response):
    """Hands the raw ASGI exchange to the MCP face; FastAPI awaits it like any response."""

    def __init__(self, face: McpFace) -> None:
        self._face = face
        self.background = None
        self.status_code = 200

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._face(scope, receive, send)


class _TaskParams(types.RequestParams):
    task_id: str = Field(alias="taskId", min_length=1, max_length=128)


class _UpdateParams(_TaskParams):
    input_responses: dict[str, Any] = Field(alias="inputResponses", default_factory=dict)


_NOT_FOUND = frozenset({-32001, -32009, types.INVALID_PARAMS})  # task, saga not found; an id that cannot be one
_ALREADY_FINISHED = frozenset({-32003, -32010})  # task, saga: nothing left to cancel


def _missing(reply: Mapping[str, Any]) -> bool:
    return "error" in reply and reply["error"].get("code") in _NOT_FOUND


def _task_error(error: Mapping[str, Any]) -> MCPError:
    """A tasks/* failure: an unknown task id is -32602 (as the extension says), others as the dispatcher said."""
    if error.get("code") in _NOT_FOUND:
        return MCPError(code=types.INVALID_PARAMS, message="Failed to retrieve task: Task not found")
    return MCPError(code=int(error.get("code", types.INTERNAL_ERROR)), message=str(error.get("message")),
                    data=error.get("data"))


_STATE_SEP = ":"  # requestState: `<tool>:<task id>` (a tool's name has no colon)


def _resumed_handle(tool: str, state: str) -> str:
    """The task (saga) id a call's requestState names, checked to be one this tool made; -32602 if not."""
    named, sep, handle = state.partition(_STATE_SEP)
    if not sep or named != tool or not handle:
        raise MCPError(code=types.INVALID_PARAMS, message="Invalid params",
                       data={"fields": {"params.requestState": "not one this tool answered with"}})
    return handle


def _invalid(exc: InvalidParamsError) -> MCPError:
    return MCPError(code=types.INVALID_PARAMS, message="Invalid params", data={"fields": exc.fields})


def _retryable(error: Mapping[str, Any]) -> bool:
    data = error.get("data")
    return isinstance(data, dict) and bool(data.get("retryable"))


def _refused(error: Mapping[str, Any]) -> types.CallToolResult:
    """A run_task / run_saga refusal as the tool's error, naming the fields as the MCP call spelled them."""
    error = dict(error)
    data = error.get("data")
    if isinstance(data, dict) and isinstance(data.get("fields"), dict):
        error["data"] = {**data, "fields": mcp_tools.renamed_fields(data["fields"])}
    return to_tool_result({"error": error})


@contextlib.asynccontextmanager
async def _cancelling(cancel: Callable[[], Awaitable[Any]]) -> AsyncIterator[None]:
    """Runs `cancel` (shielded, bounded) when the body is cancelled: the request's client went away or
    cancelled it, so the task (or saga) it started is cancelled too."""
    try:
        yield
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_TIMEOUT_S):
            try:
                await cancel()
            except Exception:
                logger.warning("could not cancel the task of a cancelled MCP call", exc_info=True)
        raise


def _holder(principal: Principal) -> str:
    """Who a session belongs to: the very key that opened it (a later key given a revoked one's name is not it)."""
    return principal.credential or principal.key_id


def _principal_of(ctx: ServerRequestContext[Any]) -> Principal:
    """The caller of an MCP request: set on the scope by `McpFace.__call__` (nothing else reaches the SDK)."""
    request = ctx.request
    principal = request.scope.get(_PRINCIPAL) if isinstance(request, Request) else None
    return principal if isinstance(principal, Principal) else _NOBODY


def _valid_wait(value: Any) -> float | None:
    """A positive `wait` the dispatcher would accept, else None.

    At least as strict as the dispatcher's own check: whatever this refuses goes to the dispatcher as sent,
    which then answers the error (or runs without waiting).
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        return None
    try:
        return float(_WAIT.validate_python(value, strict=True))
    except ValidationError:
        return None


def _initialize_version(body: bytes) -> str | None:
    """The protocol version an `initialize` request body will negotiate (the SDK's rule), or None."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("method") != "initialize" or "id" not in doc:
        return None
    params = doc.get("params")
    requested = params.get("protocolVersion") if isinstance(params, dict) else None
    return requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION


async def _buffer_body(receive: Receive, limit: int) -> tuple[bytes | None, Receive]:
    """The request body (None beyond `limit`: the SDK then answers 413) and a `receive` that replays it."""
    chunks: list[bytes] = []
    size, more, trailing = 0, True, None
    while more:
        message = await receive()
        if message["type"] != "http.request":
            trailing = message
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        more = bool(message.get("more_body", False))
        if size > limit:
            break
    body = b"".join(chunks)
    queued: list[Message] = [{"type": "http.request", "body": body, "more_body": more}]
    if trailing is not None:
        queued.append(trailing)

    async def replay() -> Message:
        return queued.pop(0) if queued else await receive()

    return (None if size > limit else body), replay


def _with_session_header(send: Send, session_id: str) -> Send:
    header = (MCP_SESSION_ID_HEADER.encode(), session_id.encode())

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [h for h in message.get("headers", []) if h[0].lower() != header[0]]
            message = {**message, "headers": [*headers, header]}
        await send(message)

    return sending


async def _serve(app: Callable[[Scope, Receive, Send], Awaitable[None]], scope: Scope, receive: Receive,
                 send: Send) -> int | None:
    """Run `app` for one request; the HTTP status it answered (None if it sent no response)."""
    status: int | None = None

    async def watching(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        await send(message)

    await app(scope, receive, watching)
    return status


def _json_error(error: Mapping[str, Any], status_code: int) -> Response:
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": dict(error)}, separators=(",", ":"))
    return Response(body, status_code=status_code, media_type="application/json")


def _busy(exc: QuotaExceededError) -> Response:
    """429, when to come back, and why (the JSON-RPC error every face answers)."""
    response = _json_error(to_jsonrpc_error(exc), 429)
    response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return response


async def _method_not_allowed(scope: Scope, receive: Receive, send: Send) -> None:
    await Response(status_code=405, headers={"Allow": "POST, DELETE"})(scope, receive, send)
