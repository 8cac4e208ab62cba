"""The MCP face at /mcp with the official Python MCP client over real HTTP, against two ingress replicas:
the handshake and server/discover, tools with the JSON-RPC schemas, progress while run_task waits,
errors naming the field, task and saga round trips, and sessions any replica serves."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import mcp_types
import pytest
from mcp import Client

from deployments.fake_provider import FakeProviderConfig
from orchestrator.models import RunTaskParamsV2
from tests.conftest import Deployed, deployed, make_settings
from tests.fakeprovider import RunningFakeProvider, fake_provider
from tests.integration.test_spine import result, rpc
from tests.support import RedisServer, eventually

pytestmark = pytest.mark.integration

TOOLS = {"run_task", "get_task", "cancel_task", "provide_input", "rerun_task", "status", "run_saga", "get_saga", "cancel_saga",
         "rerun_saga", "list_workflows", "create_schedule", "get_schedule", "list_schedules", "pause_schedule",
         "resume_schedule", "delete_schedule", "list_tasks", "list_sagas"}
HELLO = {"name": "hello", "steps": [
    {"name": "greet", "tool": "echo", "input": {"prompt": "hello {{ input.who }}"}},
    {"name": "answer", "tool": "echo", "input": {"prompt": "{{ steps.greet.output.text }}, again"}},
]}
ACCEPT = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                         "clientInfo": {"name": "test", "version": "1"}}}


@pytest.fixture(scope="module")
def provider() -> Iterator[RunningFakeProvider]:
    # A slow stream of 40 tokens: the tool reports what arrived about every 0.1 s.
    with fake_provider(FakeProviderConfig(reply_tokens=40, latency_ms=1500, latency_distribution="fixed")) as running:
        yield running


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int, provider: RunningFakeProvider) -> Iterator[Deployed]:
    llm = {"kind": "openai", "base_url": provider.base_url, "model": "fake-model", "timeout_s": 10}
    settings = make_settings(redis_server.url, http={"replicas": 2}, workflows={"hello": HELLO},
                             tools={"llm": llm})
    with deployed(settings, ray_session) as running:
        yield running


def mcp_url(system: Deployed) -> str:
    return f"{system.base_url}/mcp"


async def call(system: Deployed, tool: str, arguments: dict[str, Any], mode: str = "legacy") -> Any:
    async with Client(mcp_url(system), mode=mode) as client:
        return await client.call_tool(tool, arguments)


def text_of(answer: mcp_types.CallToolResult) -> str:
    [content] = answer.content
    assert isinstance(content, mcp_types.TextContent)
    return content.text


def normalized(schema: Any) -> Any:
    """A schema with OpenRPC's component references written as JSON Schema `$defs` references."""
    return json.loads(json.dumps(schema).replace("#/components/schemas/", "#/$defs/"))


async def test_initialize_lists_the_tools_with_the_json_rpc_params_schemas(system: Deployed) -> None:
    async with Client(mcp_url(system), mode="legacy") as client:
        assert client.protocol_version == "2025-11-25"
        assert client.server_info is not None and client.server_info.name == "mcp-orchestrator"
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    management = {name for name, tool in tools.items() if tool.execution and tool.execution.task_support == "forbidden"}
    assert TOOLS <= management <= TOOLS | {"analytics"}
    assert {"echo", "llm", "hello", "code_pipeline"} <= set(tools)  # every tool and workflow too
    assert all(tool.description for tool in tools.values())
    assert tools["run_task"].input_schema == RunTaskParamsV2.model_json_schema()
    openrpc = result(system.base_url, "rpc.discover", path="v2/rpc")
    components = openrpc["components"]["schemas"]
    for method in openrpc["methods"]:
        if method["name"] not in tools:
            continue
        schema = tools[method["name"]].input_schema
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        assert schema.get("properties", {}) == normalized({p["name"]: p["schema"] for p in method["params"]})
        assert set(schema.get("required", [])) == {p["name"] for p in method["params"] if p["required"]}
        for name, definition in schema.get("$defs", {}).items():
            assert definition == normalized(components[name])


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_run_task_with_wait_reports_progress_then_answers_the_record(system: Deployed, mode: str) -> None:
    reports: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reports.append((progress, total, message))

    arguments = {"tool": "echo", "input": {"prompt": f"hi over {mode}", "delay_ms": 900, "steps": 3}, "wait": 30}
    async with Client(mcp_url(system), mode=mode) as client:
        answer = await client.call_tool("run_task", arguments, progress_callback=on_progress)
    assert not answer.is_error, answer.content
    record = answer.structured_content
    assert record["status"] == "succeeded" and record["result"] == {"text": f"hi over {mode}", "steps": 3}
    assert json.loads(text_of(answer)) == record
    assert record == result(system.base_url, "get_task", {"task_id": record["task_id"]}, path="v2/rpc")
    messages = [message for _, _, message in reports]
    assert messages[0] == "queued {\"priority\":5}"
    assert [m for m in messages if m and m.startswith("step ")] == ["step 1/3", "step 2/3", "step 3/3"]
    assert messages[-1] == "succeeded"
    values = [progress for progress, _, _ in reports]
    assert values == sorted(set(values))  # strictly increasing, as the protocol demands


