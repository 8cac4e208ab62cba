"""The JSON-RPC faces over real HTTP: v1 and v2, per-method paths, batches, notifications, limits, discovery."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jsonschema
import pytest

from tests.conftest import Deployed
from tests.integration.test_spine import finished, result, rpc

pytestmark = pytest.mark.integration


def post(base_url: str, path: str, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{base_url}/{path}", content=content, headers={"content-type": "application/json"},
                      timeout=60)


def test_v2_run_task_validates_input_against_the_tool_schema(orchestrator: Deployed) -> None:
    record = result(orchestrator.base_url, "run_task",
                    {"tool": "echo", "input": {"prompt": "v2", "steps": 2}, "wait": 30}, path="v2/rpc")
    assert record["status"] == "succeeded" and record["result"] == {"text": "v2", "steps": 2}
    bad = rpc(orchestrator.base_url, "run_task",
              {"tool": "echo", "input": {"prompt": "v2", "steps": 0, "colour": "red"}}, path="v2/rpc")
    assert bad["error"]["code"] == -32602
    fields = bad["error"]["data"]["fields"]
    assert set(fields) == {"params.input.steps", "params.input.colour"}
    assert fields["params.input.colour"] == "unknown field"
    missing = rpc(orchestrator.base_url, "run_task", {"tool": "echo", "input": {}}, path="v2/rpc")
    assert missing["error"]["data"]["fields"] == {"params.input.prompt": "required"}


def test_v2_deadline(orchestrator: Deployed) -> None:
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    record = result(orchestrator.base_url, "run_task",
                    {"tool": "echo", "input": {"prompt": "late"}, "deadline": past, "wait": 30}, path="v2/rpc")
    assert record["status"] == "failed" and "deadline" in record["error"]["message"]
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    record = result(orchestrator.base_url, "run_task",
                    {"tool": "echo", "input": {"prompt": "slow", "delay_ms": 30_000, "steps": 30},
                     "deadline": soon, "wait": 30}, path="v2/rpc")
    assert record["status"] == "failed" and "deadline exceeded" in record["error"]["message"]
    naive = rpc(orchestrator.base_url, "run_task",
                {"tool": "echo", "input": {"prompt": "x"}, "deadline": "2030-01-01T00:00:00"}, path="v2/rpc")
    assert naive["error"]["code"] == -32602 and "params.deadline" in naive["error"]["data"]["fields"]


def test_unknown_tool_names_the_known_ones(orchestrator: Deployed) -> None:
    reply = rpc(orchestrator.base_url, "run_task", {"tool": "gpt-17", "input": {"prompt": "x"}}, path="v2/rpc")
    assert reply["error"]["code"] == -32602
    message = reply["error"]["data"]["fields"]["params.tool"]
    assert message.startswith("unknown tool 'gpt-17'; known tools: ")
    assert {"echo", "deepseek", "perplexity", "autotune"} <= set(message.split(": ", 1)[1].split(", "))


def test_v1_keeps_its_shape_and_rejects_v2_params(orchestrator: Deployed) -> None:
    reply = rpc(orchestrator.base_url, "run_task", {"tool": "echo", "input": {"prompt": "x"}})
    assert reply["error"]["code"] == -32602
    assert reply["error"]["data"]["fields"]["params.input"] == "unknown field"
    assert reply["error"]["data"]["fields"]["params.prompt"] == "required"


def test_v1_context_options_are_checked(orchestrator: Deployed) -> None:
    reply = rpc(orchestrator.base_url, "run_task", {"tool": "echo", "prompt": "x", "context": {"delay_ms": "slow"}})
    assert reply["error"]["code"] == -32602
    assert list(reply["error"]["data"]["fields"]) == ["params.context.delay_ms"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"tool": "echo", "prompt": "x", "priority": 11}, "params.priority"),
        ({"tool": "echo", "prompt": "x", "priority": "high"}, "params.priority"),
        ({"tool": "echo", "prompt": 5}, "params.prompt"),
        ({"tool": "nope", "prompt": "x"}, "params.tool"),
        ({"tool": "echo", "prompt": "x", "wait": -1}, "params.wait"),
        ({"tool": "echo", "prompt": "x", "context": []}, "params.context"),
        ({"tool": "echo", "prompt": "x", "surprise": 1}, "params.surprise"),
    ],
)
def test_bad_params_name_the_field(orchestrator: Deployed, params: dict[str, Any], field: str) -> None:
    reply = rpc(orchestrator.base_url, "run_task", params)
    assert reply["error"]["code"] == -32602, reply
    assert field in reply["error"]["data"]["fields"]


def test_unknown_tool_lists_the_known_ones(orchestrator: Deployed) -> None:
    reply = rpc(orchestrator.base_url, "run_task", {"tool": "DeepSeekX", "prompt": "x"})
    reason = reply["error"]["data"]["fields"]["params.tool"]
    assert "echo" in reason and "deepseek" in reason and "perplexity" in reason


def test_per_method_paths_require_their_method(orchestrator: Deployed) -> None:
    reply = post(orchestrator.base_url, "v1/run_task",
                 {"jsonrpc": "2.0", "method": "status", "id": 1}).json()
    assert reply["error"]["code"] == -32601 and reply["error"]["data"]["expected"] == "run_task"
    ok = post(orchestrator.base_url, "v1/run_task",
              {"jsonrpc": "2.0", "method": "run_task", "id": 2, "params": {"tool": "echo", "prompt": "p"}}).json()
    assert ok["result"]["status"] == "queued"
    finished(orchestrator.base_url, ok["result"]["task_id"])


def test_batch_with_valid_invalid_and_notification_members(orchestrator: Deployed) -> None:
    batch = [
        {"jsonrpc": "2.0", "method": "run_task", "params": {"tool": "echo", "prompt": "a"}, "id": "a"},
        {"jsonrpc": "2.0", "method": "run_task", "params": {"tool": "echo", "prompt": "note"}},  # notification
        {"jsonrpc": "2.0", "method": "no_such_method", "id": 7},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "get_task", "params": ["missing"], "id": None},
    ]
    replies = post(orchestrator.base_url, "v1/rpc", batch).json()
    assert [r["id"] for r in replies] == ["a", 7, None, None]
    assert replies[0]["result"]["status"] == "queued"
    assert replies[1]["error"]["code"] == -32601
    assert replies[2]["error"]["code"] == -32600
    assert replies[3]["error"]["code"] == -32001
    finished(orchestrator.base_url, replies[0]["result"]["task_id"])


def test_notifications_get_no_body(orchestrator: Deployed) -> None:
    single = post(orchestrator.base_url, "v1/rpc", {"jsonrpc": "2.0", "method": "status"})
    assert single.status_code == 204 and single.content == b""
    batch = post(orchestrator.base_url, "v1/rpc", [{"jsonrpc": "2.0", "method": "status"}] * 2)
    assert batch.status_code == 204 and batch.content == b""


def test_protocol_errors_over_http(orchestrator: Deployed) -> None:
    assert post(orchestrator.base_url, "v1/rpc", b'{"jsonrpc": "2.0", "method"').json()["error"]["code"] == -32700
    assert post(orchestrator.base_url, "v1/rpc", b"\xff\xfe").json()["error"]["code"] == -32700
    assert post(orchestrator.base_url, "v1/rpc", []).json()["error"]["code"] == -32600
    too_many = [{"jsonrpc": "2.0", "method": "status", "id": i} for i in range(101)]
    reply = post(orchestrator.base_url, "v1/rpc", too_many).json()
    assert reply["error"]["code"] == -32600 and reply["error"]["data"]["max_batch"] == 100


def test_limits_on_body_and_prompt(orchestrator: Deployed) -> None:
    limits = orchestrator.settings.limits
    huge = {"jsonrpc": "2.0", "method": "run_task", "id": 1,
            "params": {"tool": "echo", "prompt": "x" * (limits.max_body_bytes + 1)}}
    reply = post(orchestrator.base_url, "v1/rpc", huge)
    assert reply.status_code == 413 and reply.json()["error"]["code"] == -32600
    long_prompt = rpc(orchestrator.base_url, "run_task", {"tool": "echo", "prompt": "x" * (limits.max_prompt_chars + 1)})
    assert long_prompt["error"]["data"]["fields"] == {"params.prompt": f"longer than {limits.max_prompt_chars} characters"}


def test_rpc_discover_publishes_the_enforced_schemas(orchestrator: Deployed) -> None:
    for version in (1, 2):
        doc = result(orchestrator.base_url, "rpc.discover", path=f"v{version}/rpc")
        assert doc["openrpc"].startswith("1.")
        methods = {m["name"]: m for m in doc["methods"]}
        assert {"run_task", "get_task", "cancel_task", "status", "rpc.discover"} <= set(methods)
        tools = {t["name"]: t for t in doc["x-tools"]}
        assert tools["echo"]["input_schema"]["required"] == ["prompt"]
        assert tools["autotune"]["kind"] == "ml" and "dataset" in tools["autotune"]["input_schema"]["properties"]
        params = {p["name"]: p for p in methods["run_task"]["params"]}
        assert ("input" in params) == (version == 2) and "prompt" in params  # v2: the shorthand for input.prompt
        assert params["prompt"]["required"] == (version == 1)
        # Assemble the published params schema and check it agrees with the server on good and bad params.
        schema = {"type": "object", "additionalProperties": False,
                  "properties": {name: p["schema"] for name, p in params.items()},
                  "required": [name for name, p in params.items() if p["required"]],
                  "components": doc["components"]}
        good = {"tool": "echo", "prompt": "x"} if version == 1 else {"tool": "echo", "input": {"prompt": "x"}}
        jsonschema.validate(good, schema)
        bad = {**good, "priority": 42}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
        assert rpc(orchestrator.base_url, "run_task", bad, path=f"v{version}/rpc")["error"]["code"] == -32602
