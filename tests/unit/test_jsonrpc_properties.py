"""Hostile input against the JSON-RPC dispatcher and the real method tables: properties (hypothesis), then examples.

Whatever the body, `Dispatcher.handle` returns None or a well-formed JSON-RPC 2.0 reply, never raises, never
leaks a traceback, an object repr or a secret from the settings, and a refused `run_task` stores nothing.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from orchestrator import api, codec
from orchestrator.auth import ANONYMOUS, Principal
from orchestrator.errors import InvalidParamsError, SagaNotFoundError, TaskNotFoundError
from orchestrator.intake import build_task
from orchestrator.jsonrpc import Dispatcher, RequestContext
from orchestrator.models import (
    CancelTaskResult,
    ControlParams,
    ControlResult,
    RunTaskParams,
    RunTaskParamsV2,
    RunTaskResult,
    StatusResult,
    TaskRecord,
    TaskStatus,
)
from orchestrator.saga import SagaState, new_saga
from orchestrator.saga_service import SagaService
from orchestrator.settings import QuotaSettings, Settings, ToolSettings
from orchestrator.tasks import TaskSpec
from orchestrator.tools import registry

API_KEY = "sk-hostile-0123456789abcdef"
REDIS_PASSWORD = "pw-hostile-9876543210"
SECRETS = (API_KEY, REDIS_PASSWORD)
MAX_BATCH, MAX_DEPTH = 8, 12
EDGE_CODES = frozenset({-32700, -32600, -32601, -32602, -32603})
LEAKS = ("Traceback", 'File "', " object at 0x", "<number out of range>", "_OutOfRange", "_Repeated", *SECRETS)


def make_settings() -> Settings:
    tools = dict(Settings().tools)
    tools["private"] = ToolSettings(kind="openai", base_url="http://127.0.0.1:9/v1", model="m",
                                    api_key=SecretStr(API_KEY), description="a provider with a key")
    return Settings(
        tools=tools,
        redis={"url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:9/0"},
        limits={"max_prompt_chars": 64, "max_context_bytes": 256, "max_children": 2, "max_batch": MAX_BATCH},
    )


class MemoryTasks:
    """The TaskService surface the method table calls, in memory; the intake (validation, limits) is the real one."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tasks: dict[str, TaskSpec] = {}

    async def run_task(self, params: RunTaskParams | RunTaskParamsV2, who: Principal) -> RunTaskResult | TaskRecord:
        task, children = build_task(params, self.settings, 1.0, who.tenant)
        for spec in (task, *children):  # what the store would write: strict JSON (no NaN), valid UTF-8
            json.loads(codec.submitted(spec, TaskStatus.QUEUED).encode("utf-8"), parse_constant=_no_constants)
        for spec in (task, *children):
            self.tasks[spec.task_id] = spec
        if params.wait:
            return self._record(task, TaskStatus.SUCCEEDED)
        return RunTaskResult(task_id=task.task_id, status=TaskStatus.QUEUED)

    async def get_task(self, task_id: str, who: Principal) -> TaskRecord:
        if task_id not in self.tasks:
            raise TaskNotFoundError(task_id)
        return self._record(self.tasks[task_id], TaskStatus.QUEUED)

    async def cancel_task(self, task_id: str, who: Principal) -> CancelTaskResult:
        await self.get_task(task_id, who)
        return CancelTaskResult(task_id=task_id, status=TaskStatus.CANCELLED)

    async def status(self, who: Principal) -> StatusResult:
        return StatusResult(pools=[], workers=[], matrix={}, running=[], tools=registry.describe(self.settings.tools),
                            stream_length=len(self.tasks), stream_pending=0, active_tasks=len(self.tasks))

    async def control(self, params: ControlParams, who: Principal) -> ControlResult:
        if params.action == "dead_letters":
            return ControlResult(action=params.action, dead_letters=[])
        raise InvalidParamsError({"params.task_id": "not a dead letter"})

    @staticmethod
    def _record(spec: TaskSpec, status: TaskStatus) -> TaskRecord:
        return codec.record_of(codec.submitted(spec, status))  # as the store would write and read it back


