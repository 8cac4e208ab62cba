"""Traces end to end: the orchestrator deployed with OTEL_* pointing at a real OTLP/HTTP receiver; a client's W3C
trace context is continued through the ingress, the durable write, Redis, the worker and the provider call or
downstream MCP call (which receive it), and a saga's steps are spans of the saga's."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import Deployed, deployed, make_settings
from tests.fakeprovider import RunningFakeProvider
from tests.integration.test_console import WAIT_MS
from tests.integration.test_spine import result
from tests.mcp_server import stdio_command, stdio_env
from tests.otlp import OtlpReceiver, ReceivedSpan, otlp_receiver
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration

UI = "http://jaeger.test:16686/trace/{trace_id}"
WORKFLOW = {"name": "pair", "steps": [{"name": "first", "tool": "echo", "input": {"prompt": "one"}},
                                      {"name": "second", "tool": "echo", "input": {"prompt": "two"}}]}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as running:
        yield running


@pytest.fixture(scope="module")
def traced(redis_server: RedisServer, ray_session: int, provider: RunningFakeProvider,
           receiver: OtlpReceiver) -> Iterator[Deployed]:
    # Through the settings (the actors' runtime_env), not this process's environment: the session's Ray is shared
    # with other modules' deployments, which must not trace.
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_SERVICE_NAME": "orch-test",
           "OTEL_BSP_SCHEDULE_DELAY": "100"}
    llm = {"kind": "openai", "base_url": provider.base_url, "model": "fake-model", "timeout_s": 10}
    downstream = {"command": stdio_command(), "env": stdio_env(), "import_tools": True, "tool_prefix": "remote."}
    settings = make_settings(redis_server.url, tools={"fake-llm": llm}, workflows={"pair": WORKFLOW},
                             mcp_servers={"remote": downstream},
                             providers={"fake-llm": {"backoff_base_s": 0.05}},
                             tracing={"env": env, "ui_url": UI})
    with deployed(settings, ray_session) as system:
        yield system


def client_context() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


def post(system: Deployed, method: str, params: dict[str, object], trace_id: str, span_id: str) -> dict[str, object]:
    reply = httpx.post(f"{system.base_url}/v1/rpc", json={"jsonrpc": "2.0", "id": 1, "method": method,
                                                        "params": params},
                       headers={"traceparent": f"00-{trace_id}-{span_id}-01", "tracestate": "vendor=x"}, timeout=60)
    reply.raise_for_status()
    body = reply.json()
    assert "error" not in body, body
    return body["result"]


def spans_named(receiver: OtlpReceiver, trace_id: str, *names: str) -> dict[str, list[ReceivedSpan]]:
    """Once the trace holds a span of each name (the workers' batches arrive a little later), by name."""
    found: dict[str, list[ReceivedSpan]] = {}

    def arrived() -> bool:
        found.clear()
        for span in receiver.spans(trace_id):
            found.setdefault(span.name, []).append(span)
        return all(name in found for name in names)

    wait_until(arrived, 30, f"spans {names} of trace {trace_id}")
    return found


def test_an_llm_task_is_one_trace_under_the_clients(traced: Deployed, provider: RunningFakeProvider,
                                                    receiver: OtlpReceiver) -> None:
    trace_id, client_span = client_context()
    record = post(traced, "run_task", {"tool": "fake-llm", "prompt": "trace me", "wait": 30}, trace_id, client_span)
    assert record["status"] == "succeeded", record
    shown = result(traced.base_url, "get_task", {"task_id": record["task_id"]})
    assert shown["trace_id"] == trace_id
    assert shown["trace_url"] == UI.format(trace_id=trace_id)

    spans = spans_named(receiver, trace_id, "POST /v1/rpc", "submit", "queue wait", "take", "attempt",
                        "chat fake-model")
    (ingress,), (submit,), (wait,), (take,), (attempt,), (chat,) = (
        spans[n] for n in ("POST /v1/rpc", "submit", "queue wait", "take", "attempt", "chat fake-model"))
    assert ingress.parent_id == client_span
    assert submit.parent_id == ingress.span_id
    assert {wait.parent_id, take.parent_id, attempt.parent_id} == {submit.span_id}
    assert chat.parent_id == attempt.span_id
    assert wait.start_ns <= wait.end_ns <= attempt.start_ns
    # Each from the process that did the work, all of the one service.
    assert ingress.resource["orchestrator.process"] == "ingress"
    assert attempt.resource["orchestrator.process"] == "worker"
    assert {s.resource["service.name"] for s in (ingress, attempt)} == {"orch-test"}
    assert ingress.attributes["http.response.status_code"] == 200
    assert attempt.attributes["orchestrator.attempt"] == 1
    assert attempt.attributes["orchestrator.attempt.outcome"] == "succeeded"
    assert attempt.attributes["orchestrator.worker"] == record["worker"]
    assert chat.attributes["gen_ai.request.model"] == "fake-model"
    assert "admitted" in chat.events
    # The provider was called within the trace, by the provider call's span.
    _version, seen_trace, seen_parent, _flags = provider.stats()["last_traceparent"].split("-")
    assert (seen_trace, seen_parent) == (trace_id, chat.span_id)


def test_a_provider_retry_is_an_event_of_the_call(traced: Deployed, provider: RunningFakeProvider,
                                                  receiver: OtlpReceiver) -> None:
    provider.control(fail_next=1, fail_status=503)
    trace_id, client_span = client_context()
    record = post(traced, "run_task", {"tool": "fake-llm", "prompt": "again", "wait": 30}, trace_id, client_span)
    assert record["status"] == "succeeded", record
    (chat,) = spans_named(receiver, trace_id, "chat fake-model")["chat fake-model"]
    assert chat.events.count("retry") == 1 and chat.events.count("admitted") == 2


def test_a_sagas_steps_are_children_of_its_span(traced: Deployed, receiver: OtlpReceiver) -> None:
    trace_id, client_span = client_context()
    saga_id = post(traced, "run_saga", {"workflow": "pair", "input": {}}, trace_id, client_span)["saga_id"]
    wait_until(lambda: result(traced.base_url, "get_saga", {"saga_id": saga_id})["status"] == "succeeded", 30,
               "the saga to succeed")
    spans = spans_named(receiver, trace_id, "saga pair", "saga step first", "saga step second", "attempt")
    (ingress,), (saga,) = spans["POST /v1/rpc"], spans["saga pair"]
    assert saga.parent_id == ingress.span_id and saga.attributes["orchestrator.saga.id"] == saga_id
    steps = spans["saga step first"] + spans["saga step second"]
    assert {step.parent_id for step in steps} == {saga.span_id}
    assert {submit.parent_id for submit in spans["submit"]} == {step.span_id for step in steps}
    submits = {submit.span_id for submit in spans["submit"]}
    wait_until(lambda: len(spans_named(receiver, trace_id, "attempt")["attempt"]) == 2, 30, "both attempts")
    assert {a.parent_id for a in spans_named(receiver, trace_id, "attempt")["attempt"]} == submits



def test_a_downstream_mcp_server_receives_the_context_in_the_calls_meta(traced: Deployed,
                                                                       receiver: OtlpReceiver) -> None:
    trace_id, client_span = client_context()
    record = post(traced, "run_task", {"tool": "remote.traceparent", "prompt": "", "wait": 30}, trace_id, client_span)
    assert record["status"] == "succeeded", record
    spans = spans_named(receiver, trace_id, "attempt", "tools/call traceparent", "MCP send tools/call traceparent")
    (attempt,), (call,), (send,) = (spans[n] for n in ("attempt", "tools/call traceparent",
                                                       "MCP send tools/call traceparent"))
    assert call.parent_id == attempt.span_id and send.parent_id == call.span_id  # the SDK's send: one per try
    _version, seen_trace, seen_parent, _flags = record["result"]["text"].split("-")
    assert (seen_trace, seen_parent) == (trace_id, send.span_id)


def test_the_console_links_a_tasks_trace_to_the_tracing_ui(traced: Deployed, page: Page) -> None:
    trace_id, client_span = client_context()
    record = post(traced, "run_task", {"tool": "echo", "prompt": "see me", "wait": 30}, trace_id, client_span)
    page.goto(f"{traced.base_url}/ui/tasks/{record['task_id']}")  # auth off: no key to enter
    link = page.locator("#trace-link")
    expect(link).to_have_text(trace_id, timeout=WAIT_MS)
    assert link.get_attribute("href") == UI.format(trace_id=trace_id)
