"""The ingress's server spans: one per API request (JSON-RPC, SSE, MCP), continuing a client's W3C trace context."""

from __future__ import annotations

from typing import Any

from orchestrator import tracing

_TRACED = ("/v1/", "/v2/", "/mcp")  # the API; not the console's files, health checks or metrics scrapes


class TracingMiddleware:
    """ASGI middleware: the span covers the whole exchange, a streamed body (SSE, MCP) included."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if not tracing.enabled() or scope["type"] != "http" or not _traced(scope, path):
            await self.app(scope, receive, send)
            return
        headers = {k: v for k, v in scope["headers"] if k in (b"traceparent", b"tracestate")}
        parent, state = (headers.get(k, b"").decode("latin-1") or None for k in (b"traceparent", b"tracestate"))
        method = scope["method"]
        status: list[int] = []

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        with tracing.span(f"{method} {path}", parent=parent, tracestate=state, kind=tracing.SpanKind.SERVER) as span:
            await self.app(scope, receive, sending)
            if span.is_recording():
                route = scope.get("route")  # FastAPI's matched route: a low-cardinality name (no task ids)
                template = getattr(route, "path", None) or path
                span.update_name(f"{method} {template}")
                span.set_attributes({"http.request.method": method, "url.path": path, "http.route": template,
                                     "http.response.status_code": status[0] if status else 0})
                if status and status[0] >= 500:
                    tracing.failed(span, f"HTTP {status[0]}")


def _traced(scope: dict[str, Any], path: str) -> bool:
    root = scope.get("root_path", "")
    local = path[len(root):] if root and path.startswith(root) else path
    return local.startswith(_TRACED)
