"""Every registered tool and workflow as an MCP tool, with the official Python client over real HTTP and API keys:
tools/list (schemas, execution.taskSupport, the clash rule, what a read-only key sees), a call running its task to
completion with progress, a tool's error, `_meta` priority and idempotency key, a workflow's saga, a cancelled call;
the Tasks extension (a client that opts in gets a task, polls and cancels it); and the `prompt` shorthand of
run_task over MCP and v2 (v1 as it was)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import httpx
import httpx2
import mcp_types
import pytest
from mcp import Client
from mcp.client.extension import ClientExtension, ResultClaim
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from pydantic import ConfigDict, Field, TypeAdapter

from deployments.fake_provider import FakeProviderConfig
from orchestrator.auth import hash_key, new_key
from orchestrator.errors import ToolError
from orchestrator.mcp_tools import IDEMPOTENCY_KEY, PRIORITY, TASK_ID, TASKS
from orchestrator.naming import router_name
from orchestrator.tools import registry
from tests.conftest import Deployed, deployed, make_settings
from tests.fakeprovider import RunningFakeProvider, fake_provider
from tests.faults.load import actor_pid
from tests.faults.test_ingress_crash import replica_name, replica_pid
from tests.mcp_server import stdio_command, stdio_env
from tests.support import RedisServer, eventually, wait_until

pytestmark = pytest.mark.integration

KEYS = {"member": ["submit", "read"], "writer": ["submit"], "reader": ["read"]}  # all of tenant acme
STRANGER = "stranger"  # of tenant globex
TOKENS = {name: new_key() for name in [*KEYS, "stranger"]}
MANAGEMENT = {"run_task", "get_task", "cancel_task", "status", "analytics", "run_saga", "get_saga", "list_workflows",
              "list_tasks", "list_sagas"}
READ_ONLY = {"get_task", "status", "analytics", "get_saga", "list_workflows", "get_schedule", "list_schedules",
             "list_tasks", "list_sagas"}
APPROVED = {"name": "approved", "steps": [
    {"name": "build", "tool": "echo", "input": {"prompt": "built {{ input.what }}"}},
    {"name": "deploy", "tool": "echo", "input": {"prompt": "deployed {{ steps.build.output.text }}"},
     "approval": {"message": "Deploy {{ input.what }}?", "when": "{{ input.require_approval }}"}},
]}
ASK = {"key": "name", "message": "Who are you?", "schema": {"type": "object", "properties": {"name": {"type": "string"}},
                                                             "required": ["name"]}}
HELLO = {"name": "hello", "steps": [
    {"name": "greet", "tool": "echo", "input": {"prompt": "hi {{ input.who }}"}},
    {"name": "answer", "tool": "echo", "input": {"prompt": "{{ steps.greet.output.text }}, again"}},
]}
# Clashes: a tool named like a management tool, a workflow named like a tool.
CLASHING_WORKFLOW = {"name": "echo", "steps": [{"name": "only", "tool": "echo", "input": {"prompt": "from the saga"}}]}


def refuse(tool_input: dict[str, Any]) -> None:
    raise ToolError(f"refused: {tool_input.get('why', 'no reason')}")


class CreateTaskResult(mcp_types.Result):
    """What a tools/call answers when the server made a task of it (the Tasks extension)."""

    model_config = ConfigDict(extra="allow")
    result_type: Literal["task"] = Field(alias="resultType")
    task_id: str = Field(alias="taskId")
    status: str


class TaskParams(mcp_types.RequestParams):
    task_id: str = Field(alias="taskId")


class GetTask(mcp_types.Request[TaskParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    name_param = "taskId"  # the extension's routing header, Mcp-Name


class CancelTask(mcp_types.Request[TaskParams, Literal["tasks/cancel"]]):
    method: Literal["tasks/cancel"] = "tasks/cancel"
    name_param = "taskId"


class UpdateParams(TaskParams):
    input_responses: dict[str, Any] = Field(alias="inputResponses")


class UpdateTask(mcp_types.Request[UpdateParams, Literal["tasks/update"]]):
    method: Literal["tasks/update"] = "tasks/update"
    name_param = "taskId"


class Tasks(ClientExtension):
    """Opts into the Tasks extension: the server may answer a call with a task, which the test polls itself."""

    identifier = TASKS

    def claims(self) -> list[ResultClaim[Any]]:
        async def unused(result: CreateTaskResult, ctx: Any) -> mcp_types.CallToolResult:
            raise AssertionError("the tests take the task with allow_claimed")
        return [ResultClaim(result_type="task", model=CreateTaskResult, resolve=unused)]


ANSWER = TypeAdapter(dict[str, Any])


@pytest.fixture(scope="module")
def provider() -> Iterator[RunningFakeProvider]:
    with fake_provider(FakeProviderConfig(reply_tokens=20, latency_ms=600, latency_distribution="fixed")) as running:
        yield running


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int, provider: RunningFakeProvider) -> Iterator[Deployed]:
    keys = {name: {"hash": hash_key(TOKENS[name]), "tenant": "acme", "scopes": scopes} for name, scopes in KEYS.items()}
    keys[STRANGER] = {"hash": hash_key(TOKENS[STRANGER]), "tenant": "globex", "scopes": ["submit", "read"]}
    tools = {
        "echo": {"priority": 3},  # its default priority
        "llm": {"kind": "openai", "base_url": provider.base_url, "model": "fake-model", "timeout_s": 10,
                "description": "A fake LLM."},
        "refuse": {"kind": "python", "function": f"{__name__}:refuse", "description": "Always fails."},
        "status": {"kind": "echo", "description": "An echo named like a management tool."},
    }
    calc = {"command": stdio_command(), "env": stdio_env(), "import_tools": True, "tool_prefix": "calc."}
    settings = make_settings(redis_server.url, auth={"keys": keys}, tools=tools, mcp_servers={"calc": calc},
                             workflows={"hello": HELLO, "echo": CLASHING_WORKFLOW, "approved": APPROVED})
    with deployed(settings, ray_session) as running:
        yield running


@asynccontextmanager
async def client(system: Deployed, key: str = "writer", mode: str = "legacy", tasks: bool = False,
                 elicit: Any = None) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {TOKENS[key]}"}, timeout=60)
    transport = streamable_http_client(f"{system.base_url}/mcp", http_client=http)
    async with http, Client(transport, mode=mode, extensions=[Tasks()] if tasks else None,
                            elicitation_callback=elicit) as opened:
        yield opened


async def until(session: Client, task_id: str, statuses: set[str]) -> dict[str, Any]:
    """tasks/get, polled until the task's status is one of `statuses`."""
    task: dict[str, Any] = {}

    async def reached() -> bool:
        task.update(await session.session.send_request(GetTask(params=TaskParams(taskId=task_id)), ANSWER))
        return task["status"] in statuses

    await eventually(reached, 30, f"task {task_id} to be {statuses}")
    return task