async def test_partial_llm_output_arrives_as_progress_messages(system: Deployed) -> None:
    messages: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message)

    async with Client(mcp_url(system), mode="legacy") as client:
        answer = await client.call_tool("run_task", {"tool": "llm", "input": {"prompt": "count"}, "wait": 30},
                                        progress_callback=on_progress)
    assert answer.structured_content["status"] == "succeeded", answer.content
    text = answer.structured_content["result"]["text"]
    assert messages[-1] == "succeeded" and str(messages[1]).startswith("running")
    partial = messages[2:-1]
    assert len(partial) >= 2  # the reply arrived in pieces, each as it came
    assert "".join(str(piece) for piece in partial) == text


async def test_run_task_wait_shorter_than_the_task_answers_its_id(system: Deployed) -> None:
    reports: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reports.append(message)

    arguments = {"tool": "echo", "input": {"prompt": "slow", "delay_ms": 20_000, "steps": 20}, "wait": 0.5}
    async with Client(mcp_url(system), mode="legacy") as client:
        answer = await client.call_tool("run_task", arguments, progress_callback=on_progress)
        assert not answer.is_error, answer.content
        assert set(answer.structured_content) == {"task_id", "status", "duplicate"}
        assert answer.structured_content["status"] in ("queued", "running")
        assert reports and str(reports[0]).startswith("queued")
        cancelled = await client.call_tool("cancel_task", {"task_id": answer.structured_content["task_id"]})
    assert not cancelled.is_error and cancelled.structured_content["status"] in ("cancelled", "running")


async def test_bad_params_are_a_tool_error_naming_the_fields(system: Deployed) -> None:
    arguments = {"tool": "echo", "input": {"prompt": "x", "steps": 0, "colour": "red"}, "wait": 5}
    answer = await call(system, "run_task", arguments)
    assert answer.is_error
    error = answer.structured_content["error"]
    assert error == rpc(system.base_url, "run_task", arguments, path="v2/rpc")["error"]
    assert error["code"] == -32602
    assert set(error["data"]["fields"]) == {"params.input.steps", "params.input.colour"}
    text = text_of(answer)
    assert "-32602" in text and "params.input.colour: unknown field" in text and "params.input.steps" in text
    bad_wait = await call(system, "run_task", {"tool": "echo", "input": {"prompt": "x"}, "wait": -1})
    assert bad_wait.is_error and "params.wait" in bad_wait.structured_content["error"]["data"]["fields"]


async def test_get_task_and_status_answer_as_the_json_rpc_face(system: Deployed) -> None:
    async with Client(mcp_url(system), mode="legacy") as client:
        submitted = await client.call_tool("run_task", {"tool": "echo", "input": {"prompt": "later"}})
        assert not submitted.is_error and submitted.structured_content["status"] == "queued"
        task_id = submitted.structured_content["task_id"]
        record: dict[str, Any] = {}

        async def succeeded() -> bool:
            answer = await client.call_tool("get_task", {"task_id": task_id})
            record.update(answer.structured_content)
            return record["status"] == "succeeded"

        await eventually(succeeded, 30, "the task to succeed")
        assert record == result(system.base_url, "get_task", {"task_id": task_id}, path="v2/rpc")
        status = await client.call_tool("status", {})
        missing = await client.call_tool("get_task", {"task_id": "no-such-task"})
    assert not status.is_error and "echo" in {tool["name"] for tool in status.structured_content["tools"]}
    assert missing.is_error and missing.structured_content["error"]["code"] == -32001
    assert "not found" in text_of(missing)


