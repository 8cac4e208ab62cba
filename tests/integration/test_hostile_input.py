"""Hostile input over real HTTP: every limit and malformed value gets the right JSON-RPC error naming the field.

Never a 5xx, a hang or a half-written task, and no reply echoes a secret from the settings.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from orchestrator.settings import Settings, ToolSettings
from tests import redis_view
from tests.conftest import Deployed, deployed, make_settings
from tests.integration.test_spine import finished
from tests.support import RedisServer

pytestmark = pytest.mark.integration

API_KEY = "sk-hostile-http-0123456789abcdef"
LIMITS = {"max_body_bytes": 32_768, "max_batch": 10, "max_prompt_chars": 1_000, "max_context_bytes": 2_048,
          "max_children": 2}
OUT_OF_RANGE = "number out of range: not a finite double, or an integer of more than 4300 digits"


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int) -> Iterator[Deployed]:
    """The orchestrator with small limits and a provider whose API key must never be seen on the wire."""
    private = ToolSettings(kind="openai", base_url="http://127.0.0.1:9/v1", model="m", api_key=SecretStr(API_KEY),
                           description="an unreachable provider with a key")
    settings = make_settings(redis_server.url, tools={**Settings().tools, "private": private}, limits=LIMITS,
                             providers={"private": {"max_retries": 0}})
    with deployed(settings, ray_session) as app:
        yield app


def post(app: Deployed, body: Any, path: str = "v1/rpc", **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = httpx.post(f"{app.base_url}/{path}", content=content, headers={"content-type": "application/json"},
                       timeout=60, **kwargs)
    assert reply.status_code < 500, reply.text
    assert "Traceback" not in reply.text and API_KEY not in reply.text, reply.text
    return reply


def run_task(app: Deployed, params: dict[str, Any], path: str = "v1/rpc") -> dict[str, Any]:
    reply = post(app, {"jsonrpc": "2.0", "method": "run_task", "params": params, "id": 1}, path)
    assert reply.status_code == 200
    return reply.json()


def stored(app: Deployed) -> int:
    """Task records in Redis: what a half-written submit would leave behind."""
    client = redis_view.client(app.settings)
    try:
        return redis_view.task_keys(client, app.settings)
    finally:
        client.close()


def fields(reply: dict[str, Any]) -> dict[str, str]:
    assert reply["id"] == 1 and reply["error"]["code"] == -32602, reply
    assert reply["error"]["message"] == "Invalid params"
    return reply["error"]["data"]["fields"]


# --- the body, batches and nesting


def test_body_larger_than_the_limit(system: Deployed) -> None:
    limit = LIMITS["max_body_bytes"]
    expected = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Invalid Request",
                                                       "data": {"reason": f"body larger than {limit} bytes"}}}
    declared = post(system, b" " * (limit + 1))
    assert declared.status_code == 413 and declared.json() == expected

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(limit // 1024 + 2):
            yield b" " * 1024

    streamed = httpx.post(f"{system.base_url}/v1/rpc", content=chunks(), timeout=60)
    assert streamed.status_code == 413 and streamed.json() == expected
    assert post(system, {"jsonrpc": "2.0", "method": "status", "id": 1}).json()["result"]["tools"]


def test_batch_longer_than_the_limit(system: Deployed) -> None:
    batch = [{"jsonrpc": "2.0", "method": "run_task", "params": {"tool": "echo", "prompt": "b"}, "id": i}
             for i in range(LIMITS["max_batch"] + 1)]
    before = stored(system)
    reply = post(system, batch).json()
    assert reply["id"] is None and reply["error"]["code"] == -32600
    assert reply["error"]["data"] == {"reason": "batch of 11 requests exceeds the limit of 10", "max_batch": 10}
    assert stored(system) == before


@pytest.mark.parametrize("levels", [40, 10_000])
def test_nesting_deeper_than_the_limit(system: Deployed, levels: int) -> None:
    deep = "[" * levels + "]" * levels
    body = '{"jsonrpc":"2.0","method":"run_task","id":1,"params":{"tool":"echo","prompt":"x","context":{"c":%s}}}'
    reply = post(system, (body % deep).encode()).json()
    assert reply["id"] is None and reply["error"]["data"]["max_depth"] == 32
    assert reply["error"]["code"] == -32600


def test_duplicate_ids_in_a_batch_are_refused_and_not_run(system: Deployed) -> None:
    batch = [
        {"jsonrpc": "2.0", "method": "run_task", "params": {"tool": "echo", "prompt": "first"}, "id": "dup"},
        {"jsonrpc": "2.0", "method": "run_task", "params": {"tool": "echo", "prompt": "second"}, "id": "dup"},
        {"jsonrpc": "2.0", "method": "run_task", "params": {"tool": "echo", "prompt": "alone"}, "id": "ok"},
    ]
    before = stored(system)
    replies = post(system, batch).json()
    reason = 'id "dup" is used by 2 requests in this batch; ids must be unique, so none of them was run'
    refused = {"code": -32600, "message": "Invalid Request", "data": {"reason": reason}}
    assert replies[:2] == [{"jsonrpc": "2.0", "id": "dup", "error": refused}] * 2
    assert replies[2]["id"] == "ok" and replies[2]["result"]["status"] == "queued"
    assert stored(system) == before + 1  # only "alone" was accepted
    assert finished(system.base_url, replies[2]["result"]["task_id"])["result"]["text"] == "alone"


# --- tokens and encodings


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"jsonrpc":"2.0","method":"run_task","id":1,"params":{"tool":"echo","prompt":"\xff"}}',
         "body is not valid UTF-8"),
        (b'{"jsonrpc":"2.0","method":"run_task","id":1,"params":{"tool":"echo","prompt":"\xed\xa0\x80"}}',
         "body is not valid UTF-8"),  # a surrogate encoded as UTF-8 bytes (CESU-8) is not UTF-8
        (b'{"jsonrpc":"2.0","method":"run_task","id":1,"params":{"tool":"echo","prompt":"x","priority":NaN}}',
         "NaN is not valid JSON"),
        (b'{"jsonrpc":"2.0","method":"run_task","id":1,"params":{"tool":"echo","prompt":"x","wait":-Infinity}}',
         "-Infinity is not valid JSON"),
    ],
)
def test_parse_errors(system: Deployed, body: bytes, reason: str) -> None:
    reply = post(system, body).json()
    assert reply == {"jsonrpc": "2.0", "id": None,
                     "error": {"code": -32700, "message": "Parse error", "data": {"reason": reason}}}


RUN = '{"jsonrpc":"2.0","method":"run_task","id":1,"params":{"tool":"echo",%s}}'


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        ('"prompt":"x","priority":1e400', {"params.priority": OUT_OF_RANGE}),
        ('"prompt":"x","priority":' + "9" * 5_000, {"params.priority": OUT_OF_RANGE}),
        ('"prompt":"x","context":{"budget":-1e999}', {"params.context.budget": OUT_OF_RANGE}),
        ('"prompt":"x\\ud800"', {"params.prompt": "not valid Unicode: lone surrogate at character 1"}),
        ('"prompt":"x","agent":"\\udfff"', {"params.agent": "not valid Unicode: lone surrogate at character 0"}),
        ('"prompt":"x","prompt":"y"', {"params.prompt": "member name repeated"}),
    ],
)
def test_unrepresentable_values_name_their_field(system: Deployed, members: str, expected: dict[str, str]) -> None:
    before = stored(system)
    assert fields(post(system, (RUN % members).encode()).json()) == expected
    assert stored(system) == before


def test_a_huge_but_representable_number_meets_the_range(system: Deployed) -> None:
    reason = fields(run_task(system, {"tool": "echo", "prompt": "x", "priority": 10**100}))["params.priority"]
    assert reason.startswith("maximum: 1000") and reason.endswith("is greater than the maximum of 10")


def test_surrogate_pairs_are_ordinary_text(system: Deployed) -> None:
    reply = post(system, (RUN % '"prompt":"\\ud83d\\ude00","wait":30').encode()).json()
    assert reply["result"]["status"] == "succeeded" and reply["result"]["result"]["text"] == "\U0001f600"


# --- lengths, sizes, counts, types


@pytest.mark.parametrize(
    ("params", "field", "reason"),
    [
        ({"tool": "t" * 129, "prompt": "x"}, "params.tool", "maxLength: "),
        ({"tool": "echo", "prompt": "x" * 1_001}, "params.prompt", "longer than 1000 characters"),
        ({"tool": "echo", "prompt": "x", "agent": "a" * 129}, "params.agent", "maxLength: "),
        ({"tool": "echo", "prompt": "x", "idempotency_key": "k" * 257}, "params.idempotency_key", "maxLength: "),
        ({"tool": "echo", "prompt": "x", "context": {"notes": "n" * 3_000}}, "params.context",
         "larger than 2048 bytes"),
        ({"tool": "echo", "prompt": "x", "children": [{"tool": "echo", "prompt": "c"}] * 3}, "params.children",
         "more than 2 children"),
        ({"tool": "echo", "prompt": "x", "priority": "9"}, "params.priority", "type: '9' is not of type 'integer'"),
        ({"tool": "echo", "prompt": "x", "wait": True}, "params.wait", "type: True is not of type 'number'"),
        ({"tool": "echo", "prompt": "x", "colour": "red"}, "params.colour", "unknown field"),
    ],
)
def test_limits_and_types_name_their_field(system: Deployed, params: dict[str, Any], field: str, reason: str) -> None:
    before = stored(system)
    found = fields(run_task(system, params))
    assert found[field].startswith(reason), found
    assert len(json.dumps(found)) < 1_000  # a long value is quoted short, never whole
    assert stored(system) == before


def test_v2_input_limits(system: Deployed) -> None:
    found = fields(run_task(system, {"tool": "echo", "input": {"prompt": "x", "pad": "p" * 3_000}}, "v2/rpc"))
    assert found["params.input"] == "larger than 2048 bytes"


def test_an_invalid_child_refuses_the_whole_task(system: Deployed) -> None:
    children = [{"tool": "echo", "prompt": "fine"}, {"tool": "echo", "prompt": "x" * 1_001}]
    before = stored(system)
    found = fields(run_task(system, {"tool": "echo", "prompt": "parent", "children": children}))
    assert found == {"params.children.1.prompt": "longer than 1000 characters"}
    assert stored(system) == before  # neither the parent nor the valid child was written


# --- the events endpoint


@pytest.mark.parametrize("task_id", ["x" * 65, "%ED%A0%80", "..%2F..%2Fetc", "a%00b"])
def test_event_streams_of_hostile_ids_are_not_found(system: Deployed, task_id: str) -> None:
    reply = httpx.get(f"{system.base_url}/v1/tasks/{task_id}/events", timeout=30)
    assert reply.status_code == 404, reply.text  # a decoded "/" leaves the route: FastAPI's own 404
    assert reply.json().get("error", {"code": -32001})["code"] == -32001


def test_a_hostile_last_event_id_is_refused(system: Deployed) -> None:
    reply = httpx.get(f"{system.base_url}/v1/tasks/anything/events", headers={"last-event-id": "0; DROP"}, timeout=30)
    assert reply.status_code == 400
    assert reply.json()["error"]["data"]["fields"] == {
        "Last-Event-ID": "must be an event id from this stream, like 7"}


# --- secrets


def test_no_reply_shows_the_api_key(system: Deployed) -> None:
    for method in ("status", "rpc.discover"):
        assert "result" in post(system, {"jsonrpc": "2.0", "method": method, "id": 1}).json()
    assert API_KEY not in httpx.get(f"{system.base_url}/openapi.json", timeout=30).text
    accepted = run_task(system, {"tool": "private", "prompt": "leak?"})["result"]
    record = finished(system.base_url, accepted["task_id"], timeout_s=60)
    assert record["status"] == "failed" and record["error"]["message"]
    assert API_KEY not in json.dumps(record)
    events = httpx.get(f"{system.base_url}/v1/tasks/{accepted['task_id']}/events", timeout=30)
    assert events.status_code == 200 and API_KEY not in events.text