def rpc(system: Deployed, method: str, params: dict[str, Any], path: str = "v2/rpc", key: str = "reader") -> Any:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    reply = httpx.post(f"{system.base_url}/{path}", json=body, timeout=60,
                       headers={"authorization": f"Bearer {TOKENS[key]}"})
    assert reply.status_code == 200, reply.text
    return reply.json()


def task_of(system: Deployed, answer: mcp_types.CallToolResult) -> dict[str, Any]:
    """The task a registered tool's call ran, as get_task answers it over JSON-RPC."""
    assert answer.meta is not None and TASK_ID in answer.meta, answer
    reply = rpc(system, "get_task", {"task_id": answer.meta[TASK_ID]})
    assert "result" in reply, reply
    return reply["result"]


def text_of(answer: mcp_types.CallToolResult) -> str:
    [content] = answer.content
    assert isinstance(content, mcp_types.TextContent)
    return content.text


async def test_tools_list_offers_every_tool_and_workflow_beside_the_management_tools(system: Deployed) -> None:
    async with client(system, "member") as session:
        listed = (await session.list_tools()).tools
    names = [tool.name for tool in listed]
    tools = {tool.name: tool for tool in listed}
    assert len(names) == len(set(names))
    registered = {"echo", "llm", "refuse", "deepseek", "deepseek-coder", "perplexity", "autotune", "sandbox.run",
                  "sandbox.test", "artifacts", "calc.add", "calc.slow_count"}
    assert MANAGEMENT | registered | {"hello", "code_pipeline"} <= set(names)
    settings = system.settings
    assert tools["echo"].input_schema == dict(registry.input_schema(settings.tools["echo"]))
    assert tools["calc.add"].input_schema["required"] == ["a", "b"] and tools["calc.add"].description
    assert tools["llm"].description is not None and tools["llm"].description.startswith("A fake LLM.")
    pipeline = settings.all_workflows()["code_pipeline"]
    assert tools["code_pipeline"].input_schema == pipeline.input_schema
    assert "reasoning → codegen → sandbox_exec → test → deploy" in str(tools["code_pipeline"].description)
    support = {name: tool.execution.task_support if tool.execution else None for name, tool in tools.items()}
    assert {support[name] for name in MANAGEMENT} == {"forbidden"}
    assert {support[name] for name in registered} == {"optional"}
    assert support["code_pipeline"] == support["hello"] == "required"
    # The clash rule: a management tool keeps its name, a tool keeps its name against a workflow.
    assert tools["status"].annotations is not None and tools["status"].annotations.read_only_hint
    assert support["echo"] == "optional" and tools["echo"].input_schema["required"] == ["prompt"]