async def test_saga_round_trip(system: Deployed) -> None:
    async with Client(mcp_url(system), mode="legacy") as client:
        workflows = await client.call_tool("list_workflows", {})
        assert "hello" in {w["name"] for w in workflows.structured_content["result"]}
        started = await client.call_tool("run_saga", {"workflow": "hello", "input": {"who": "mcp"}})
        assert not started.is_error, started.content
        saga_id = started.structured_content["saga_id"]
        state: dict[str, Any] = {}

        async def settled() -> bool:
            answer = await client.call_tool("get_saga", {"saga_id": saga_id})
            state.update(answer.structured_content)
            return state["status"] in ("succeeded", "failed", "cancelled")

        await eventually(settled, 60, "the saga to settle")
    assert state["status"] == "succeeded"
    outputs = {step["name"]: step["output"] for step in state["steps"]}
    assert outputs["answer"]["text"] == "hello mcp, again"
    assert state == result(system.base_url, "get_saga", {"saga_id": saga_id}, path="v2/rpc")


async def test_server_discover_path(system: Deployed) -> None:
    async with Client(mcp_url(system)) as client:  # mode "auto": probes server/discover first
        assert client.protocol_version == "2026-07-28"
        names = {tool.name for tool in (await client.list_tools()).tools}
        answer = await client.call_tool("run_task", {"tool": "echo", "input": {"prompt": "modern"}, "wait": 30})
    assert TOOLS <= names
    assert answer.structured_content["result"] == {"text": "modern", "steps": 1}


async def test_a_session_holds_across_requests_on_two_replicas_until_it_is_ended(system: Deployed) -> None:
    url = mcp_url(system)
    async with httpx.AsyncClient(timeout=30) as http:
        opened = await http.post(url, json=INITIALIZE, headers=ACCEPT)
        assert opened.status_code == 200
        session = {**ACCEPT, "mcp-session-id": opened.headers["mcp-session-id"]}
        await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        replies = await asyncio.gather(*(http.post(url, json=listing, headers=session) for _ in range(10)))
        assert [r.status_code for r in replies] == [200] * 10  # two replicas: both see the session
        assert all('"run_task"' in r.text for r in replies)
        assert (await http.get(url, headers=session)).status_code == 405  # no server-initiated stream
        assert (await http.delete(url, headers=session)).status_code == 200
        ended = await asyncio.gather(*(http.post(url, json=listing, headers=session) for _ in range(4)))
        assert [r.status_code for r in ended] == [404] * 4
        unknown = await http.post(url, json=listing, headers={**ACCEPT, "mcp-session-id": "f" * 32})
        assert unknown.status_code == 404 and unknown.json()["error"]["message"] == "Session not found"


async def test_foreign_host_or_origin_is_refused(system: Deployed) -> None:
    url = mcp_url(system)
    async with httpx.AsyncClient(timeout=30) as http:
        rebound = await http.post(url, json=INITIALIZE, headers={**ACCEPT, "host": "evil.example.com"})
        foreign = await http.post(url, json=INITIALIZE, headers={**ACCEPT, "origin": "http://evil.example.com"})
        local = await http.post(url, json=INITIALIZE, headers={**ACCEPT, "origin": "http://localhost:3000"})
    assert (rebound.status_code, foreign.status_code, local.status_code) == (421, 403, 200)


def test_existing_routes_still_answer(system: Deployed) -> None:
    assert httpx.get(f"{system.base_url}/healthz", timeout=30).json()["status"] == "ok"
    paths = httpx.get(f"{system.base_url}/openapi.json", timeout=30).json()["paths"]
    assert {"/v1/rpc", "/v2/rpc", "/mcp", "/healthz"} <= set(paths)
