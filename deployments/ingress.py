"""HTTP ingress on Ray Serve: moves bytes between HTTP and the JSON-RPC dispatcher; health and docs."""


import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, Response, Security
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPBearer
from ray import serve

from actors.clients import ActorRouterClient, ActorSagaCoordinatorClient
from deployments import console
from deployments.http_auth import NOT_IN, caller, refusal
from deployments.http_tracing import TracingMiddleware
from deployments.mcp_face import McpFace, SessionRegistry
from orchestrator import api, events, metrics, tracing
from orchestrator.adapters.channels import Channels
from orchestrator.adapters.key_store import KeyRing, KeyStore
from orchestrator.adapters.provider_gate import RedisProviderGate
from orchestrator.adapters.saga_store import SagaStore
from orchestrator.adapters.stats_store import StatsStore
from orchestrator.adapters.task_store import TaskStore
from orchestrator.adapters.tenant_slots import TenantSlots
from orchestrator.adapters.waiter import CompletionWaiter
from orchestrator.auth import METRICS, READ, Authenticator, Principal
from orchestrator.errors import (
    ForbiddenError,
    InvalidParamsError,
    OrchestratorError,
    QueueFullError,
    QuotaExceededError,
    TaskNotFoundError,
)
from orchestrator.finder import Finder
from orchestrator.jsonrpc import Dispatcher, RequestContext, to_jsonrpc_error
from orchestrator.key_service import KeyService
from orchestrator.saga_service import SagaService
from orchestrator.settings import Settings
from orchestrator.tools import registry

logger = logging.getLogger(__name__)
STREAMS = "max_event_streams"  # the kind of slot an event stream holds (the quota a refusal names)

app = FastAPI(
    title="MCP Orchestrator",
    version="0.1.0",
    description="JSON-RPC 2.0 task API. POST a JSON-RPC request or batch; `rpc.discover` returns the OpenRPC "
    "document with every method's params and result schemas.",
    # Our own server span (http_tracing) instead of FastAPI's native one: the same with any FastAPI version,
    # named by the route without Serve's prefix, and only for the API.
    telemetry={"tracing": False, "metrics": False, "logs": False},
)
app.add_middleware(TracingMiddleware)  # a no-op unless the replica's settings turn tracing on