async def test_the_2026_revision_lists_the_same_tools(system: Deployed) -> None:
    async with client(system, "member", mode="auto") as session:
        assert session.protocol_version == "2026-07-28"
        modern = {tool.name for tool in (await session.list_tools()).tools}
    async with client(system, "member") as session:
        legacy = {tool.name for tool in (await session.list_tools()).tools}
    assert modern == legacy


async def test_a_read_only_key_sees_only_what_it_may_call(system: Deployed) -> None:
    async with client(system, "reader") as session:
        names = {tool.name for tool in (await session.list_tools()).tools}
        refused = await session.call_tool("echo", {"prompt": "no"})
    assert names == READ_ONLY
    assert refused.is_error and refused.structured_content["error"]["code"] == -32012


async def test_an_llm_tool_runs_to_completion_with_progress(system: Deployed) -> None:
    messages: list[str | None] = []
    values: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        values.append(progress)
        messages.append(message)

    async with client(system) as session:  # writer: may submit, not read — yet follows its own call
        answer = await session.call_tool("llm", {"prompt": "count"}, progress_callback=on_progress)
    assert not answer.is_error, answer.content
    result = answer.structured_content
    assert result["model"] == "fake-model" and result["text"]
    assert json.loads(text_of(answer)) == result
    record = task_of(system, answer)
    assert record["status"] == "succeeded" and record["tool"] == "llm" and record["result"] == result
    assert record["input"] == {"prompt": "count"} and record["tenant"] == "acme"
    assert str(messages[0]).startswith("queued") and messages[-1] == "succeeded"
    assert "".join(str(m) for m in messages if m and not m.startswith(("queued", "running", "succeeded"))) \
        == result["text"]  # the reply arrived as progress, piece by piece
    assert values == sorted(set(values))


async def test_a_tools_own_error_is_an_error_result(system: Deployed) -> None:
    async with client(system) as session:
        answer = await session.call_tool("refuse", {"why": "no disk"})
        bad = await session.call_tool("echo", {"prompt": "x", "steps": 0, "colour": "red"})
    assert answer.is_error and "refused: no disk" in text_of(answer)
    assert answer.structured_content["status"] == "failed"
    assert task_of(system, answer)["status"] == "failed"
    assert bad.is_error and bad.structured_content["error"]["code"] == -32602
    assert set(bad.structured_content["error"]["data"]["fields"]) == {"arguments.steps", "arguments.colour"}
    assert "arguments.colour: unknown field" in text_of(bad)


