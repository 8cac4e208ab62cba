"""Delayed tasks without Redis: run_task's not_before / delay_s checked at the edge, the task's ready time in the
codec and in analytics, and when the router's promotion loop wakes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator import codec
from orchestrator.adapters.stats_store import finished_task
from orchestrator.adapters.task_store import accepted_status
from orchestrator.auth import ANONYMOUS
from orchestrator.delayed import next_wake_s
from orchestrator.errors import InvalidParamsError
from orchestrator.intake import build_task
from orchestrator.jsonrpc import Dispatcher, Method, RequestContext
from orchestrator.models import RunTaskParams, RunTaskParamsV2, TaskStatus
from orchestrator.settings import Settings
from orchestrator.tasks import TaskSpec, new_task_id

SETTINGS = Settings(limits={"max_delay_s": 3600})
NOW = 1_765_046_583.0
LATER = datetime.fromtimestamp(NOW + 90, UTC)


def dispatcher(version: int) -> Dispatcher:
    """run_task as the API publishes it, answering the task it would accept (no store behind it)."""
    async def run_task(params: Any, ctx: RequestContext) -> dict[str, Any]:
        task, _ = build_task(params, SETTINGS, NOW)
        return {"status": accepted_status(task).value, "not_before": task.not_before}

    return Dispatcher([Method("run_task", RunTaskParams if version == 1 else RunTaskParamsV2, dict[str, Any],
                              "run_task", run_task)])


async def call(version: int, params: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "run_task", "params": params}).encode()
    reply = await dispatcher(version).handle(body, RequestContext(ANONYMOUS))
    assert reply is not None
    return dict(json.loads(reply))


V1 = {"tool": "echo", "prompt": "later"}
V2 = {"tool": "echo", "input": {"prompt": "later"}}


@pytest.mark.parametrize(("version", "base"), [(1, V1), (2, V2)])
async def test_not_before_or_delay_s_schedule_the_task(version: int, base: dict[str, Any]) -> None:
    by_time = await call(version, {**base, "not_before": "2025-12-06T18:44:33+00:00"})
    assert by_time["result"] == {"status": "scheduled",
                                 "not_before": datetime(2025, 12, 6, 18, 44, 33, tzinfo=UTC).timestamp()}
    by_delay = await call(version, {**base, "delay_s": 2.5})
    assert by_delay["result"] == {"status": "scheduled", "not_before": NOW + 2.5}
    assert (await call(version, base))["result"] == {"status": "queued", "not_before": None}


async def test_a_time_already_past_queues_the_task_at_once() -> None:
    reply = await call(2, {**V2, "not_before": datetime.fromtimestamp(NOW - 1, UTC).isoformat()})
    assert reply["result"] == {"status": "queued", "not_before": None}


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        ({"not_before": "2025-12-06T18:44:33"}, {"params.not_before": "invalid (timezone_aware)"}),
        ({"not_before": "tomorrow"}, {"params.not_before": "invalid (datetime_parsing)"}),
        ({"delay_s": 0}, {"params.delay_s": "exclusiveMinimum: 0 is less than or equal to the minimum of 0"}),
        ({"delay_s": -5}, {"params.delay_s": "exclusiveMinimum: -5 is less than or equal to the minimum of 0"}),
        ({"delay_s": "5"}, {"params.delay_s": "type: '5' is not of type 'number'"}),
        ({"delay_s": 3601}, {"params.delay_s": "more than 3600 s ahead (limits.max_delay_s)"}),
        ({"not_before": (LATER + timedelta(hours=1)).isoformat()},
         {"params.not_before": "more than 3600 s ahead (limits.max_delay_s)"}),
        ({"delay_s": 5, "not_before": LATER.isoformat()}, {"params.delay_s": "give not_before or delay_s, not both"}),
        ({"delay_s": 90, "deadline": LATER.isoformat()},
         {"params.deadline": "not after not_before: the task could never run"}),
    ],
)
async def test_bad_delays_are_invalid_params_naming_the_field(params: dict[str, Any], fields: dict[str, str]) -> None:
    reply = await call(2, {**V2, **params})
    assert reply["error"]["code"] == -32602, reply
    assert reply["error"]["data"]["fields"] == fields


def test_a_deadline_after_not_before_is_fine() -> None:
    params = RunTaskParamsV2(tool="echo", input={"prompt": "x"}, delay_s=60, deadline=LATER)
    task, _ = build_task(params, SETTINGS, NOW)
    assert (task.not_before, task.deadline) == (NOW + 60, LATER.timestamp())


def test_delay_errors_are_collected_with_the_others() -> None:
    with pytest.raises(InvalidParamsError) as caught:
        build_task(RunTaskParamsV2(tool="nope", input={}, delay_s=7200), SETTINGS, NOW)
    assert set(caught.value.fields) == {"params.tool", "params.delay_s"}


def test_a_delayed_urgent_task_still_needs_the_urgent_scope() -> None:
    params = RunTaskParamsV2(tool="echo", input={"prompt": "x"}, priority=10, delay_s=60)
    with pytest.raises(InvalidParamsError) as caught:
        build_task(params, SETTINGS, NOW, max_priority=9)
    assert set(caught.value.fields) == {"params.priority"}


def delayed(**fields: Any) -> TaskSpec:
    values: dict[str, Any] = {"task_id": new_task_id(0), "tool": "echo", "worker_type": "reasoning", "priority": 5,
                              "input": {"prompt": "x"}, "created_at": NOW, "not_before": NOW + 60}
    return TaskSpec(**{**values, **fields})


def test_not_before_is_stored_compactly_and_read_back() -> None:
    task = delayed()
    text = codec.submitted(task, TaskStatus.SCHEDULED)
    assert json.loads(text)["nb"] == round((NOW + 60) * 1000) and json.loads(text)["s"] == "scheduled"
    assert codec.spec_of(json.loads(text)) == task
    record = codec.record_of(text)
    assert record.status is TaskStatus.SCHEDULED and record.not_before == NOW + 60


def test_queue_wait_and_latencies_count_from_not_before() -> None:
    task = delayed()
    assert task.ready_at == NOW + 60 and delayed(not_before=None).ready_at == NOW
    stored = json.loads(codec.submitted(task, TaskStatus.SCHEDULED))
    stored |= {"s": "succeeded", "fs": stored["nb"] + 40, "st": stored["nb"] + 40, "fn": stored["nb"] + 100}
    record = codec.record_of(json.dumps(stored))
    assert record.queue_wait_ms == 40 and record.run_ms == 60
    sample = finished_task(record)
    assert (sample.wait_ms, sample.e2e_ms) == (40, pytest.approx(100))
    cancelled = codec.record_of(codec.submitted(task, TaskStatus.SCHEDULED)).model_copy(
        update={"status": TaskStatus.CANCELLED, "finished_at": NOW + 10})  # before it was due: from acceptance
    assert finished_task(cancelled).e2e_ms == pytest.approx(10_000)


@pytest.mark.parametrize(
    ("next_due", "sleep_s"),
    [(None, 0.05), (NOW + 0.02, 0.02), (NOW + 5, 0.05), (NOW - 1, 0.0)],
)
def test_the_promotion_loop_wakes_for_the_next_task_due(next_due: float | None, sleep_s: float) -> None:
    assert next_wake_s(NOW, next_due, 0.05) == pytest.approx(sleep_s)