# The JSON-RPC envelope, inline: Serve captures the app at decoration, so a schema added to the
# OpenAPI document afterwards would be missing from what it serves. Methods are not enumerated here:
# `rpc.discover` publishes them with their params.
_ENVELOPE: dict[str, Any] = {
    "type": "object",
    "required": ["jsonrpc", "method"],
    "properties": {
        "jsonrpc": {"const": "2.0"},
        "method": {"type": "string", "description": "see rpc.discover"},
        "params": {"type": ["object", "array"]},
        "id": {"type": ["string", "number", "null"]},
    },
    "additionalProperties": False,
}
# Declares the bearer scheme in the OpenAPI document (/docs gets an "Authorize" button); checking the key
# is the Authenticator's job, so this never refuses anything itself.
_KEYED = [Security(HTTPBearer(auto_error=False, description="an API key: `orchestrator keys create` makes one"))]
_RPC_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"oneOf": [_ENVELOPE, {"type": "array", "items": _ENVELOPE}]}}},
    }
}


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None once it exceeds `limit` bytes (without reading the rest into memory)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _prepend(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for frame in rest:
        yield frame


# Helpers above this point: serve.deployment snapshots the class (and what it references) here.
@serve.deployment
@serve.ingress(app)
class RpcIngress:
    def __init__(self, settings: Settings) -> None:
        from orchestrator.adapters.schedule_store import ScheduleStore
        from orchestrator.schedule_service import ScheduleService
        from orchestrator.service import TaskService

        self._settings = settings
        tracing.configure(settings.tracing.env, "ingress")
        self._store = TaskStore.from_settings(settings.redis)
        self._waiter = CompletionWaiter(self._store.redis, self._store.keys.finished)
        self._router = ActorRouterClient(settings, self._store)
        self._channels = Channels(self._store.redis)  # live task events, for SSE and MCP followers
        # The settings' keys and the runtime ones (Redis), kept fresh by pub/sub and a version check.
        key_store = KeyStore(self._store.redis, settings.redis.prefix)
        self._auth = KeyRing(Authenticator(settings.auth), key_store, self._channels)
        self._key_store = key_store
        self._followers = asyncio.Semaphore(settings.limits.max_event_streams)
        self._slots = TenantSlots(self._store.redis, settings.redis.prefix)
        self._providers = sorted({settings.provider_of(n) for n, t in settings.tools.items() if t.kind == "openai"})
        self._stats = StatsStore(self._store.redis, settings.redis.prefix, settings.redis.shards, self._providers)
        self._gate = RedisProviderGate(self._store.redis, settings.redis.prefix)
        self._service = service = TaskService(settings, self._store, self._waiter, self._router, time.time,
                                              self._stats, self._circuits)
        redis = settings.redis
        saga_store = SagaStore(self._store.redis, redis.prefix, redis.retention_s, redis.idempotency_ttl_s, redis.shards)
        sagas = SagaService(settings, saga_store, ActorSagaCoordinatorClient(settings))
        limits = settings.limits
        keys = KeyService(settings.auth, key_store, self._store.audit, time.time)
        schedules = ScheduleService(settings, ScheduleStore(self._store.redis, redis.prefix), service, time.time)
        finder = Finder(self._store, saga_store)
        methods = {version: api.methods(service, version, sagas, keys, schedules, finder) for version in (1, 2)}
        self._dispatchers = {
            version: Dispatcher(methods[version], max_batch=limits.max_batch, version=str(version),
                                extensions={"x-tools": [t.model_dump() for t in registry.describe(settings.tools)]})
            for version in (1, 2)
        }
        # The MCP tools are the v2 methods, answered by the v2 dispatcher.
        self._mcp = McpFace(settings, methods[2], self._mcp_rpc, self._store, self._channels,
                            SessionRegistry(self._store.redis, redis.prefix, per_tenant=limits.max_mcp_sessions_per_tenant,
                                            max_s=limits.max_mcp_session_s), self._auth, version=app.version)

    def __del__(self) -> None:
        # Serve calls this when it stops the replica; the MCP face and the key ring own background tasks.
        face = getattr(self, "_mcp", None)
        if face is not None:
            face.close()
        ring = getattr(self, "_auth", None)
        if ring is not None:
            ring.close()
        tracing.flush()

    @app.post("/v1/rpc", openapi_extra=_RPC_BODY, dependencies=_KEYED, summary="JSON-RPC 2.0, API v1 (all methods)")
    async def rpc_v1(self, request: Request) -> Response:
        return await self._rpc(request, 1)

    @app.post("/v2/rpc", openapi_extra=_RPC_BODY, dependencies=_KEYED,
              summary="JSON-RPC 2.0, API v2 (run_task takes `input`, `deadline`)")
    async def rpc_v2(self, request: Request) -> Response:
        return await self._rpc(request, 2)

    @app.post("/v1/run_task", openapi_extra=_RPC_BODY, dependencies=_KEYED, summary="JSON-RPC 2.0, `run_task` only")
    async def run_task_v1(self, request: Request) -> Response:
        return await self._rpc(request, 1, "run_task")

    @app.post("/v2/run_task", openapi_extra=_RPC_BODY, dependencies=_KEYED, summary="JSON-RPC 2.0, v2 `run_task` only")
    async def run_task_v2(self, request: Request) -> Response:
        return await self._rpc(request, 2, "run_task")

    @app.post("/v1/status", openapi_extra=_RPC_BODY, dependencies=_KEYED, summary="JSON-RPC 2.0, `status` only")
    async def status_v1(self, request: Request) -> Response:
        return await self._rpc(request, 1, "status")

    @app.post("/v1/control", openapi_extra=_RPC_BODY, dependencies=_KEYED, summary="JSON-RPC 2.0, `control` only")
    async def control_v1(self, request: Request) -> Response:
        return await self._rpc(request, 1, "control")

    @app.post("/v1/inject", openapi_extra=_RPC_BODY, dependencies=_KEYED, summary="JSON-RPC 2.0, `inject` only")
    async def inject_v1(self, request: Request) -> Response:
        return await self._rpc(request, 1, "inject")

    @app.post("/v1/analytics", openapi_extra=_RPC_BODY, dependencies=_KEYED, summary="JSON-RPC 2.0, `analytics` only")
    async def analytics_v1(self, request: Request) -> Response:
        return await self._rpc(request, 1, "analytics")

    @app.get("/v1/tasks/{task_id}/events", dependencies=_KEYED,
             summary="Server-Sent Events: the task's history, then live, to the end")
    async def task_events(self, task_id: str, request: Request) -> Response:
        try:
            principal = await self._caller(request, READ, "task events")
        except (*NOT_IN, ForbiddenError) as exc:
            return refusal(exc)
        try:
            after = events.check_event_id(request.headers.get("last-event-id"))
            if len(task_id) > 64:
                raise TaskNotFoundError(task_id[:64])
            await self._service.get_task(task_id, principal)  # another tenant's task is not found either
            limits = self._settings.limits
            if self._followers.locked():
                raise QueueFullError(limits.max_event_streams, limits.max_event_streams, limits.queue_full_retry_after_s)
            follower = uuid.uuid4().hex
            await self._slots.take(STREAMS, principal.tenant, follower, limits.max_event_streams_per_tenant,
                                   limits.max_event_stream_s)
            frames = self._frames(task_id, after, principal.tenant, follower)
            first = await anext(frames)  # surfaces a store failure as a JSON error, not a broken stream
        except QuotaExceededError as exc:  # the tenant holds all the streams it may: others are still served
            return JSONResponse({"jsonrpc": "2.0", "id": None, "error": to_jsonrpc_error(exc)}, status_code=429,
                                headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})
        except (OrchestratorError, InvalidParamsError) as exc:
            status = 404 if isinstance(exc, TaskNotFoundError) else 503 if getattr(exc, "retryable", False) else 400
            return JSONResponse({"error": to_jsonrpc_error(exc)}, status_code=status)
        return StreamingResponse(_prepend(first, frames), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _frames(self, task_id: str, after: int, tenant: str | None, follower: str) -> AsyncIterator[str]:
        """The stream's frames, within the replica's and the tenant's limits; it ends after max_event_stream_s
        (the client resumes with Last-Event-ID), and its slot is given back however it ends."""
        try:
            async with self._followers:
                async for event in events.follow(self._store, self._channels, task_id, after,
                                                 for_s=self._settings.limits.max_event_stream_s):
                    yield events.sse_frame(event)
        finally:
            with contextlib.suppress(OrchestratorError):
                await self._slots.release(STREAMS, tenant, follower)

    @app.post("/mcp", dependencies=_KEYED,
              summary="MCP (Streamable HTTP): the API's methods as MCP tools; one JSON-RPC message")
    async def mcp_post(self, request: Request) -> Response:
        return self._mcp.response()

    @app.get("/mcp", dependencies=_KEYED, summary="MCP: no server-initiated stream is offered (405)")
    async def mcp_get(self, request: Request) -> Response:
        return self._mcp.response()

    @app.delete("/mcp", dependencies=_KEYED, summary="MCP: end the session named by the Mcp-Session-Id header")
    async def mcp_delete(self, request: Request) -> Response:
        return self._mcp.response()

    @app.get("/metrics", dependencies=_KEYED,
             summary="Prometheus metrics of the whole system (text exposition format); needs scope `metrics`")
    async def prometheus_metrics(self, request: Request) -> Response:
        try:
            await self._caller(request, METRICS, "GET /metrics")
        except (*NOT_IN, ForbiddenError) as exc:
            return refusal(exc)
        try:
            overview = await self._router.overview()
        except OrchestratorError:
            overview = None  # unreadable now: the counters still answer
        circuits = await self._circuits()
        try:
            failures: dict[str, int] | None = await self._key_store.failures()
        except OrchestratorError:
            failures = None
        text = metrics.render(metrics.families(await self._stats.totals(), overview, await self._store.counts(),
                                               circuits, failures))
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    # The web console: static files only; every call it makes goes to the API above, with the user's key.
    @app.get("/ui", include_in_schema=False)
    @app.get("/ui/", include_in_schema=False)
    @app.get("/ui/ops", include_in_schema=False)
    @app.get("/ui/tasks", include_in_schema=False)
    @app.get("/ui/tasks/{task_id}", include_in_schema=False)
    @app.get("/ui/sagas/{saga_id}", include_in_schema=False)
    async def console_page(self, request: Request) -> Response:
        return console.page(request.scope.get("root_path", ""))

    @app.get("/ui/static/{name}", include_in_schema=False)
    async def console_static(self, name: str) -> Response:
        return console.static(name)

    @app.get("/healthz", summary="Ready when Redis answers and a router manages the pools")
    async def healthz(self) -> JSONResponse:
        checks = {"redis": False, "router": False}
        try:
            async with asyncio.timeout(2):
                checks["redis"] = bool(await self._store.redis.ping())
        except Exception:
            logger.warning("health check: redis unreachable", exc_info=True)
        try:
            checks["router"] = await self._router.ready()
        except Exception:
            logger.warning("health check: router not ready", exc_info=True)
        ok = all(checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", **checks}, status_code=200 if ok else 503)

    async def _circuits(self) -> dict[str, str]:
        """Each LLM provider's circuit breaker: closed, open or half_open."""
        return {p: await self._gate.breaker_state(p) for p in self._providers}

    async def _caller(self, request: Request, scope: str, what: str) -> Principal:
        """The request's caller, if it may do `what` (which needs `scope`); raises one of NOT_IN or ForbiddenError."""
        principal = await caller(self._auth, request.headers)
        if not principal.can(scope):
            raise ForbiddenError(what, scope)
        return principal

    async def _mcp_rpc(self, body: bytes, principal: Principal) -> bytes | None:
        """An MCP tool call, as a JSON-RPC request to the v2 dispatcher."""
        return await self._dispatchers[2].handle(body, RequestContext(version=2, principal=principal))

    async def _rpc(self, request: Request, version: int, method: str | None = None) -> Response:
        try:  # before the body is read: nothing of an unauthenticated request is looked at
            principal = await caller(self._auth, request.headers)
        except NOT_IN as exc:
            return refusal(exc)
        body = await _read_limited(request, self._settings.limits.max_body_bytes)
        if body is None:
            error = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Invalid Request",
                     "data": {"reason": f"body larger than {self._settings.limits.max_body_bytes} bytes"}}}
            return Response(json.dumps(error), status_code=413, media_type="application/json")
        context = RequestContext(version=version, principal=principal)
        reply = await self._dispatchers[version].handle(body, context, path_method=method)
        if reply is None:
            return Response(status_code=204)
        return Response(reply, media_type="application/json")