async def test_meta_carries_priority_and_idempotency_key_else_the_tools_default_priority(system: Deployed) -> None:
    async with client(system) as session:
        plain = await session.call_tool("echo", {"prompt": "plain"})
        meta = {PRIORITY: 7, IDEMPOTENCY_KEY: "once"}
        first = await session.call_tool("echo", {"prompt": "keyed"}, meta=meta)  # type: ignore[arg-type]
        again = await session.call_tool("echo", {"prompt": "keyed"}, meta=meta)  # type: ignore[arg-type]
        urgent = await session.call_tool("echo", {"prompt": "x"}, meta={PRIORITY: 10})  # type: ignore[arg-type]
    assert plain.structured_content == {"text": "plain", "steps": 1}
    assert task_of(system, plain)["priority"] == 3
    record = task_of(system, first)
    assert record["priority"] == 7 and record["idempotency_key"] == "once"
    assert again.meta is not None and first.meta is not None and again.meta[TASK_ID] == first.meta[TASK_ID]
    assert urgent.is_error and set(urgent.structured_content["error"]["data"]["fields"]) == {f"_meta.{PRIORITY}"}


async def test_a_workflow_runs_its_saga_to_the_end(system: Deployed) -> None:
    messages: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message)

    async with client(system) as session:
        answer = await session.call_tool("hello", {"who": "mcp"}, progress_callback=on_progress)
    assert not answer.is_error, answer.content
    assert answer.structured_content["status"] == "succeeded"
    assert answer.structured_content["outputs"]["answer"]["text"] == "hi mcp, again"
    assert "step answer: succeeded" in messages
    # The workflow that lost the clash still runs through run_saga.
    started = rpc(system, "run_saga", {"workflow": "echo", "input": {}}, key="writer")
    assert "result" in started, started


async def test_cancelling_the_call_cancels_its_task(system: Deployed) -> None:
    running = asyncio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if str(message).startswith("step 1/"):
            running.set()

    async with client(system, mode="auto") as session:  # 2026-07-28: a cancelled call closes its stream
        call = asyncio.create_task(session.call_tool("echo", {"prompt": "long", "delay_ms": 60_000, "steps": 60},
                                                     progress_callback=on_progress))
        await asyncio.wait_for(running.wait(), 30)
        listing = rpc(system, "status", {})["result"]["running"]
        [mine] = [task for task in listing if task["tool"] == "echo" and task["tenant"] == "acme"]
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    async def cancelled() -> bool:
        return rpc(system, "get_task", {"task_id": mine["task_id"]})["result"]["status"] == "cancelled"

    await eventually(cancelled, 30, "the task of the cancelled call to be cancelled")


async def test_the_prompt_shorthand_over_mcp_v2_and_v1(system: Deployed) -> None:
    spec = {"tool": "echo", "prompt": "as specified", "priority": 4, "context": {"steps": 2, "trace": "t1"}}
    async with client(system) as session:
        over_mcp = await session.call_tool("run_task", {**spec, "wait": 30})
        twice = await session.call_tool("run_task", {"tool": "echo", "prompt": "a", "input": {"prompt": "b"}})
    record = over_mcp.structured_content
    assert record["status"] == "succeeded" and record["result"] == {"text": "as specified", "steps": 2}
    assert record["input"] == {"prompt": "as specified", "steps": 2} and record["context"] == spec["context"]
    assert record["priority"] == 4
    assert twice.is_error and set(twice.structured_content["error"]["data"]["fields"]) == {"params.prompt"}
    v2 = rpc(system, "run_task", {**spec, "input": {"delay_ms": 1}, "wait": 30}, key="writer")["result"]
    assert v2["input"] == {"delay_ms": 1, "prompt": "as specified"} and v2["status"] == "succeeded"
    v1 = rpc(system, "run_task", {**spec, "wait": 30}, path="v1/rpc", key="writer")["result"]
    assert v1["input"] == record["input"] and v1["result"] == record["result"]
    v1_input = rpc(system, "run_task", {"tool": "echo", "input": {"prompt": "x"}}, path="v1/rpc", key="writer")
    assert v1_input["error"]["code"] == -32602
    assert set(v1_input["error"]["data"]["fields"]) == {"params.input", "params.prompt"}