class MemorySagas:
    """A saga store and coordinator in memory, behind the real SagaService (workflow lookup, input schema)."""

    def __init__(self, settings: Settings) -> None:
        self.workflows = settings.all_workflows()
        self.sagas: dict[str, SagaState] = {}

    async def load(self, saga_id: str) -> SagaState:
        if saga_id not in self.sagas:
            raise SagaNotFoundError(saga_id)
        return self.sagas[saga_id]

    async def run_saga(self, workflow: str, saga_input: dict[str, Any], priority: int,
                       idempotency_key: str | None, agent: str | None, tenant: str | None,
                       quota: QuotaSettings | None) -> tuple[str, bool]:
        json.dumps(saga_input, ensure_ascii=False, allow_nan=False).encode("utf-8")  # what a store would write
        saga_id = uuid.uuid4().hex
        self.sagas[saga_id] = new_saga(saga_id, self.workflows[workflow], saga_input, priority, 1.0, agent)
        return saga_id, False

    async def cancel_saga(self, saga_id: str) -> None:
        await self.load(saga_id)


class System:
    """Both API versions' dispatchers over one in-memory service, built as the ingress builds them."""

    def __init__(self) -> None:
        self.settings = make_settings()
        self.tasks = MemoryTasks(self.settings)
        self.sagas = MemorySagas(self.settings)
        service = SagaService(self.settings, self.sagas, self.sagas)  # type: ignore[arg-type]
        tools = {"x-tools": [t.model_dump() for t in registry.describe(self.settings.tools)]}
        self.dispatchers = {
            version: Dispatcher(api.methods(self.tasks, version, service),  # type: ignore[arg-type]
                                max_batch=MAX_BATCH, max_depth=MAX_DEPTH, version=str(version), extensions=tools)
            for version in (1, 2)
        }

    def handle(self, body: bytes, version: int = 1, path_method: str | None = None) -> bytes | None:
        return asyncio.run(self.dispatchers[version].handle(body, RequestContext(ANONYMOUS, version=version),
                                                            path_method=path_method))


SYSTEM = System()
METHODS = ["run_task", "get_task", "cancel_task", "status", "control", "run_saga", "get_saga", "cancel_saga",
           "list_workflows", "rpc.discover"]


# --------------------------------------------------------------- the oracle


def lenient(body: bytes) -> Any:
    """The body as a lenient parser sees it (NaN, huge numbers, surrogates allowed); a marker when unparsable."""
    try:
        return json.loads(body.decode("utf-8", "surrogatepass"), parse_int=_lenient_int)
    except (ValueError, RecursionError):
        return _UNPARSABLE


_UNPARSABLE, _HUGE_INT = object(), object()


def _lenient_int(text: str) -> Any:
    return int(text) if len(text) <= 4_300 else _HUGE_INT


