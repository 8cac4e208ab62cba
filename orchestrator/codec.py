"""The one shape of a task in Redis: a single field table for the task as submitted, as a stream entry and as
a stored record.

A task is stored once, as one compact JSON string under its record key. Members are short wire names (the
table below); times are integer milliseconds (exact in Lua's doubles and in cjson's 14 digits); whatever a
client or a tool supplied (input, context, result, error, progress, checkpoints) is kept as JSON *text*, so
the Lua scripts that move a task between states never decode it (cjson would round numbers and turn `[]`
into `{}`). A stream entry carries only the task id and the attempt it delivers. The record also holds the
task's event history (`h`: `[seq, type, time_ms, data]`), so a finished task is one key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from orchestrator.models import TaskRecord, TaskStatus, TaskSummary
from orchestrator.tasks import TaskSpec
from orchestrator.tracing import trace_id_of

Kind = Literal["str", "int", "ms", "json", "ids", "flag", "jmap"]


@dataclass(frozen=True, slots=True)
class Field:
    name: str  # the attribute on TaskSpec / TaskRecord
    wire: str  # the member of the stored JSON record (and of a stream entry, for `task_id` and `attempts`)
    kind: Kind  # str; int; ms: seconds as float ⇄ integer ms; json: any value ⇄ JSON text; ids: tuple of ids;
    # jmap: a dict of any values ⇄ an object of JSON texts (scripts move its members without decoding them)


FIELDS: tuple[Field, ...] = (
    # as submitted
    Field("task_id", "i", "str"),
    Field("tool", "t", "str"),
    Field("worker_type", "w", "str"),
    Field("priority", "p", "int"),
    Field("input", "inp", "json"),
    Field("context", "cx", "json"),
    Field("v1", "v1", "flag"),  # submitted with a v1 `prompt` (kept once, inside `input`)
    Field("agent", "a", "str"),
    Field("tenant", "n", "str"),
    Field("deadline", "dl", "ms"),
    Field("not_before", "nb", "ms"),  # a delayed task: scheduled (in its shard's due set) until then
    Field("idempotency_key", "k", "str"),
    Field("parent", "pa", "str"),
    Field("saga", "sg", "str"),
    Field("children", "ch", "ids"),
    Field("rerun_of", "ro", "str"),
    Field("traceparent", "tp", "str"),  # W3C trace context of its submit span (tracing on): workers continue it
    Field("reruns", "rr", "ids"),  # appended by link_rerun.lua
    Field("created_at", "c", "ms"),
    # as it runs
    Field("status", "s", "str"),
    Field("attempts", "at", "int"),
    Field("preemptions", "pe", "int"),
    Field("restarts", "rs", "int"),
    Field("checkpoints", "ck", "int"),
    Field("worker", "wk", "str"),
    Field("started_at", "st", "ms"),
    Field("first_started_at", "fs", "ms"),
    Field("finished_at", "fn", "ms"),
    Field("progress", "pg", "json"),
    Field("checkpoint", "cp", "json"),
    Field("resumed_from", "rf", "json"),
    Field("result", "r", "json"),
    Field("error", "e", "json"),
    Field("input_requests", "iq", "jmap"),  # input_required: key → {message, schema, asked_at} (ctx.ask)
    Field("inputs", "ia", "jmap"),  # answers received (provide_input): key → {action, content}
    Field("last_failure", "lf", "str"),
    Field("dead_letter", "dd", "str"),
)
BY_NAME = {f.name: f for f in FIELDS}
BY_WIRE = {f.wire: f for f in FIELDS}
# Members only the scripts use (never decoded into a record): the queue score, the delivery entry, the attempt
# allowance base after a requeue, a pending cancel, the last event number, the history, a claimed preemption
# victim, the parent's result delivered by the outbox, the attempts that ended asking for input.
SCRIPT_ONLY = frozenset({"sc", "ei", "ab", "cr", "sq", "h", "pv", "pr", "ir"})


def dumps(value: Any) -> str:
    """Compact JSON text, as everything is stored."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def to_ms(seconds: float) -> int:
    return round(seconds * 1000)


def _encode_value(field: Field, value: Any) -> Any:
    if field.kind == "ms":
        return to_ms(value)
    if field.kind == "json":
        return dumps(value)
    if field.kind == "ids":
        return list(value)
    if field.kind == "flag":
        return 1
    if field.kind == "jmap":
        return {key: dumps(item) for key, item in value.items()}
    return value


def _decode_value(field: Field, value: Any) -> Any:
    if field.kind == "ms":
        return value / 1000
    if field.kind == "json":
        return json.loads(value)
    if field.kind == "ids":
        return tuple(value)
    if field.kind == "flag":
        return bool(value)
    if field.kind == "jmap":  # cjson writes an emptied table as [] (never left stored, but harmless)
        return {key: json.loads(item) for key, item in value.items()} if isinstance(value, dict) else {}
    return value