async def test_a_client_that_opts_into_tasks_gets_a_task_and_polls_it_to_its_result(system: Deployed) -> None:
    async with client(system, mode="auto", tasks=True) as session:
        created = await session.session.call_tool("llm", {"prompt": "count"}, allow_claimed=True)
        assert isinstance(created, CreateTaskResult) and created.status == "working"
        task = await until(session, created.task_id, {"completed", "failed", "cancelled"})
    assert task["status"] == "completed" and not task["result"].get("isError"), task
    assert isinstance(task["ttlMs"], int) and isinstance(task["pollIntervalMs"], int)
    record = rpc(system, "get_task", {"task_id": created.task_id})["result"]  # the orchestrator's own task
    assert record["status"] == "succeeded" and task["result"]["structuredContent"] == record["result"]


async def test_tasks_cancel_cancels_the_orchestrators_task(system: Deployed) -> None:
    async with client(system, mode="auto", tasks=True) as session:
        created = await session.session.call_tool("echo", {"prompt": "slow", "delay_ms": 60_000, "steps": 60},
                                                  allow_claimed=True)
        assert isinstance(created, CreateTaskResult)
        ack = await session.session.send_request(CancelTask(params=TaskParams(taskId=created.task_id)), ANSWER)
        again = await session.session.send_request(CancelTask(params=TaskParams(taskId=created.task_id)), ANSWER)
        task = await until(session, created.task_id, {"cancelled"})
        with pytest.raises(MCPError) as unknown:
            await session.session.send_request(GetTask(params=TaskParams(taskId="0-nosuchtask")), ANSWER)
    assert [{k: v for k, v in a.items() if k != "_meta"} for a in (ack, again)] == [{"resultType": "complete"}] * 2
    assert task["status"] == "cancelled"
    assert rpc(system, "get_task", {"task_id": created.task_id})["result"]["status"] == "cancelled"
    assert unknown.value.error.code == -32602


async def test_a_workflow_needs_the_extension_on_the_2026_wire_and_runs_as_a_task_with_it(system: Deployed) -> None:
    async with client(system, mode="auto") as session:
        with pytest.raises(MCPError) as refused:
            await session.call_tool("hello", {"who": "nobody"})
    assert refused.value.error.code == -32021
    async with client(system, mode="auto", tasks=True) as session:
        created = await session.session.call_tool("hello", {"who": "tasks"}, allow_claimed=True)
        assert isinstance(created, CreateTaskResult)
        task = await until(session, created.task_id, {"completed", "failed", "cancelled"})
    assert task["status"] == "completed", task
    assert task["result"]["structuredContent"]["outputs"]["answer"]["text"] == "hi tasks, again"
    assert rpc(system, "get_saga", {"saga_id": created.task_id})["result"]["status"] == "succeeded"


