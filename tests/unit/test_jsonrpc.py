"""Unit tests for the JSON-RPC 2.0 dispatcher: every example of the specification's section 7, and our edges."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue

from orchestrator.auth import ANONYMOUS, Principal
from orchestrator.errors import InvalidParamsError, QueueFullError, TaskNotFoundError
from orchestrator.jsonrpc import Dispatcher, Method, RequestContext, to_jsonrpc_error

CTX = RequestContext(ANONYMOUS)
READER = Principal("alice-ci", "alice", frozenset({"read", "submit"}))


class Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid")  # not strict: the dispatcher itself must validate strictly


class SubtractParams(Forbid):
    minuend: int
    subtrahend: int


class UpdateParams(Forbid):
    a: int
    b: int
    c: int
    d: int
    e: int


class SumParams(Forbid):
    a: int = 0
    b: int = 0
    c: int = 0


class HelloParams(Forbid):
    value: int


class EchoParams(Forbid):
    value: JsonValue = None


class Job(BaseModel):
    name: str
    retries: int = Field(default=0, ge=0, description="how often to retry")


class ScheduleParams(Forbid):
    job: Job
    at: AwareDatetime
    context: dict[str, Any] = Field(default_factory=dict)


class Scheduled(BaseModel):
    name: str
    at: datetime


class FailParams(Forbid):
    kind: str = "not_found"


@dataclass
class Recorder:
    calls: list[tuple[str, BaseModel]] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def methods(self) -> list[Method]:
        async def subtract(p: SubtractParams, ctx: RequestContext) -> int:
            return p.minuend - p.subtrahend

        async def record(p: BaseModel, ctx: RequestContext) -> None:
            self.calls.append((type(p).__name__, p))

        async def add(p: SumParams, ctx: RequestContext) -> int:
            self.calls.append(("sum", p))
            return p.a + p.b + p.c

        async def get_data(p: BaseModel, ctx: RequestContext) -> list[Any]:
            return ["hello", 5]

        async def echo(p: EchoParams, ctx: RequestContext) -> Any:
            return p.value

        async def schedule(p: ScheduleParams, ctx: RequestContext) -> Scheduled:
            return Scheduled(name=p.job.name, at=p.at)

        async def fail(p: FailParams, ctx: RequestContext) -> None:
            if p.kind == "not_found":
                raise TaskNotFoundError("t-1")
            if p.kind == "queue_full":
                raise QueueFullError(active=10, limit=10, retry_after_s=2.5)
            if p.kind == "invalid":
                raise InvalidParamsError({"params.tool": "no such tool"})
            raise RuntimeError("secret /etc/passwd")

        async def jobs(p: BaseModel, ctx: RequestContext) -> list[Scheduled]:
            return [Scheduled(name="a", at=datetime(2030, 1, 1, tzinfo=UTC))]

        async def whoami(p: BaseModel, ctx: RequestContext) -> dict[str, Any]:
            return {"version": ctx.version, "principal": ctx.principal.key_id, "tenant": ctx.principal.tenant}

        async def nan(p: BaseModel, ctx: RequestContext) -> float:
            return float("nan")

        async def wait_gate(p: BaseModel, ctx: RequestContext) -> str:
            await self.gate.wait()
            return "passed"

        async def open_gate(p: BaseModel, ctx: RequestContext) -> str:
            self.gate.set()
            return "opened"

        return [
            Method("subtract", SubtractParams, int, "minuend - subtrahend", subtract),
            Method("update", UpdateParams, None, "records its params", record),
            Method("notify_hello", HelloParams, None, "records its params", record),
            Method("sum", SumParams, int, "a + b + c", add),
            Method("notify_sum", SumParams, int, "a + b + c", add),
            Method("get_data", Forbid, list[Any], "fixed data", get_data),
            Method("echo", EchoParams, JsonValue, "returns value", echo),
            Method("schedule", ScheduleParams, Scheduled, "nested model and a datetime", schedule),
            Method("fail", FailParams, None, "raises", fail),
            Method("jobs", Forbid, list[Scheduled], "a list of models", jobs),
            Method("whoami", Forbid, dict[str, Any], "the request context", whoami),
            Method("nan", Forbid, float, "an unserializable result", nan),
            Method("wait_gate", Forbid, str, "waits for open_gate", wait_gate),
            Method("open_gate", Forbid, str, "opens the gate", open_gate),
            Method("admin_sum", SumParams, int, "a + b + c, for admins", add, scope="admin"),
            Method("read_data", Forbid, list[Any], "fixed data, for readers", get_data, scope="read"),
        ]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def rpc(recorder: Recorder) -> Dispatcher:
    return Dispatcher(recorder.methods())


async def call(rpc: Dispatcher, body: str | bytes | Any, **kwargs: Any) -> Any:
    """Send a body (raw text/bytes, or a value to encode) and decode the reply; None when there is none."""
    if isinstance(body, str):
        raw = body.encode()
    elif isinstance(body, bytes):
        raw = body
    else:
        raw = json.dumps(body).encode()
    reply = await rpc.handle(raw, kwargs.pop("ctx", CTX), **kwargs)
    return None if reply is None else json.loads(reply)


def ok(result: Any, id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "result": result}


def err(code: int, message: str, data: Any = None, id: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": id, "error": error}


def invalid(reason: str, id: Any = None) -> dict[str, Any]:
    return err(-32600, "Invalid Request", {"reason": reason}, id)


KNOWN = sorted([*(m.name for m in Recorder().methods()), "rpc.discover"])
NOT_AN_OBJECT = invalid("a request must be a JSON object")


# --- section 7 of the JSON-RPC 2.0 specification, one example each ---


async def test_spec_positional_params(rpc: Dispatcher) -> None:
    assert await call(rpc, '{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}') == ok(19, 1)
    assert await call(rpc, '{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}') == ok(-19, 2)


async def test_spec_named_params(rpc: Dispatcher) -> None:
    body = '{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}'
    assert await call(rpc, body) == ok(19, 3)
    body = '{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, "id": 4}'
    assert await call(rpc, body) == ok(19, 4)


async def test_spec_notifications(rpc: Dispatcher, recorder: Recorder) -> None:
    assert await call(rpc, '{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}') is None
    assert await call(rpc, '{"jsonrpc": "2.0", "method": "foobar"}') is None
    assert recorder.calls == [("UpdateParams", UpdateParams(a=1, b=2, c=3, d=4, e=5))]


async def test_spec_non_existent_method(rpc: Dispatcher) -> None:
    expected = err(-32601, "Method not found", {"method": "foobar", "known": KNOWN}, id="1")
    assert await call(rpc, '{"jsonrpc": "2.0", "method": "foobar", "id": "1"}') == expected


async def test_spec_invalid_json(rpc: Dispatcher) -> None:
    body = '{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]'
    assert await call(rpc, body) == err(-32700, "Parse error", {"reason": "invalid JSON at line 1 column 40"})


async def test_spec_invalid_request_object(rpc: Dispatcher) -> None:
    body = '{"jsonrpc": "2.0", "method": 1, "params": "bar"}'
    assert await call(rpc, body) == invalid('"method" must be a string')


async def test_spec_batch_invalid_json(rpc: Dispatcher) -> None:
    body = '[\n  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},\n  {"jsonrpc": "2.0", "method"\n]'
    assert await call(rpc, body) == err(-32700, "Parse error", {"reason": "invalid JSON at line 4 column 1"})


async def test_spec_empty_array(rpc: Dispatcher) -> None:
    assert await call(rpc, "[]") == invalid("empty batch")


async def test_spec_invalid_batch_not_empty(rpc: Dispatcher) -> None:
    assert await call(rpc, "[1]") == [NOT_AN_OBJECT]


async def test_spec_invalid_batch(rpc: Dispatcher) -> None:
    assert await call(rpc, "[1,2,3]") == [NOT_AN_OBJECT, NOT_AN_OBJECT, NOT_AN_OBJECT]


async def test_spec_mixed_batch(rpc: Dispatcher, recorder: Recorder) -> None:
    body = """[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
    ]"""
    assert await call(rpc, body) == [
        ok(7, "1"),
        ok(19, "2"),
        invalid("unknown members: foo"),
        err(-32601, "Method not found", {"method": "foo.get", "known": KNOWN}, id="5"),
        ok(["hello", 5], "9"),
    ]
    assert ("HelloParams", HelloParams(value=7)) in recorder.calls


async def test_spec_all_notification_batch(rpc: Dispatcher, recorder: Recorder) -> None:
    body = """[
        {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}
    ]"""
    assert await rpc.handle(body.encode(), CTX) is None
    assert sorted(name for name, _ in recorder.calls) == ["HelloParams", "sum"]


# --- envelopes and ids ---


@pytest.mark.parametrize("request_id", ["abc", 7, 1.5, -3, None, ""])
async def test_valid_ids_are_echoed(rpc: Dispatcher, request_id: Any) -> None:
    assert await call(rpc, {"jsonrpc": "2.0", "method": "get_data", "id": request_id}) == ok(["hello", 5], request_id)


@pytest.mark.parametrize("request_id", [True, False, {"a": 1}, [1]])
async def test_invalid_ids_are_answered_with_null(rpc: Dispatcher, request_id: Any) -> None:
    reply = await call(rpc, {"jsonrpc": "2.0", "method": "get_data", "id": request_id})
    assert reply == invalid('"id" must be a string, a number or null')


@pytest.mark.parametrize(
    ("envelope", "reason"),
    [
        ({"jsonrpc": "1.0", "method": "get_data", "id": 1}, '"jsonrpc" must be exactly "2.0"'),
        ({"jsonrpc": 2.0, "method": "get_data", "id": 1}, '"jsonrpc" must be exactly "2.0"'),
        ({"method": "get_data", "id": 1}, '"jsonrpc" must be exactly "2.0"'),
        ({"jsonrpc": "2.0", "id": 1}, '"method" must be a string'),
        ({"jsonrpc": "2.0", "method": "get_data", "params": None, "id": 1}, '"params" must be an object or an array'),
        ({"jsonrpc": "2.0", "method": "get_data", "params": 3, "id": 1}, '"params" must be an object or an array'),
        ({"jsonrpc": "2.0", "method": "get_data", "id": 1, "extra": 0}, "unknown members: extra"),
    ],
)
async def test_invalid_request_keeps_a_valid_id(rpc: Dispatcher, envelope: dict[str, Any], reason: str) -> None:
    assert await call(rpc, envelope) == invalid(reason, id=1)


@pytest.mark.parametrize("body", ['"just a string"', "42", "null", "true"])
async def test_non_object_body_is_invalid_request(rpc: Dispatcher, body: str) -> None:
    assert await call(rpc, body) == NOT_AN_OBJECT


async def test_invalid_request_without_id_is_still_answered(rpc: Dispatcher) -> None:
    assert await call(rpc, {"jsonrpc": "1.0", "method": "update"}) == invalid('"jsonrpc" must be exactly "2.0"')


async def test_failing_notifications_stay_silent(rpc: Dispatcher) -> None:
    assert await call(rpc, {"jsonrpc": "2.0", "method": "subtract", "params": ["x"]}) is None
    assert await call(rpc, {"jsonrpc": "2.0", "method": "fail", "params": {"kind": "boom"}}) is None


async def test_request_context_reaches_the_handler(rpc: Dispatcher) -> None:
    ctx = RequestContext(version=2, principal=READER)
    reply = await call(rpc, {"jsonrpc": "2.0", "method": "whoami", "id": 1}, ctx=ctx)
    assert reply == ok({"version": 2, "principal": "alice-ci", "tenant": "alice"}, 1)


async def test_a_method_needs_its_scope_before_its_params_are_looked_at(rpc: Dispatcher, recorder: Recorder) -> None:
    ctx = RequestContext(principal=READER)
    forbidden = err(-32012, "forbidden: admin_sum needs an API key with scope 'admin'",
                    {"retryable": False, "method": "admin_sum", "scope": "admin"}, 1)
    for params in ({"a": 1}, {"a": "x"}):
        body = {"jsonrpc": "2.0", "method": "admin_sum", "params": params, "id": 1}
        assert await call(rpc, body, ctx=ctx) == forbidden
    assert await call(rpc, {"jsonrpc": "2.0", "method": "read_data", "id": 2}, ctx=ctx) == ok(["hello", 5], 2)
    assert recorder.calls == []
    admin = RequestContext(principal=Principal("ops", "ops", frozenset({"admin"})))
    summed = await call(rpc, {"jsonrpc": "2.0", "method": "admin_sum", "params": {"a": 1}, "id": 3}, ctx=admin)
    assert summed == ok(1, 3)
    # In a batch each member is judged on its own; rpc.discover needs no scope.
    batch = [{"jsonrpc": "2.0", "method": "admin_sum", "id": 4}, {"jsonrpc": "2.0", "method": "rpc.discover", "id": 5}]
    replies = await call(rpc, batch, ctx=ctx)
    assert replies[0]["error"]["code"] == -32012 and "result" in replies[1]


# --- parsing limits ---


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_non_finite_numbers_are_parse_errors(rpc: Dispatcher, constant: str) -> None:
    body = f'{{"jsonrpc": "2.0", "method": "echo", "params": [{constant}], "id": 1}}'
    assert await call(rpc, body) == err(-32700, "Parse error", {"reason": f"{constant} is not valid JSON"})


async def test_invalid_utf8_is_a_parse_error(rpc: Dispatcher) -> None:
    body = b'{"jsonrpc": "2.0", "method": "echo", "params": ["\xff"], "id": 1}'
    assert await call(rpc, body) == err(-32700, "Parse error", {"reason": "body is not valid UTF-8"})


def nested(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


async def test_depth_limit_is_inclusive(rpc: Dispatcher) -> None:
    deepest = nested(30)  # envelope + params + 30 arrays = 32 levels
    assert await call(rpc, {"jsonrpc": "2.0", "method": "echo", "params": [deepest], "id": 1}) == ok(deepest, 1)


async def test_too_deep_is_invalid_request(rpc: Dispatcher) -> None:
    expected = err(-32600, "Invalid Request", {"reason": "JSON nested deeper than 32 levels", "max_depth": 32})
    assert await call(rpc, {"jsonrpc": "2.0", "method": "echo", "params": [nested(31)], "id": 1}) == expected
    assert await call(rpc, "[" * 100_000 + "]" * 100_000) == expected  # RecursionError inside json


async def test_batch_limit(rpc: Dispatcher) -> None:
    batch = [{"jsonrpc": "2.0", "method": "get_data", "id": i} for i in range(101)]
    assert await call(rpc, batch[:100]) == [ok(["hello", 5], i) for i in range(100)]
    reason = "batch of 101 requests exceeds the limit of 100"
    assert await call(rpc, batch) == err(-32600, "Invalid Request", {"reason": reason, "max_batch": 100})


async def test_batch_members_run_concurrently_in_order(rpc: Dispatcher) -> None:
    batch = [
        {"jsonrpc": "2.0", "method": "wait_gate", "id": 1},
        {"jsonrpc": "2.0", "method": "open_gate", "id": 2},
    ]
    async with asyncio.timeout(1):  # run one after the other, wait_gate would never return
        assert await call(rpc, batch) == [ok("passed", 1), ok("opened", 2)]


# --- params ---


async def invalid_params(rpc: Dispatcher, method: str, params: Any) -> dict[str, str]:
    reply = await call(rpc, {"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
    assert reply["error"]["code"] == -32602 and reply["error"]["message"] == "Invalid params", reply
    assert reply["id"] == 1 and set(reply["error"]) == {"code", "message", "data"}
    return reply["error"]["data"]["fields"]


async def test_missing_params_are_an_empty_object(rpc: Dispatcher) -> None:
    assert await call(rpc, {"jsonrpc": "2.0", "method": "sum", "id": 1}) == ok(0, 1)
    assert await invalid_params(rpc, "subtract", {}) == {"params.minuend": "required", "params.subtrahend": "required"}


async def test_positional_params(rpc: Dispatcher) -> None:
    assert await call(rpc, {"jsonrpc": "2.0", "method": "sum", "params": [1, 2], "id": 1}) == ok(3, 1)
    expected = {"params": "expected at most 2 positional params, got 3"}
    assert await invalid_params(rpc, "subtract", [1, 2, 3]) == expected
    assert await invalid_params(rpc, "subtract", [1]) == {"params.subtrahend": "required"}


async def test_wrong_type(rpc: Dispatcher) -> None:
    fields = await invalid_params(rpc, "subtract", {"minuend": [1], "subtrahend": 1})
    assert fields == {"params.minuend": "type: [1] is not of type 'integer'"}


async def test_strict_no_string_to_int(rpc: Dispatcher) -> None:
    assert await invalid_params(rpc, "subtract", ["5", 1]) == {"params.minuend": "type: '5' is not of type 'integer'"}


async def test_strict_no_float_to_int(rpc: Dispatcher) -> None:
    # JSON Schema calls 5.0 an integer; strict pydantic does not, and its reason stays short
    assert await invalid_params(rpc, "subtract", [5.0, 1]) == {"params.minuend": "invalid (int_type)"}


async def test_unknown_field(rpc: Dispatcher) -> None:
    fields = await invalid_params(rpc, "subtract", {"minuend": 1, "subtrahend": 2, "extra": 3})
    assert fields == {"params.extra": "unknown field"}


async def test_long_values_are_truncated(rpc: Dispatcher) -> None:
    fields = await invalid_params(rpc, "subtract", {"minuend": "x" * 10_000, "subtrahend": 2})
    assert fields["params.minuend"].startswith("type: 'xxx") and len(fields["params.minuend"]) <= 200


async def test_nested_paths(rpc: Dispatcher) -> None:
    fields = await invalid_params(rpc, "schedule", {"job": {"retries": -1}, "at": "2030-01-01T00:00:00Z"})
    assert fields == {"params.job.name": "required", "params.job.retries": "minimum: -1 is less than the minimum of 0"}
    fields = await invalid_params(rpc, "schedule", {"job": {"name": "j"}, "at": "not a date"})
    assert fields == {"params.at": "invalid (datetime_parsing)"}


async def test_nested_model_and_datetime(rpc: Dispatcher) -> None:
    params = {"job": {"name": "nightly"}, "at": "2030-01-01T00:00:00+02:00", "context": {"x": [1, {"y": None}]}}
    reply = await call(rpc, {"jsonrpc": "2.0", "method": "schedule", "params": params, "id": "s"})
    assert reply == ok({"name": "nightly", "at": "2030-01-01T00:00:00+02:00"}, "s")
    naive = {"job": {"name": "nightly"}, "at": "2030-01-01T00:00:00"}
    assert await invalid_params(rpc, "schedule", naive) == {"params.at": "invalid (timezone_aware)"}


# --- methods, paths, errors ---


async def test_path_method(rpc: Dispatcher) -> None:
    request = {"jsonrpc": "2.0", "method": "subtract", "params": [3, 1], "id": 1}
    assert await call(rpc, request, path_method="subtract") == ok(2, 1)
    expected = err(-32601, "Method not found", {"method": "subtract", "expected": "sum"}, id=1)
    assert await call(rpc, request, path_method="sum") == expected
    discover = {"jsonrpc": "2.0", "method": "rpc.discover", "id": 1}
    expected = err(-32601, "Method not found", {"method": "rpc.discover", "expected": "sum"}, id=1)
    assert await call(rpc, discover, path_method="sum") == expected


async def test_orchestrator_errors_keep_their_code(rpc: Dispatcher) -> None:
    reply = await call(rpc, {"jsonrpc": "2.0", "method": "fail", "id": 1})
    assert reply == err(-32001, "task t-1 not found", {"retryable": False, "task_id": "t-1"}, id=1)
    reply = await call(rpc, {"jsonrpc": "2.0", "method": "fail", "params": ["queue_full"], "id": 2})
    data = {"retryable": True, "active": 10, "limit": 10, "retry_after_s": 2.5}
    assert reply == err(-32002, "queue full: 10 tasks active, limit 10; retry later", data, id=2)
    reply = await call(rpc, {"jsonrpc": "2.0", "method": "fail", "params": ["invalid"], "id": 3})
    assert reply == err(-32602, "Invalid params", {"fields": {"params.tool": "no such tool"}}, id=3)


async def test_unexpected_errors_are_internal_and_opaque(rpc: Dispatcher, caplog: pytest.LogCaptureFixture) -> None:
    body = json.dumps({"jsonrpc": "2.0", "method": "fail", "params": {"kind": "boom"}, "id": 1}).encode()
    with caplog.at_level(logging.ERROR, logger="orchestrator.jsonrpc"):
        reply = await rpc.handle(body, CTX)
    assert reply is not None and json.loads(reply) == err(-32603, "Internal error", id=1)
    assert b"secret" not in reply and b"Traceback" not in reply and b"RuntimeError" not in reply
    assert any(record.exc_info and "secret" in str(record.exc_info[1]) for record in caplog.records)


async def test_results_are_serialized_as_json(rpc: Dispatcher) -> None:
    reply = await call(rpc, {"jsonrpc": "2.0", "method": "jobs", "id": 1})
    assert reply == ok([{"name": "a", "at": "2030-01-01T00:00:00Z"}], 1)


async def test_a_number_json_cannot_hold_is_sent_as_null(rpc: Dispatcher) -> None:
    """NaN is no JSON: a tool's NaN in a stored result must not make its task unreadable, nor the reply invalid."""
    reply = await rpc.handle(b'{"jsonrpc": "2.0", "method": "nan", "id": 1}', CTX)
    assert reply is not None and b"NaN" not in reply
    assert json.loads(reply, parse_constant=lambda name: pytest.fail(f"{name} in a reply")) == ok(None, 1)