def is_id(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def check_response(response: Any, sent_ids: list[Any], internal_ok: bool = False) -> None:
    assert isinstance(response, dict), response
    assert response.get("jsonrpc") == "2.0" and "id" in response, response
    assert set(response) in ({"jsonrpc", "id", "result"}, {"jsonrpc", "id", "error"}), response
    assert is_id(response["id"]), response
    assert response["id"] is None or response["id"] in sent_ids, (response["id"], sent_ids)
    if "error" in response:
        error = response["error"]
        assert isinstance(error, dict) and set(error) - {"data"} == {"code", "message"}, error
        code = error["code"]
        assert isinstance(code, int) and not isinstance(code, bool), error
        assert code in EDGE_CODES or -32099 <= code <= -32000, error
        assert internal_ok or code != -32603, error  # an in-memory service never fails: -32603 is our bug (a 500)
        assert isinstance(error["message"], str) and error["message"], error
        if code == -32602:
            fields = error["data"]["fields"]
            assert fields and all(isinstance(k, str) and k.startswith("params") and isinstance(v, str)
                                  for k, v in fields.items()), error
            # pydantic re-reads the params we parsed: if it cannot, we let through what it cannot hold
            assert not any("json_invalid" in v for v in fields.values()), error


def check_reply(body: bytes, reply: bytes | None, internal_ok: bool = False) -> Any:
    """Assert `reply` is what JSON-RPC 2.0 allows for `body`; returns the decoded reply (None for no reply)."""
    sent = lenient(body)
    members = sent if isinstance(sent, list) else [sent]
    sent_ids = [m["id"] for m in members if isinstance(m, dict) and "id" in m]
    if reply is None:  # only notifications: requests without an id, in a body that parsed
        assert sent is not _UNPARSABLE and members, body[:200]
        assert all(isinstance(m, dict) and "id" not in m for m in members), body[:200]
        return None
    text = reply.decode("utf-8")  # strict: a reply is always valid UTF-8
    for leak in LEAKS:
        assert leak not in text, (leak, text[:500])
    decoded = json.loads(text, parse_constant=_no_constants)
    if isinstance(decoded, list):
        assert isinstance(sent, list) and 0 < len(decoded) <= len(sent), (body[:200], text[:300])
        for response in decoded:
            check_response(response, sent_ids, internal_ok)
    else:
        check_response(decoded, sent_ids, internal_ok)
    return decoded


def _no_constants(name: str) -> Any:
    raise AssertionError(f"{name} in a reply")


def answer(body: bytes, version: int = 1, path_method: str | None = None, internal_ok: bool = False) -> Any:
    """Handle `body` (asserting it never raises) and check the reply's shape; returns the decoded reply.

    A single `run_task` must store its task and children only when it is answered with success.
    """
    before = set(SYSTEM.tasks.tasks)
    decoded = check_reply(body, SYSTEM.handle(body, version, path_method), internal_ok)
    stored = [SYSTEM.tasks.tasks[task_id] for task_id in set(SYSTEM.tasks.tasks) - before]
    if isinstance(decoded, dict) and "error" in decoded:
        assert stored == [], decoded
    elif isinstance(decoded, dict) and isinstance(decoded["result"], dict) and "task_id" in decoded["result"]:
        (root,) = [spec for spec in stored if spec.parent is None]  # the task, and all of its children
        assert decoded["result"]["task_id"] == root.task_id
        assert sorted(spec.task_id for spec in stored if spec.parent == root.task_id) == sorted(root.children)
        assert len(stored) == 1 + len(root.children)
    return decoded


# --------------------------------------------------------------- strategies

SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
CHARS = st.one_of(st.characters(), SURROGATES, st.sampled_from('"\\\x00\n\u2028\ufeff\U0001f600'))
TEXT = st.text(CHARS, max_size=12)
LONG_TEXT = st.builds(lambda c, n: c * n, CHARS, st.sampled_from([65, 129, 257, 5_000]))
STRINGS = TEXT | LONG_TEXT
HUGE = st.sampled_from([10**100, -(10**100), 2**63, 2**64 + 1, 1e308, -1e308, 5e-324, 1e-400])
NUMBERS = st.integers() | st.floats() | HUGE  # st.floats() brings NaN and ±Infinity: encoded as bare tokens
SCALARS = st.none() | st.booleans() | NUMBERS | STRINGS
JSON_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)
OBJECTS = st.dictionaries(TEXT | st.sampled_from(["prompt", "steps", "delay_ms"]), JSON_VALUES, max_size=4)
TOOLS = st.sampled_from(["echo", "deepseek", "private", "autotune", "sandbox.run", "no-such-tool"]) | STRINGS
PRIORITIES = st.integers(-2, 12) | HUGE | JSON_VALUES
DEADLINES = st.sampled_from(["2030-01-01T00:00:00Z", "2030-01-01T00:00:00", "9999-12-31T23:59:59+00:00",
                             "0001-01-01T00:00:00+14:00", "yesterday"]) | JSON_VALUES


def task_fields(v2: bool) -> dict[str, st.SearchStrategy[Any]]:
    text_input = {"input": OBJECTS | JSON_VALUES} if v2 else {"prompt": STRINGS | JSON_VALUES}
    return {**text_input, "priority": PRIORITIES, "context": OBJECTS | JSON_VALUES}