def test_a_plain_http_session_from_discover_to_a_finished_task(system: Deployed) -> None:
    """The README's curl session, byte for byte the same requests."""
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {"extensions": {TASKS: {}}}}
    base = {"content-type": "application/json", "accept": "application/json,text/event-stream",
            "mcp-protocol-version": "2026-07-28", "authorization": f"Bearer {TOKENS['member']}"}

    def post(method: str, params: dict[str, Any], name: str | None = None) -> Any:
        headers = {**base, "mcp-method": method, **({"mcp-name": name} if name else {})}
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}}
        reply = httpx.post(f"{system.base_url}/mcp", json=body, headers=headers, timeout=60)
        assert reply.status_code == 200, reply.text
        return reply.json()["result"]

    discovered = post("server/discover", {})
    assert discovered["capabilities"]["extensions"] == {TASKS: {}}
    created = post("tools/call", {"name": "echo", "arguments": {"prompt": "hi", "delay_ms": 500}}, "echo")
    assert created["resultType"] == "task" and created["status"] == "working"
    task: dict[str, Any] = {}

    def finished() -> bool:
        task.update(post("tasks/get", {"taskId": created["taskId"]}, created["taskId"]))
        return task["status"] != "working"

    wait_until(finished, 30, "the task to finish")
    assert task["status"] == "completed"
    assert task["result"]["content"] == [{"type": "text", "text": '{"text":"hi","steps":1}'}]


async def test_another_tenants_task_is_not_found_through_tasks(system: Deployed) -> None:
    async with client(system, mode="auto", tasks=True) as session:
        created = await session.session.call_tool("echo", {"prompt": "mine", "delay_ms": 2000, "steps": 2},
                                                  allow_claimed=True)
        assert isinstance(created, CreateTaskResult)
    async with client(system, STRANGER, mode="auto", tasks=True) as stranger:
        for request in (GetTask(params=TaskParams(taskId=created.task_id)),
                        CancelTask(params=TaskParams(taskId=created.task_id))):
            with pytest.raises(MCPError) as refused:
                await stranger.session.send_request(request, ANSWER)
            assert refused.value.error.code == -32602  # as for an id that never existed
    async with client(system, mode="auto", tasks=True) as session:
        task = await until(session, created.task_id, {"completed", "failed", "cancelled"})
    assert task["status"] == "completed"  # the stranger's cancel did nothing


async def update(session: Client, task_id: str, responses: dict[str, Any]) -> dict[str, Any]:
    request = UpdateTask(params=UpdateParams(taskId=task_id, inputResponses=responses))
    return await session.session.send_request(request, ANSWER)


async def test_a_task_asking_for_input_is_answered_with_tasks_update(system: Deployed) -> None:
    async with client(system, mode="auto", tasks=True) as session:
        created = await session.session.call_tool("echo", {"prompt": "hi", "ask": ASK}, allow_claimed=True)
        assert isinstance(created, CreateTaskResult)
        task = await until(session, created.task_id, {"input_required"})
        assert task["inputRequests"] == {"name": {"method": "elicitation/create", "params": {
            "mode": "form", "message": "Who are you?", "requestedSchema": ASK["schema"]}}}
        with pytest.raises(MCPError) as refused:
            await update(session, created.task_id, {"name": {"action": "accept", "content": {"name": 7}}})
        assert refused.value.error.code == -32602
        assert set(refused.value.error.data["fields"]) == {"params.inputResponses.name.content.name"}
        async with client(system, STRANGER) as stranger:  # another tenant: not found, over JSON-RPC too
            strange = await stranger.call_tool("provide_input", {"task_id": created.task_id, "input": {"name": "x"}})
        assert strange.is_error and strange.structured_content["error"]["code"] == -32001
        ack = await update(session, created.task_id, {"name": {"action": "accept", "content": {"name": "Ada"}},
                                                      "unknown": {"action": "accept", "content": {}}})
        assert {k: v for k, v in ack.items() if k != "_meta"} == {"resultType": "complete"}
        task = await until(session, created.task_id, {"completed", "failed", "cancelled"})
    assert task["result"]["structuredContent"] == {"text": "hi", "steps": 1, "answer": {"name": "Ada"}}