def encode(values: Mapping[str, Any]) -> dict[str, Any]:
    """Attribute-named values → the stored members; None, empty ids and a false flag are left out."""
    stored: dict[str, Any] = {}
    for name, value in values.items():
        field = BY_NAME[name]
        if value is None or (field.kind in ("ids", "flag") and not value):
            continue
        stored[field.wire] = _encode_value(field, value)
    return stored


def decode(stored: Mapping[str, Any]) -> dict[str, Any]:
    """Stored members → attribute-named values (script-only members are dropped)."""
    return {BY_WIRE[wire].name: _decode_value(BY_WIRE[wire], value)
            for wire, value in stored.items() if wire in BY_WIRE}


def submitted(task: TaskSpec, status: TaskStatus) -> str:
    """The record of a task as accepted: the JSON text the submit script stores (after adding its queue score)."""
    values = {name: getattr(task, name) for name in SPEC_FIELDS}
    values["context"] = task.context or None
    values["status"] = status.value
    values["attempts"] = 0
    return dumps(encode(values))


SPEC_FIELDS = ("task_id", "tool", "worker_type", "priority", "input", "context", "v1", "agent", "tenant", "deadline",
               "not_before", "idempotency_key", "parent", "saga", "children", "rerun_of", "traceparent", "created_at")


def spec_of(stored: Mapping[str, Any], parent_result: Any = None) -> TaskSpec:
    """The task as a worker runs it, from its stored record."""
    values = decode({wire: stored[wire] for wire in stored if wire in BY_WIRE and BY_WIRE[wire].name in SPEC_FIELDS})
    values.setdefault("context", {})
    if parent_result is not None:  # a fanout child receives its parent's result
        values["context"] = {**values["context"], "parent_result": parent_result}
    return TaskSpec(**values)


def record_of(text: str) -> TaskRecord:
    """The record as clients see it (`get_task`), from its stored JSON text."""
    values = decode(json.loads(text))
    task_input = values.get("input", {})
    values["prompt"] = task_input.get("prompt") if values.pop("v1", False) else None
    values["children"] = list(values.get("children", ()))
    values["reruns"] = list(values.get("reruns", ()))
    values["trace_id"] = trace_id_of(values.pop("traceparent", None))
    first_started = values.pop("first_started_at", None)
    if first_started is not None:
        ready_at = max(values["created_at"], values.get("not_before") or 0)
        values["queue_wait_ms"] = round((first_started - ready_at) * 1000, 3)
    if values.get("finished_at") is not None and values.get("started_at") is not None:
        values["run_ms"] = round((values["finished_at"] - values["started_at"]) * 1000, 3)
    return TaskRecord.model_validate(values)


SUMMARY_WIRES = frozenset(BY_NAME[name].wire for name in TaskSummary.model_fields if name in BY_NAME)


def summary_of(text: str) -> TaskSummary:
    """A row of `list_tasks`, from a stored record or from the members the listing script read off one (`ec`:
    its error's code)."""
    stored = json.loads(text)
    code = stored.get("ec")
    if code is None and "e" in stored:
        code = json.loads(stored["e"]).get("code")
    return TaskSummary(**decode({w: v for w, v in stored.items() if w in SUMMARY_WIRES}), error_code=code)


def history_of(text: str) -> list[Event]:
    """The task's events, oldest first; a final event carries the record's result or error."""
    stored = json.loads(text)
    events = [Event(seq, kind, at_ms / 1000, data) for seq, kind, at_ms, data in stored.get("h", ())]
    if events and events[-1].type in FINAL_TYPES:
        last = events[-1]
        outcome = {key: json.loads(stored[wire]) for key, wire in (("result", "r"), ("error", "e")) if wire in stored}
        events[-1] = Event(last.seq, last.type, last.time, dumps({**json.loads(last.data), **outcome}))
    return events


FINAL_TYPES = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class Event:
    seq: int  # 1, 2, …: the event's id (SSE `id`, `Last-Event-ID`)
    # scheduled, queued, running, progress, preempted, input_required, input_received, attempt_lost, corrected,
    # waiting, succeeded, failed, cancelled
    type: str
    time: float  # unix seconds
    data: str  # JSON text


def entry(task_id: str, attempt: int) -> dict[str, str]:
    """A stream entry: one delivery of one attempt."""
    return {BY_NAME["task_id"].wire: task_id, BY_NAME["attempts"].wire: str(attempt)}


def entry_task(fields: Mapping[str, str]) -> tuple[str, int]:
    """(task id, attempt) of a stream entry."""
    return fields[BY_NAME["task_id"].wire], int(fields[BY_NAME["attempts"].wire])


def event_of(message: str) -> Event:
    """A live event as published on the task's channel (`[seq, type, time_ms, data]`)."""
    seq, kind, at_ms, data = json.loads(message)
    return Event(seq, kind, at_ms / 1000, data)


def final_event(events: Sequence[Event]) -> bool:
    return bool(events) and events[-1].type in FINAL_TYPES