async def test_lone_surrogates_in_replies_stay_valid_utf8(rpc: Dispatcher) -> None:
    reply = await rpc.handle(b'{"jsonrpc": "2.0", "method": "\\ud800\xc3\xa9", "id": 1}', CTX)
    assert reply is not None
    expected = err(-32601, "Method not found", {"method": "\ud800\u00e9", "known": KNOWN}, id=1)
    assert json.loads(reply.decode("utf-8")) == expected


def test_to_jsonrpc_error_mapping() -> None:
    expected = {"code": -32001, "message": "task x not found", "data": {"retryable": False, "task_id": "x"}}
    assert to_jsonrpc_error(TaskNotFoundError("x")) == expected
    expected = {"code": -32602, "message": "Invalid params", "data": {"fields": {"params.a": "required"}}}
    assert to_jsonrpc_error(InvalidParamsError({"params.a": "required"})) == expected
    assert to_jsonrpc_error(ValueError("boom")) == {"code": -32603, "message": "Internal error"}


def test_reserved_and_duplicate_names_are_refused() -> None:
    methods = Recorder().methods()
    with pytest.raises(ValueError):
        Dispatcher([*methods, methods[0]])
    with pytest.raises(ValueError):
        Dispatcher([Method("rpc.discover", Forbid, None, "mine", methods[0].handler)])


