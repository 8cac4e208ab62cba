"""OpenTelemetry traces of a task's life: setting the SDK up from the standard `OTEL_*` variables, and the few
helpers every process uses to make spans and carry W3C trace context across HTTP, Redis and MCP.

Off unless those variables ask for an exporter (`configure`): then every helper returns at once — no SDK
imported, no context attached, no attributes built. A task carries its context through Redis as a W3C
`traceparent` string (the codec's `tp` member), so a worker in another process continues the trace.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

logger = logging.getLogger(__name__)

TRACEPARENT = re.compile(r"^(?!ff)[0-9a-f]{2}-(?!0{32})([0-9a-f]{32})-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}(-.*)?$")
_W3C = TraceContextTextMapPropagator()  # W3C everywhere: what is stored in Redis must mean the same to every reader
_OFF: AbstractContextManager[Span] = nullcontext(INVALID_SPAN)
_enabled = False

Attributes = Mapping[str, str | int | float | bool]


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id (32 hex digits) of a W3C `traceparent`; None for a missing or malformed one."""
    match = TRACEPARENT.match(traceparent) if traceparent else None
    return match.group(1) if match else None


def exporting(env: Mapping[str, str]) -> bool:
    """Whether these `OTEL_*` variables ask for traces to be exported: an exporter named (other than `none`) or
    an OTLP endpoint given, and the SDK not disabled."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def enabled() -> bool:
    return _enabled


def configure(env: Mapping[str, str], role: str) -> None:
    """Set the SDK up in this process (once) if `env` asks for export; spans are batched and flushed at exit.

    `env` is the settings' copy of the variables, handed to every actor as its runtime_env, so the SDK reads the
    same values from this process's environment.

    Args:
        role: what this process is (`ingress`, `worker`, …), a resource attribute beside `service.name`.
    """
    global _enabled
    if _enabled or not exporting(env):
        return
    from opentelemetry.sdk.resources import Resource  # the SDK only where traces are exported
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes: dict[str, str] = {"orchestrator.process": role}
    if not env.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = "mcp-orchestrator"
    provider = TracerProvider(resource=Resource.create(attributes))  # sampler: OTEL_TRACES_SAMPLER(_ARG)
    for exporter in _exporters(env):
        provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_*; shut down (flushed) at exit
    trace.set_tracer_provider(provider)
    _enabled = True
    logger.info("tracing on", extra={"role": role})


def _exporters(env: Mapping[str, str]) -> list[Any]:
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",") if n.strip()]
    exporters: list[Any] = []
    for name in names:
        if name == "otlp":  # OTLP over HTTP/protobuf; endpoint, headers, timeout from OTEL_EXPORTER_OTLP_*
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        else:
            logger.warning("unknown trace exporter ignored", extra={"exporter": name})
    return exporters


def flush(timeout_ms: int = 5000) -> None:
    """Export the spans still batched (before a process is retired)."""
    if _enabled:
        provider = trace.get_tracer_provider()
        force_flush: Callable[[int], bool] | None = getattr(provider, "force_flush", None)
        if force_flush is not None:
            force_flush(timeout_ms)


def _tracer() -> trace.Tracer:
    return trace.get_tracer("mcp-orchestrator")


def _context(traceparent: str | None, tracestate: str | None = None) -> otel_context.Context | None:
    """The context a stored or received `traceparent` names; None (the current context) without a valid one."""
    if trace_id_of(traceparent) is None:
        return None
    carrier = {"traceparent": traceparent} if not tracestate else {"traceparent": traceparent,
                                                                  "tracestate": tracestate}
    return _W3C.extract(carrier)


def span(name: str, *, parent: str | None = None, tracestate: str | None = None,
         kind: SpanKind = SpanKind.INTERNAL) -> AbstractContextManager[Span]:
    """A span, current within the block: a child of the `traceparent` given, else of the current span.

    Yields a non-recording span when off: check `is_recording()` before building attributes. An exception
    leaving the block is recorded and marks the span as an error.
    """
    if not _enabled:
        return _OFF
    return _tracer().start_as_current_span(name, context=_context(parent, tracestate), kind=kind)


def record(name: str, parent: str | None, start_s: float, end_s: float,
           attributes: Callable[[], Attributes] | None = None, kind: SpanKind = SpanKind.INTERNAL) -> None:
    """A span made after the fact, from unix times (a queue wait, a batched take)."""
    if not _enabled:
        return
    made = _tracer().start_span(name, context=_context(parent), kind=kind, start_time=_ns(start_s))
    if attributes is not None and made.is_recording():
        made.set_attributes(attributes())
    made.end(end_time=_ns(max(start_s, end_s)))


def _ns(unix_s: float) -> int:
    return round(unix_s * 1e9)


def current() -> Span:
    """The current span (non-recording when off or outside any)."""
    return trace.get_current_span() if _enabled else INVALID_SPAN


def event(name: str, attributes: Attributes) -> None:
    """An event on the current span (a retry, a fallback: rare enough to build the attributes anyway)."""
    found = current()
    if found.is_recording():
        found.add_event(name, attributes)


def failed(found: Span, message: str) -> None:
    """Mark a span as ended in error (a failed attempt, a refused call) without an exception."""
    if found.is_recording():
        found.set_status(Status(StatusCode.ERROR, message))


def traceparent() -> str | None:
    """The current span's W3C `traceparent`, to store with a task or a saga; None when off or outside any."""
    if not _enabled:
        return None
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get("traceparent")


def inject(carrier: MutableMapping[str, str]) -> None:
    """Add the current context's `traceparent` (and `tracestate`) to outgoing headers or an MCP `_meta`."""
    if _enabled:
        _W3C.inject(carrier)

