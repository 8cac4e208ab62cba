"""`list_tasks` and `list_sagas` over JSON-RPC (v1 and v2) and MCP, against a deployed orchestrator whose workers
run the tasks: two tenants' keys see only their own tasks, an admin's sees and chooses any, bad params are
refused naming the field."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from orchestrator.auth import hash_key, new_key
from orchestrator.client import Client as OrchestratorClient
from tests.conftest import Deployed, deployed, make_settings
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration

TOKENS = {name: new_key() for name in ("alice", "bob", "ops")}
HELLO = {"name": "hello", "steps": [{"name": "greet", "tool": "echo", "input": {"prompt": "hi {{ input.who }}"}}]}


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int) -> Iterator[Deployed]:
    keys = {name: {"hash": hash_key(token), "tenant": name, "scopes": ["admin"] if name == "ops" else
                   ["submit", "read"]} for name, token in TOKENS.items()}
    settings = make_settings(redis_server.url, auth={"keys": keys}, workflows={"hello": HELLO})
    with deployed(settings, ray_session) as running:
        yield running


def rpc(system: Deployed, who: str, method: str, params: dict[str, Any], version: int = 2) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    reply = httpx.post(f"{system.base_url}/v{version}/rpc", json=body, timeout=60,
                       headers={"authorization": f"Bearer {TOKENS[who]}"})
    return dict(reply.json())


def ok(system: Deployed, who: str, method: str, params: dict[str, Any], version: int = 2) -> Any:
    reply = rpc(system, who, method, params, version)
    assert "result" in reply, reply
    return reply["result"]


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["task_id"] for row in rows]


def test_tenants_list_their_own_finished_tasks_and_an_admin_any(system: Deployed) -> None:
    mine = [ok(system, "alice", "run_task", {"tool": "echo", "input": {"prompt": f"a{i}"}, "wait": 30})["task_id"]
            for i in range(3)]
    theirs = ok(system, "bob", "run_task", {"tool": "echo", "input": {"prompt": "b"}, "wait": 30})["task_id"]
    listed = ok(system, "alice", "list_tasks", {"status": "succeeded"})
    assert ids(listed["tasks"]) == mine[::-1] and listed["next_cursor"] is None
    assert all(row["tenant"] == "alice" and row["started_at"] <= row["finished_at"] for row in listed["tasks"])
    first = ok(system, "alice", "list_tasks", {"limit": 2}, version=1)
    second = ok(system, "alice", "list_tasks", {"limit": 2, "cursor": first["next_cursor"]}, version=1)
    assert ids(first["tasks"] + second["tasks"]) == mine[::-1]
    since = {"created_after": "2020-01-01T00:00:00Z", "status": "succeeded"}  # RFC 3339 or unix seconds
    assert ids(ok(system, "alice", "list_tasks", since)["tasks"]) == mine[::-1]
    with OrchestratorClient(system.base_url, api_key=TOKENS["alice"]) as client:  # the client library pages
        assert [t.task_id for t in client.list_tasks(limit=1)] == mine[::-1]
    assert ids(ok(system, "bob", "list_tasks", {})["tasks"]) == [theirs]
    assert ids(ok(system, "ops", "list_tasks", {"tenant": "bob"})["tasks"]) == [theirs]
    assert set(ids(ok(system, "ops", "list_tasks", {"tool": "echo"})["tasks"])) >= {*mine, theirs}


@pytest.mark.parametrize(("params", "field"), [
    ({"tenant": "bob"}, "params.tenant"),
    ({"cursor": "not-a-cursor"}, "params.cursor"),
    ({"limit": 501}, "params.limit"),
    ({"status": "sleeping"}, "params.status"),
    ({"priority_min": 8, "priority_max": 2}, "params.priority_max"),
])
def test_bad_params_are_refused_naming_the_field(system: Deployed, params: dict[str, Any], field: str) -> None:
    error = rpc(system, "alice", "list_tasks", params)["error"]
    assert error["code"] == -32602 and field in error["data"]["fields"], error


def test_sagas_are_listed_with_their_steps_tasks(system: Deployed) -> None:
    saga_id = ok(system, "alice", "run_saga", {"workflow": "hello", "input": {"who": "you"}})["saga_id"]
    wait_until(lambda: ok(system, "alice", "get_saga", {"saga_id": saga_id})["status"] == "succeeded", 60,
               "the saga to finish")
    assert [s["saga_id"] for s in ok(system, "alice", "list_sagas", {"workflow": "hello"})["sagas"]] == [saga_id]
    assert ok(system, "bob", "list_sagas", {})["sagas"] == []
    [step] = ok(system, "alice", "list_tasks", {"saga_id": saga_id})["tasks"]
    assert step["saga"] == saga_id and step["status"] == "succeeded"


async def test_mcp_offers_both_as_read_only_tools(system: Deployed) -> None:
    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {TOKENS['bob']}"}, timeout=60)
    async with http, Client(streamable_http_client(f"{system.base_url}/mcp", http_client=http),
                            mode="legacy") as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        answer = await client.call_tool("list_tasks", {"limit": 1})
    assert tools["list_tasks"].annotations.read_only_hint and tools["list_sagas"].annotations.read_only_hint
    assert answer.structured_content is not None and set(answer.structured_content) == {"tasks", "next_cursor"}