# --- OpenRPC ---


async def test_rpc_discover_is_the_openrpc_document(rpc: Dispatcher) -> None:
    reply = await call(rpc, {"jsonrpc": "2.0", "method": "rpc.discover", "id": 1})
    doc = rpc.openrpc()
    assert reply == ok(doc, 1)
    assert doc["openrpc"] == "1.3.2" and doc["info"] == {"title": "MCP Orchestrator", "version": "1"}
    assert [m["name"] for m in doc["methods"]] == [m.name for m in Recorder().methods()] + ["rpc.discover"]
    subtract = doc["methods"][0]
    assert subtract["summary"] == "minuend - subtrahend" and subtract["paramStructure"] == "either"
    assert [(p["name"], p["required"]) for p in subtract["params"]] == [("minuend", True), ("subtrahend", True)]
    assert subtract["result"] == {"name": "result", "schema": {"type": "integer"}}
    assert set(doc["components"]["schemas"]) == {"Job", "JsonValue", "Scheduled"}
    schedule = next(m for m in doc["methods"] if m["name"] == "schedule")
    assert schedule["params"][0]["schema"] == {"$ref": "#/components/schemas/Job"}
    assert schedule["result"]["schema"]["title"] == "Scheduled"
    assert "$defs" not in json.dumps(doc)


