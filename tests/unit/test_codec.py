"""The one shape of a task: submitted → stored → record, spec and history, through the field table."""

from __future__ import annotations

import json

import pytest

from orchestrator import codec
from orchestrator.models import TaskStatus
from orchestrator.tasks import TaskSpec, new_task_id


def spec(**fields: object) -> TaskSpec:
    values: dict[str, object] = {"task_id": new_task_id(2), "tool": "echo", "worker_type": "reasoning", "priority": 5,
                                 "input": {"prompt": "hé / \"quoted\"", "n": 0.1234567890123456789, "empty": []},
                                 "created_at": 1765046583.123}
    return TaskSpec(**{**values, **fields})  # type: ignore[arg-type]


def test_every_member_of_the_table_is_unique_and_short() -> None:
    wires = [f.wire for f in codec.FIELDS]
    assert len(set(wires)) == len(wires) and not set(wires) & codec.SCRIPT_ONLY
    assert all(len(w) <= 3 for w in wires)


def test_client_data_is_stored_as_text_so_scripts_never_round_it() -> None:
    stored = json.loads(codec.submitted(spec(), TaskStatus.QUEUED))
    assert isinstance(stored["inp"], str)  # cjson would turn 0.123456789012345679 into 0.12345678901235, [] into {}
    assert json.loads(stored["inp"]) == {"prompt": "hé / \"quoted\"", "n": 0.1234567890123456789, "empty": []}
    assert stored["c"] == 1765046583123 and stored["s"] == "queued" and stored["at"] == 0
    assert "cx" not in stored and "ch" not in stored and "v1" not in stored  # nothing stored for empty values


def test_a_submitted_task_reads_back_as_the_same_spec_and_record() -> None:
    task = spec(v1=True, input={"prompt": "hi", "delay_ms": 5}, context={"trace": "x"}, agent="a", tenant="acme",
                deadline=1765046600.5, idempotency_key="k", children=(new_task_id(2),))
    stored = json.loads(codec.submitted(task, TaskStatus.QUEUED))
    assert codec.spec_of(stored) == task
    record = codec.record_of(codec.submitted(task, TaskStatus.QUEUED))
    assert (record.task_id, record.prompt, record.input, record.context) == (task.task_id, "hi", task.input, task.context)
    assert record.children == list(task.children) and record.deadline == 1765046600.5 and record.tenant == "acme"


def test_a_fanout_child_receives_its_parents_result_in_its_context() -> None:
    stored = json.loads(codec.submitted(spec(context={"k": 1}), TaskStatus.WAITING))
    assert codec.spec_of(stored, parent_result={"text": "p"}).context == {"k": 1, "parent_result": {"text": "p"}}


def test_timings_come_from_the_stored_milliseconds() -> None:
    stored = json.loads(codec.submitted(spec(), TaskStatus.QUEUED))
    stored.update(s="succeeded", fs=stored["c"] + 250, st=stored["c"] + 300, fn=stored["c"] + 1300, at=1,
                  r=json.dumps({"text": "ok"}))
    record = codec.record_of(json.dumps(stored))
    assert (record.queue_wait_ms, record.run_ms, record.result) == (250.0, 1000.0, {"text": "ok"})


def test_the_final_event_carries_the_result_stored_once_in_the_record() -> None:
    stored = json.loads(codec.submitted(spec(), TaskStatus.QUEUED))
    stored["h"] = [[1, "queued", 1, "{}"], [2, "running", 2, '{"attempt":1}'], [3, "failed", 3, "{}"]]
    stored["e"] = json.dumps({"code": -32004, "message": "boom"})
    events = codec.history_of(json.dumps(stored))
    assert [(e.seq, e.type) for e in events] == [(1, "queued"), (2, "running"), (3, "failed")]
    assert json.loads(events[-1].data) == {"error": {"code": -32004, "message": "boom"}}


@pytest.mark.parametrize("entry", [{"i": "0-abc", "at": "3"}])
def test_a_stream_entry_names_one_attempt(entry: dict[str, str]) -> None:
    assert codec.entry("0-abc", 3) == entry and codec.entry_task(entry) == ("0-abc", 3)
