"""Tracing's pure parts: W3C traceparent parsing, when OTEL_* turn export on, the task's `tp` member, the settings;
and that with tracing off every helper is inert."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from orchestrator import codec, tracing
from orchestrator.models import TaskStatus
from orchestrator.settings import TracingSettings
from orchestrator.tasks import TaskSpec

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


@pytest.mark.parametrize(("value", "trace_id"), [
    (PARENT, TRACE),
    (f"00-{TRACE}-00f067aa0ba902b7-00", TRACE),  # not sampled: still its trace
    (f"01-{TRACE}-00f067aa0ba902b7-01-future", TRACE),  # a later version may append fields
    (f"ff-{TRACE}-00f067aa0ba902b7-01", None),  # version ff is invalid
    (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),  # all-zero trace id
    (f"00-{TRACE}-{'0' * 16}-01", None),  # all-zero parent id
    (PARENT.upper(), None),  # lower-case hex only
    (f"00-{TRACE[:-1]}-00f067aa0ba902b7-01", None),
    ("garbage", None), ("", None), (None, None),
])
def test_traceparent_parsing(value: str | None, trace_id: str | None) -> None:
    assert tracing.trace_id_of(value) == trace_id


@pytest.mark.parametrize(("env", "on"), [
    ({}, False),
    ({"OTEL_SERVICE_NAME": "x"}, False),  # naming a service exports nothing
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
    ({"OTEL_TRACES_EXPORTER": "console"}, True),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
])
def test_export_is_on_only_when_the_variables_ask_for_it(env: dict[str, str], on: bool) -> None:
    assert tracing.exporting(env) is on


def test_a_tasks_trace_context_is_one_short_member_and_its_trace_id_is_in_the_record() -> None:
    task = TaskSpec(task_id="0-abc", tool="echo", worker_type="reasoning", priority=5, input={"prompt": "x"},
                    created_at=1765046583.0, traceparent=PARENT)
    text = codec.submitted(task, TaskStatus.QUEUED)
    assert json.loads(text)["tp"] == PARENT
    assert codec.spec_of(json.loads(text)).traceparent == PARENT  # what the worker continues
    assert codec.record_of(text).trace_id == TRACE
    untraced = codec.submitted(replace(task, traceparent=None), TaskStatus.QUEUED)
    assert "tp" not in json.loads(untraced) and codec.record_of(untraced).trace_id is None


def test_tracing_settings() -> None:
    assert TracingSettings(env={}).runtime_env() is None  # Ray's default: nothing carried
    carried = TracingSettings(env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert carried.runtime_env() == {"env_vars": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}}
    ui = TracingSettings(env={}, ui_url="http://jaeger:16686/trace/{trace_id}")
    assert ui.url_of(TRACE) == f"http://jaeger:16686/trace/{TRACE}" and ui.url_of(None) is None
    assert TracingSettings(env={}).url_of(TRACE) is None
    with pytest.raises(ValueError, match="trace_id"):
        TracingSettings(ui_url="http://jaeger:16686/trace/")
    with pytest.raises(ValueError, match="OTEL_"):
        TracingSettings(env={"PATH": "/bin"})


def test_off_every_helper_is_inert() -> None:
    assert not tracing.enabled()  # nothing in this process configured it
    with tracing.span("x", parent=PARENT) as span:
        assert not span.is_recording()
        assert tracing.traceparent() is None
        headers: dict[str, str] = {}
        tracing.inject(headers)
        assert headers == {}
    tracing.record("y", PARENT, 1.0, 2.0, lambda: pytest.fail("attributes built while off"))