def params_validator(doc: dict[str, Any], name: str) -> Draft202012Validator:
    """The params object schema a client would assemble from the published descriptors."""
    method = next(m for m in doc["methods"] if m["name"] == name)
    schema = {
        "type": "object",
        "properties": {p["name"]: p["schema"] for p in method["params"]},
        "required": [p["name"] for p in method["params"] if p["required"]],
        "additionalProperties": False,
        "components": doc["components"],
    }
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@pytest.mark.parametrize(
    ("params", "valid"),
    [
        ({"job": {"name": "n", "retries": 2}, "at": "2030-01-01T00:00:00Z"}, True),
        ({"job": {"name": "n", "retries": "2"}, "at": "2030-01-01T00:00:00Z"}, False),
        ({"job": {"retries": 2}, "at": "2030-01-01T00:00:00Z"}, False),
        ({"job": {"name": "n"}}, False),
    ],
)
async def test_published_schema_is_the_enforced_one(rpc: Dispatcher, params: dict[str, Any], valid: bool) -> None:
    doc = (await call(rpc, {"jsonrpc": "2.0", "method": "rpc.discover", "id": 1}))["result"]
    assert params_validator(doc, "schedule").is_valid(params) is valid
    reply = await call(rpc, {"jsonrpc": "2.0", "method": "schedule", "params": params, "id": 1})
    assert ("result" in reply) is valid


def test_openrpc_returns_a_copy(rpc: Dispatcher) -> None:
    rpc.openrpc()["methods"].clear()
    assert rpc.openrpc()["methods"]