CHILD = st.fixed_dictionaries({"tool": TOOLS}, optional={**task_fields(False), **task_fields(True)})
RUN_TASK = st.fixed_dictionaries(
    {"tool": TOOLS},
    optional={**task_fields(False), **task_fields(True), "wait": st.floats(0, 1) | JSON_VALUES,
              "idempotency_key": STRINGS | JSON_VALUES, "agent": STRINGS | JSON_VALUES, "deadline": DEADLINES,
              "children": st.lists(CHILD, max_size=4) | JSON_VALUES, "surprise": JSON_VALUES},
)
PARAMS_BY_METHOD: dict[str, st.SearchStrategy[Any]] = {
    "run_task": RUN_TASK,
    "get_task": st.fixed_dictionaries({}, optional={"task_id": STRINGS | JSON_VALUES}),
    "cancel_task": st.fixed_dictionaries({}, optional={"task_id": STRINGS | JSON_VALUES}),
    "control": st.fixed_dictionaries({"action": st.sampled_from(["dead_letters", "requeue", "explode"]) | JSON_VALUES},
                                     optional={"task_id": STRINGS, "count": PRIORITIES}),
    "run_saga": st.fixed_dictionaries({"workflow": st.sampled_from(["code_pipeline", "nope"]) | STRINGS},
                                      optional={"input": OBJECTS | JSON_VALUES, "priority": PRIORITIES,
                                                "idempotency_key": STRINGS, "agent": STRINGS}),
    "get_saga": st.fixed_dictionaries({}, optional={"saga_id": STRINGS | JSON_VALUES}),
    "cancel_saga": st.fixed_dictionaries({}, optional={"saga_id": STRINGS | JSON_VALUES}),
}
IDS = st.integers(-2, 2) | st.sampled_from(["a", "b", "", 1.0, 2.5, None]) | TEXT | st.booleans() | st.lists(
    st.integers(), max_size=1)


ANY_METHOD = st.sampled_from(METHODS) | STRINGS


@st.composite
def requests(draw: st.DrawFn, methods: st.SearchStrategy[str] = ANY_METHOD) -> dict[str, Any]:
    """A JSON-RPC request object: mostly well-formed envelopes around hostile params, sometimes broken ones."""
    method = draw(methods)
    params = PARAMS_BY_METHOD.get(method, OBJECTS)
    request: dict[str, Any] = {"jsonrpc": "2.0" if draw(st.integers(0, 9)) else draw(JSON_VALUES),
                               "method": method if draw(st.integers(0, 9)) else draw(JSON_VALUES)}
    if draw(st.integers(0, 5)):
        request["params"] = draw(params | st.lists(JSON_VALUES, max_size=9) | JSON_VALUES)
    if draw(st.integers(0, 3)):  # else a notification
        request["id"] = draw(IDS)
    if not draw(st.integers(0, 9)):
        request[draw(TEXT)] = draw(JSON_VALUES)
    return request