async def test_a_synchronous_call_is_answered_through_elicitation(system: Deployed) -> None:
    asked: list[mcp_types.ElicitRequestParams] = []

    async def elicit(context: Any, params: mcp_types.ElicitRequestParams) -> mcp_types.ElicitResult:
        asked.append(params)
        return mcp_types.ElicitResult(action="accept", content={"name": "Grace"})

    async with client(system, mode="auto", elicit=elicit) as session:
        answer = await session.call_tool("echo", {"prompt": "hello", "ask": ASK})
    assert not answer.is_error and answer.structured_content["answer"] == {"name": "Grace"}
    assert [p.message for p in asked] == ["Who are you?"]
    async with client(system) as legacy:  # no way to ask this client: a clear error naming the task
        refused = await legacy.call_tool("echo", {"prompt": "hello", "ask": ASK})
    assert refused.is_error and "waits for input (name)" in refused.content[0].text
    task_id = refused.structured_content["error"]["data"]["task_id"]
    rpc(system, "provide_input", {"task_id": task_id, "input": {"name": "Lin"}}, key="writer")


@pytest.mark.parametrize("answer_with", ["tasks/update", "provide_input"])
async def test_a_sagas_deploy_waits_for_approval(system: Deployed, answer_with: str) -> None:
    async with client(system, mode="auto", tasks=True) as session:
        created = await session.session.call_tool("approved", {"what": "v2", "require_approval": True},
                                                  allow_claimed=True)
        assert isinstance(created, CreateTaskResult)
        task = await until(session, created.task_id, {"input_required"})
        assert task["inputRequests"]["deploy.approval"]["params"]["message"] == "Deploy v2?"
        if answer_with == "tasks/update":
            await update(session, created.task_id, {"deploy.approval": {"action": "accept",
                                                                        "content": {"approve": True}}})
        else:
            saga = rpc(system, "get_saga", {"saga_id": created.task_id})["result"]
            deploy = next(step for step in saga["steps"] if step["name"] == "deploy")
            rpc(system, "provide_input", {"task_id": deploy["attempts"][-1]["task_id"], "input": {"approve": True}},
                key="writer")
        task = await until(session, created.task_id, {"completed", "failed", "cancelled"})
    assert task["status"] == "completed" and not task["result"].get("isError"), task
    assert task["result"]["structuredContent"]["outputs"]["deploy"]["text"] == "deployed built v2"


# Last in the module: it kills the ingress replica and the router.
async def test_a_task_survives_the_replica_that_created_it_and_the_router(system: Deployed) -> None:
    async with client(system, mode="auto", tasks=True) as session:
        created = await session.session.call_tool("echo", {"prompt": "survivor", "delay_ms": 3000, "steps": 3},
                                                  allow_claimed=True)
        waiting = await session.session.call_tool("echo", {"prompt": "asks", "ask": ASK}, allow_claimed=True)
        assert isinstance(waiting, CreateTaskResult)
        await until(session, waiting.task_id, {"input_required"})
    assert isinstance(created, CreateTaskResult) and created.status == "working"
    old = replica_name(system.name)
    old_pid = replica_pid(old) if old else None
    assert old is not None and old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    os.kill(actor_pid(router_name(0), system.settings.namespace), signal.SIGKILL)
    wait_until(lambda: (name := replica_name(system.name)) not in (None, old) and replica_pid(name) is not None,
               60, "Serve to replace the replica")
    async with client(system, mode="auto", tasks=True) as session:  # a new session, on the new replica
        task = await until(session, created.task_id, {"completed", "failed", "cancelled"})
        await until(session, waiting.task_id, {"input_required"})  # still waiting, on the new replica
        await update(session, waiting.task_id, {"name": {"action": "accept", "content": {"name": "later"}}})
        answered = await until(session, waiting.task_id, {"completed", "failed", "cancelled"})
    assert task["status"] == "completed" and task["result"]["structuredContent"] == {"text": "survivor", "steps": 3}
    assert rpc(system, "get_task", {"task_id": created.task_id})["result"]["attempts"] == 1  # ran once
    assert answered["result"]["structuredContent"]["answer"] == {"name": "later"}