def encode(value: Any, ascii_only: bool) -> bytes:
    """JSON text as a client might send it; non-ASCII surrogates make invalid UTF-8 (CESU-8) on purpose."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


BODIES = st.builds(encode, requests() | st.lists(requests(), min_size=1, max_size=MAX_BATCH + 2), st.booleans())

# Raw JSON text with tokens no Python value encodes to: overflowing and overlong numbers, escaped surrogates,
# repeated member names.
HOSTILE_TOKENS = [
    "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "-0", "9" * 4_300, "9" * 4_301, "-" + "9" * 5_000,
    "1" + "0" * 400 + ".5", '"\\ud800"', '"x\\udfffy"', '"\\ud83d\\ude00"', '"\\u0000"', "true", "null", '"2.0"',
]
HOSTILE_ATOMS = st.sampled_from(HOSTILE_TOKENS)
RAW_ATOMS = HOSTILE_ATOMS | SCALARS.filter(lambda v: not isinstance(v, float) or math.isfinite(v)).map(json.dumps)
RAW_KEYS = st.sampled_from(['"id"', '"jsonrpc"', '"method"', '"params"', '"tool"', '"prompt"', '"priority"',
                            '"context"', '"\\ud800"']) | TEXT.map(json.dumps)
RAW_JSON = st.recursive(
    RAW_ATOMS,
    lambda inner: st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]")
    | st.lists(st.tuples(RAW_KEYS, inner), max_size=4).map(lambda kv: "{" + ",".join(f"{k}:{v}" for k, v in kv) + "}"),
    max_leaves=10,
)


RAW_OBJECTS = st.lists(st.tuples(RAW_KEYS, RAW_JSON), max_size=4).map(
    lambda kv: "{" + ",".join(f"{k}:{v}" for k, v in kv) + "}")
VALID_PARAMS = {  # each method's params start valid; hostile values then replace or repeat some of them
    "run_task": {"tool": '"echo"', "prompt": '"x"', "priority": "5", "context": "{}"},
    "get_task": {"task_id": '"abc"'},
    "run_saga": {"workflow": '"code_pipeline"', "input": '{"goal":"g"}', "priority": "5"},
    "control": {"action": '"dead_letters"', "count": "5"},
}
EXTRA_NAMES = ["wait", "agent", "idempotency_key", "children", "input", "task_id", "count", "deadline"]


@st.composite
def raw_requests(draw: st.DrawFn) -> str:
    method = draw(st.sampled_from(sorted(VALID_PARAMS)))
    pairs = list(VALID_PARAMS[method].items())
    for _ in range(draw(st.integers(1, 2))):
        name = draw(st.sampled_from([name for name, _ in pairs] + EXTRA_NAMES))
        nested = draw(RAW_OBJECTS) if name in ("context", "input") else draw(RAW_JSON)
        value = draw(st.sampled_from([draw(HOSTILE_ATOMS), nested, f"[{draw(HOSTILE_ATOMS)}]"]))
        if draw(st.integers(0, 5)):  # replace; else repeat the member name
            pairs = [(n, v) for n, v in pairs if n != name]
        pairs.append((name, value))
    params = "{" + ",".join(f'"{name}":{value}' for name, value in pairs) + "}"
    request_id = draw(RAW_ATOMS) if not draw(st.integers(0, 3)) else "1"
    return f'{{"jsonrpc":"2.0","method":"{method}","params":{params},"id":{request_id}}}'


def nested(levels: int, opener: str, closer: str, core: str = "0") -> str:
    return opener * levels + core + closer * levels


PROPERTY = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --------------------------------------------------------------- properties


@PROPERTY
@given(st.binary(max_size=512))
def test_arbitrary_bytes(body: bytes) -> None:
    answer(body)


@PROPERTY
@given(st.builds(encode, JSON_VALUES, st.booleans()))
def test_arbitrary_json_values(body: bytes) -> None:
    answer(body)


@PROPERTY
@given(BODIES, st.sampled_from([1, 2]))
def test_json_rpc_shaped_bodies(body: bytes, version: int) -> None:
    answer(body, version)


@settings(PROPERTY, max_examples=50)
@given(BODIES, st.sampled_from(["run_task", "status", "control"]))
def test_per_method_paths(body: bytes, path_method: str) -> None:
    answer(body, 1, path_method)


@PROPERTY
@given(raw_requests() | st.lists(raw_requests(), min_size=1, max_size=3).map(lambda rs: "[" + ",".join(rs) + "]"))
def test_hostile_tokens(text: str) -> None:
    answer(text.encode("utf-8"))


@PROPERTY
@given(st.integers(1, 3_000), st.sampled_from([("[", "]"), ('{"a":', "}")]),
       st.sampled_from(["{}", '{"tool":"echo","prompt":%s}', '{"tool":"echo","prompt":"x","context":{"c":%s}}']))
def test_deep_nesting(levels: int, brackets: tuple[str, str], params: str) -> None:
    answer(nested(levels, *brackets).encode())
    deep = nested(levels, *brackets)
    body = '{"jsonrpc":"2.0","method":"run_task","params":%s,"id":1}' % (params % deep if "%s" in params else params)
    reply = answer(body.encode())
    if "%s" in params and levels + 1 + params.count("{") > MAX_DEPTH:  # the envelope, then the params' objects
        assert reply["error"]["code"] == -32600 and reply["error"]["data"]["max_depth"] == MAX_DEPTH


@PROPERTY
@given(st.builds(encode, requests(st.just("run_task")), st.booleans()), st.sampled_from([1, 2]))
def test_run_task_stores_all_or_nothing(body: bytes, version: int) -> None:
    answer(body, version)  # answer() checks what was stored against the reply


@PROPERTY
@given(st.lists(st.sampled_from(["status", "get_task", "run_task"]), min_size=2, max_size=MAX_BATCH),
       st.lists(st.sampled_from([1, 1.0, "1", 2, None]), min_size=2, max_size=MAX_BATCH))
def test_duplicate_ids_in_a_batch_are_refused_and_not_run(methods: list[str], ids: list[Any]) -> None:
    params = {"run_task": {"tool": "echo", "prompt": "p"}, "get_task": {"task_id": "missing"}, "status": {}}
    batch = [{"jsonrpc": "2.0", "method": m, "params": params[m], "id": i} for m, i in zip(methods, ids)]
    before = len(SYSTEM.tasks.tasks)
    replies = answer(json.dumps(batch).encode())
    assert len(replies) == len(batch)
    unique_run_tasks = 0
    for request, reply in zip(batch, replies):  # replies come in request order
        shared = sum(other["id"] == request["id"] for other in batch) > 1
        assert reply["id"] == request["id"]
        if shared:
            assert reply["error"]["code"] == -32600 and "must be unique" in reply["error"]["data"]["reason"]
        else:
            assert "error" not in reply or reply["error"]["code"] == -32001  # get_task of a missing task
            unique_run_tasks += request["method"] == "run_task"
    assert len(SYSTEM.tasks.tasks) - before == unique_run_tasks


# --------------------------------------------------------------- every hostile token in every field


SWEEP = {  # method, API version, valid params as JSON text members
    ("run_task", 1): {"tool": '"echo"', "prompt": '"x"', "priority": "5", "context": '{"c":1}', "wait": "1",
                      "idempotency_key": '"k"', "agent": '"a"', "children": '[{"tool":"echo","prompt":"c"}]'},
    ("run_task", 2): {"tool": '"echo"', "input": '{"prompt":"x"}', "deadline": '"2999-01-01T00:00:00Z"'},
    ("get_task", 1): {"task_id": '"abc"'},
    ("run_saga", 1): {"workflow": '"code_pipeline"', "input": '{"goal":"g"}', "priority": "5"},
    ("control", 1): {"action": '"dead_letters"', "count": "5"},
}
WRAPPERS = ["{}", "[{}]", '{{"k":{}}}', '[{{"tool":"echo","prompt":{}}}]']


def test_every_hostile_token_in_every_field() -> None:
    """Deterministic sweep: each hostile token, bare or nested, replaces each param of each method in turn."""
    for (method, version), valid in SWEEP.items():
        for name in valid:
            for token in HOSTILE_TOKENS:
                for wrapper in WRAPPERS:
                    params = ",".join(f'"{n}":{wrapper.format(token) if n == name else v}' for n, v in valid.items())
                    body = f'{{"jsonrpc":"2.0","method":"{method}","params":{{{params}}},"id":1}}'.encode()
                    answer(body, version)


# --------------------------------------------------------------- examples: what each hostile input gets


def call(params: Any, method: str = "run_task", version: int = 1) -> dict[str, Any]:
    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": 7}).encode()
    return answer(body, version)


def fields_of(reply: dict[str, Any]) -> dict[str, str]:
    assert reply["id"] == 7 and reply["error"]["code"] == -32602, reply
    return reply["error"]["data"]["fields"]


OUT_OF_RANGE = "number out of range: not a finite double, or an integer of more than 4300 digits"
RUN = '{"jsonrpc":"2.0","method":"run_task","id":7,"params":{"tool":"echo","prompt":"x",%s}}'


@pytest.mark.parametrize(
    ("member", "field"),
    [
        ('"priority":1e400', "params.priority"),
        ('"priority":-1e400', "params.priority"),
        ('"priority":' + "9" * 4_301, "params.priority"),
        ('"wait":1e999', "params.wait"),
        ('"context":{"budget":1e400}', "params.context.budget"),
        ('"context":{"xs":[1,2,' + "1" * 5_000 + "]}", "params.context.xs.2"),
    ],
)
def test_numbers_out_of_range_name_their_field(member: str, field: str) -> None:
    assert fields_of(answer((RUN % member).encode())) == {field: OUT_OF_RANGE}


def test_large_but_representable_numbers_meet_the_field_limits() -> None:
    assert list(fields_of(call({"tool": "echo", "prompt": "x", "priority": 10**100}))) == ["params.priority"]
    reason = fields_of(answer((RUN % ('"priority":' + "9" * 4_300)).encode()))["params.priority"]
    assert reason.startswith("maximum: 999") and len(reason) < 250


def test_non_finite_and_overflowing_ids_are_invalid() -> None:
    reason = '"id" must be a string, a number or null'
    expected = {"code": -32600, "message": "Invalid Request", "data": {"reason": reason}}
    for token in ("1e400", "9" * 5_000):
        reply = answer(f'{{"jsonrpc":"2.0","method":"status","id":{token}}}'.encode())
        assert reply == {"jsonrpc": "2.0", "id": None, "error": expected}


@pytest.mark.parametrize(
    ("member", "field", "reason"),
    [
        ('"prompt":"ok\\ud800"', "params.prompt", "not valid Unicode: lone surrogate at character 2"),
        ('"agent":"\\udc00"', "params.agent", "not valid Unicode: lone surrogate at character 0"),
        ('"context":{"k":["\\udfff"]}', "params.context.k.0", "not valid Unicode: lone surrogate at character 0"),
        ('"context":{"\\ud800":1}', "params.context.\\ud800",
         "member name is not valid Unicode: lone surrogate at character 0"),
    ],
)
def test_lone_surrogates_name_their_field(member: str, field: str, reason: str) -> None:
    body = (RUN % member).replace('"prompt":"x",', "" if '"prompt"' in member else '"prompt":"x",', 1)
    assert fields_of(answer(body.encode())) == {field: reason}


def test_surrogate_pairs_are_text() -> None:
    reply = call({"tool": "echo", "prompt": "\U0001f600", "wait": 1})
    assert reply["result"]["input"] == {"prompt": "\U0001f600"}


def test_repeated_member_names() -> None:
    reply = answer(b'{"jsonrpc":"2.0","method":"status","id":1,"id":2}')
    refused = {"code": -32600, "message": "Invalid Request", "data": {"reason": "repeated members: id"}}
    assert reply == {"jsonrpc": "2.0", "id": None, "error": refused}
    body = '{"jsonrpc":"2.0","method":"run_task","id":7,"params":{"tool":"echo","prompt":"x","prompt":"y"}}'
    assert fields_of(answer(body.encode())) == {"params.prompt": "member name repeated"}


def test_invalid_utf8_and_non_finite_tokens_are_parse_errors() -> None:
    for body in (b'{"jsonrpc":"2.0","method":"status","id":1,"params":["\xed\xa0\x80"]}', b"\xff", b"\xc3"):
        assert answer(body)["error"] == {"code": -32700, "message": "Parse error",
                                         "data": {"reason": "body is not valid UTF-8"}}
    for token in ("NaN", "Infinity", "-Infinity"):
        assert answer((RUN % f'"priority":{token}').encode())["error"]["code"] == -32700


@pytest.mark.parametrize(
    ("params", "field", "reason"),
    [
        ({"tool": "t" * 129, "prompt": "x"}, "params.tool", "maxLength: "),
        ({"tool": "echo", "prompt": "x", "agent": "a" * 129}, "params.agent", "maxLength: "),
        ({"tool": "echo", "prompt": "x", "agent": ""}, "params.agent", "minLength: "),
        ({"tool": "echo", "prompt": "x", "idempotency_key": "k" * 257}, "params.idempotency_key", "maxLength: "),
        ({"tool": "echo", "prompt": "x", "wait": 1e308}, "params.wait", "maximum: "),
        ({"tool": "echo", "prompt": "x", "wait": True}, "params.wait", "type: True is not of type 'number'"),
        ({"tool": "echo", "prompt": "x" * 65}, "params.prompt", "longer than 64 characters"),
        ({"tool": "echo", "prompt": "x", "context": {"c": "x" * 300}}, "params.context", "larger than 256 bytes"),
        ({"tool": "echo", "prompt": "x", "children": [{"tool": "echo", "prompt": "c"}] * 3}, "params.children",
         "more than 2 children"),
        ({"tool": "echo", "prompt": "x", "priority": "10"}, "params.priority", "type: '10' is not of type 'integer'"),
        ({"tool": "echo", "prompt": "x", "priority": 5.0}, "params.priority", "invalid (int_type)"),
        ({"tool": "echo", "prompt": "x", "colour": "red"}, "params.colour", "unknown field"),
    ],
)
def test_limits_and_types_name_their_field(params: dict[str, Any], field: str, reason: str) -> None:
    found = fields_of(call(params))
    assert found[field].startswith(reason), found
    assert len(found[field]) <= 250


def test_a_long_string_is_not_echoed_whole() -> None:
    reply = call({"tool": "x" * 300_000, "prompt": "x"})
    assert len(json.dumps(reply)) < 1_000


def test_child_errors_name_the_child() -> None:
    children = [{"tool": "echo", "prompt": "ok"}, {"tool": "echo", "prompt": "x" * 65, "context": {"steps": "2"}}]
    before = len(SYSTEM.tasks.tasks)
    found = fields_of(call({"tool": "echo", "prompt": "x", "children": children}))
    assert found == {"params.children.1.context.steps": "'2' is not of type 'integer'",
                     "params.children.1.prompt": "longer than 64 characters"}
    assert len(SYSTEM.tasks.tasks) == before  # the valid parent and first child were not stored either


def test_duplicate_ids_in_a_batch() -> None:
    batch = [{"jsonrpc": "2.0", "method": "run_task", "params": {"tool": "echo", "prompt": "a"}, "id": 1},
             {"jsonrpc": "2.0", "method": "run_task", "params": {"tool": "echo", "prompt": "b"}, "id": 1.0},
             {"jsonrpc": "2.0", "method": "run_task", "params": {"tool": "echo", "prompt": "c"}},  # notification
             {"jsonrpc": "2.0", "method": "status", "id": "1"}]  # "1" is not 1
    before = len(SYSTEM.tasks.tasks)
    replies = answer(json.dumps(batch).encode())
    for shown, reply in zip(["1", "1.0"], replies[:2]):  # each names its own spelling of the id
        reason = f"id {shown} is used by 2 requests in this batch; ids must be unique, so none of them was run"
        assert reply == {"jsonrpc": "2.0", "id": 1, "error": {"code": -32600, "message": "Invalid Request",
                                                                "data": {"reason": reason}}}
    assert replies[2]["id"] == "1" and "result" in replies[2]
    assert len(SYSTEM.tasks.tasks) - before == 1  # only the notification ran


@pytest.mark.parametrize("method", ["status", "rpc.discover", "run_task"])
def test_no_reply_carries_a_secret(method: str) -> None:
    params = {"tool": "private", "prompt": "x", "wait": 1} if method == "run_task" else {}
    reply = call(params, method)
    assert "result" in reply  # answer() already checked that neither secret is in it


def test_internal_errors_stay_opaque(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"redis://:{REDIS_PASSWORD}@db failed; key {API_KEY}")

    monkeypatch.setattr(SYSTEM.tasks, "status", boom)
    body = json.dumps({"jsonrpc": "2.0", "method": "status", "id": 7}).encode()
    reply = answer(body, internal_ok=True)  # answer() checks that neither secret nor a traceback is in it
    assert reply["error"] == {"code": -32603, "message": "Internal error"}

