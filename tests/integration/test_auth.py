"""API keys, scopes, tenant isolation and per-tenant quotas over real HTTP, on every face.

One deployment with keys for two tenants (alice, bob), single-scope keys, an operator and a metrics scraper,
and two tenants with small quotas.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from orchestrator.adapters.keys import Keys
from orchestrator.auth import hash_key, new_key
from tests import redis_view
from tests.conftest import Deployed, deployed, make_settings
from tests.support import RedisServer, eventually, wait_until

pytestmark = pytest.mark.integration

KEYS = {  # name → (tenant, scopes); each gets a fresh key
    "alice": ("alice", ["submit", "read"]),
    "bob": ("bob", ["submit", "read"]),
    "alice-reader": ("alice", ["read"]),
    "alice-submitter": ("alice", ["submit"]),
    "ops": ("ops", ["admin"]),
    "scraper": ("ops", ["metrics"]),
    "tiny": ("tiny", ["submit", "read"]),
    "slow": ("slow", ["submit", "read"]),
    "pager": ("alice", ["submit", "read", "urgent"]),
    "trusted": ("trusted", ["submit", "read"]),
}
TOKENS = {name: new_key() for name in KEYS}
WRONG = "orch_this-key-was-never-configured-0123456789"
HELLO = {"name": "hello", "steps": [{"name": "greet", "tool": "echo", "input": {"prompt": "hi {{ input.who }}"}}]}
QUOTAS = {"tiny": {"max_active_tasks": 2}, "slow": {"submits_per_s": 0.05, "submit_burst": 2},
          "trusted": {"max_priority": 10}}
ACCEPT = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int) -> Iterator[Deployed]:
    keys = {name: {"hash": hash_key(TOKENS[name]), "tenant": tenant, "scopes": scopes}
            for name, (tenant, scopes) in KEYS.items()}
    settings = make_settings(redis_server.url, auth={"keys": keys, "quotas": QUOTAS}, workflows={"hello": HELLO})
    with deployed(settings, ray_session) as running:
        yield running


def headers(key: str | None) -> dict[str, str]:
    """Auth headers for a key name (None: none; "wrong": an unknown key)."""
    if key is None:
        return {}
    return {"authorization": f"Bearer {WRONG if key == 'wrong' else TOKENS[key]}"}


def call(system: Deployed, key: str | None, method: str, params: Any = None, path: str = "v2/rpc") -> Any:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {} if params is None else params}
    reply = httpx.post(f"{system.base_url}/{path}", json=body, headers=headers(key), timeout=60)
    assert reply.status_code in (200, 401), reply.text
    return reply.json()


def ok(system: Deployed, key: str, method: str, params: Any = None, path: str = "v2/rpc") -> Any:
    reply = call(system, key, method, params, path)
    assert "error" not in reply, reply
    return reply["result"]


def error(system: Deployed, key: str, method: str, params: Any = None, path: str = "v2/rpc") -> dict[str, Any]:
    reply = call(system, key, method, params, path)
    assert "error" in reply, reply
    return reply["error"]


def echo(prompt: str, delay_ms: int = 0, **extra: Any) -> dict[str, Any]:
    return {"tool": "echo", "input": {"prompt": prompt, "delay_ms": delay_ms}, **extra}


def owned_task(system: Deployed, tenant: str, delay_ms: int = 0) -> str:
    """A task of `tenant`'s, added by the operator (inject takes the tenant)."""
    added = ok(system, "ops", "inject", {"action": "add", "task": echo(f"of {tenant}", delay_ms), "tenant": tenant})
    return added["task_id"]


def mcp_post(system: Deployed, key: str | None, message: dict[str, Any]) -> tuple[int, Any]:
    """One MCP message over plain HTTP (the SDK serves a request without a session statelessly)."""
    reply = httpx.post(f"{system.base_url}/mcp", json=message, headers={**ACCEPT, **headers(key)}, timeout=60)
    if reply.status_code != 200:
        return reply.status_code, reply.json()
    if reply.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:] for line in reply.text.splitlines() if line.startswith("data:")]
        return 200, json.loads(data[-1])
    return 200, reply.json()


# ---------------------------------------------------------------- the auth matrix

Outcome = str  # "unauthenticated" (401), "forbidden" (the scope is missing), "ok"


def rpc_outcome(reply: httpx.Response) -> Outcome:
    assert WRONG not in reply.text and "Traceback" not in reply.text
    if reply.status_code == 401:
        assert reply.headers["www-authenticate"].startswith("Bearer ")
        assert reply.json()["error"]["code"] == -32011
        return "unauthenticated"
    assert reply.status_code == 200, reply.text
    body = reply.json()
    if "error" in body:
        assert body["error"]["code"] == -32012, body
        return "forbidden"
    return "ok"


def rpc_face(path: str, method: str, params: Callable[[Deployed, str | None], Any]) -> Callable[..., Outcome]:
    def face(system: Deployed, key: str | None) -> Outcome:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params(system, key)}
        return rpc_outcome(httpx.post(f"{system.base_url}/{path}", json=body, headers=headers(key), timeout=60))
    return face


def events_face(system: Deployed, key: str | None) -> Outcome:
    tenant = KEYS[key][0] if key in KEYS else "alice"
    task_id = owned_task(system, tenant)
    reply = httpx.get(f"{system.base_url}/v1/tasks/{task_id}/events", headers=headers(key), timeout=60)
    assert WRONG not in reply.text
    if reply.status_code in (401, 403):
        assert reply.json()["error"]["code"] == (-32011 if reply.status_code == 401 else -32012)
        return "unauthenticated" if reply.status_code == 401 else "forbidden"
    assert reply.status_code == 200 and "event: succeeded" in reply.text, reply.text
    return "ok"


def metrics_face(system: Deployed, key: str | None) -> Outcome:
    reply = httpx.get(f"{system.base_url}/metrics", headers=headers(key), timeout=60)
    if reply.status_code in (401, 403):
        return "unauthenticated" if reply.status_code == 401 else "forbidden"
    assert reply.status_code == 200 and "orchestrator_tasks_finished_total" in reply.text
    return "ok"


def mcp_face(tool: str, arguments: dict[str, Any]) -> Callable[..., Outcome]:
    def face(system: Deployed, key: str | None) -> Outcome:
        status, reply = mcp_post(system, key, {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                               "params": {"name": tool, "arguments": arguments}})
        if status == 401:
            assert reply["error"]["code"] == -32011
            return "unauthenticated"
        result = reply["result"]
        if result.get("isError"):
            assert result["structuredContent"]["error"]["code"] == -32012, result
            return "forbidden"
        return "ok"
    return face


FACES: dict[str, tuple[str | None, Callable[..., Outcome]]] = {  # face → (scope it needs, how to use it)
    "v1 run_task": ("submit", rpc_face("v1/rpc", "run_task", lambda s, k: {"tool": "echo", "prompt": "m"})),
    "v2 run_task": ("submit", rpc_face("v2/run_task", "run_task", lambda s, k: echo("m"))),
    "v1 get_task": ("read", rpc_face("v1/rpc", "get_task",
                                     lambda s, k: {"task_id": owned_task(s, KEYS[k][0] if k in KEYS else "alice")})),
    "v2 run_saga": ("submit", rpc_face("v2/rpc", "run_saga", lambda s, k: {"workflow": "hello", "input": {}})),
    "v1 status": ("read", rpc_face("v1/status", "status", lambda s, k: {})),
    "v1 analytics": ("read", rpc_face("v1/analytics", "analytics", lambda s, k: {})),
    "v1 control": ("admin", rpc_face("v1/control", "control", lambda s, k: {"action": "audit_log", "count": 1})),
    "v1 inject": ("admin", rpc_face("v1/inject", "inject", lambda s, k: {"action": "add", "task": echo("i")})),
    "v2 rpc.discover": (None, rpc_face("v2/rpc", "rpc.discover", lambda s, k: {})),
    "sse events": ("read", events_face),
    "mcp run_task": ("submit", mcp_face("run_task", echo("over mcp"))),
    "mcp status": ("read", mcp_face("status", {})),
    "metrics": ("metrics", metrics_face),
}


def expected(key: str | None, scope: str | None) -> Outcome:
    if key not in KEYS:
        return "unauthenticated"
    scopes = KEYS[key][1]
    return "ok" if scope is None or scope in scopes or "admin" in scopes else "forbidden"


@pytest.mark.parametrize("face", FACES)
def test_every_face_checks_the_key_and_its_scope(system: Deployed, face: str) -> None:
    scope, use = FACES[face]
    keys: list[str | None] = [None, "wrong", "alice", "alice-reader", "alice-submitter", "ops", "scraper"]
    outcomes = {key: use(system, key) for key in keys}
    assert outcomes == {key: expected(key, scope) for key in keys}


def test_the_documents_name_the_scopes_and_the_bearer_scheme(system: Deployed) -> None:
    methods = {m["name"]: m.get("x-scope") for m in ok(system, "alice-reader", "rpc.discover")["methods"]}
    assert methods["run_task"] == "submit" and methods["get_task"] == "read" and methods["control"] == "admin"
    assert methods["rpc.discover"] is None
    openapi = httpx.get(f"{system.base_url}/openapi.json", timeout=30).json()  # no key needed for the docs
    assert openapi["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert openapi["paths"]["/v2/rpc"]["post"]["security"] == [{"HTTPBearer": []}]
    assert httpx.get(f"{system.base_url}/healthz", timeout=30).status_code == 200


def test_mcp_needs_a_key_for_the_handshake_too(system: Deployed) -> None:
    for key in (None, "wrong"):
        reply = httpx.post(f"{system.base_url}/mcp", json=INITIALIZE, headers={**ACCEPT, **headers(key)}, timeout=30)
        assert reply.status_code == 401 and reply.headers["www-authenticate"].startswith("Bearer ")
        assert WRONG not in reply.text
    opened = httpx.post(f"{system.base_url}/mcp", json=INITIALIZE, headers={**ACCEPT, **headers("alice")}, timeout=30)
    assert opened.status_code == 200 and opened.headers["mcp-session-id"]


async def test_the_official_client_with_a_key_lists_what_the_key_may_call(system: Deployed) -> None:
    async def tools_and_run(key: str) -> tuple[set[str], Any]:
        http = httpx2.AsyncClient(headers=headers(key), timeout=60)
        async with http, Client(streamable_http_client(f"{system.base_url}/mcp", http_client=http),
                                mode="legacy") as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            answer = await client.call_tool("run_task", echo("with a key", wait=30))
        return names, answer

    names, answer = await tools_and_run("alice")
    assert {"run_task", "get_task", "cancel_task", "status", "analytics", "run_saga", "get_saga"} <= names
    assert answer.structured_content["status"] == "succeeded"
    assert answer.structured_content["tenant"] == "alice"
    reader_names, refused = await tools_and_run("alice-reader")
    assert "run_task" not in reader_names and "cancel_task" not in reader_names and "get_task" in reader_names
    assert refused.is_error and refused.structured_content["error"]["code"] == -32012


def test_an_mcp_session_belongs_to_the_key_that_opened_it(system: Deployed) -> None:
    opened = httpx.post(f"{system.base_url}/mcp", json=INITIALIZE, headers={**ACCEPT, **headers("alice")}, timeout=30)
    session = {**ACCEPT, "mcp-session-id": opened.headers["mcp-session-id"]}
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    mine = httpx.post(f"{system.base_url}/mcp", json=listing, headers={**session, **headers("alice")}, timeout=30)
    stolen = httpx.post(f"{system.base_url}/mcp", json=listing, headers={**session, **headers("bob")}, timeout=30)
    assert mine.status_code == 200 and stolen.status_code == 404


def test_the_app_is_not_built_for_other_interfaces_without_keys(redis_server: RedisServer, ray_session: int) -> None:
    from deployments.app import build_app

    with pytest.raises(ValueError, match="refusing to listen on '0.0.0.0' without API keys"):
        build_app(make_settings(redis_server.url, http={"host": "0.0.0.0"}))


# ---------------------------------------------------------------- tenant isolation


def test_a_tenant_sees_follows_and_cancels_only_its_own_tasks(system: Deployed) -> None:
    parent = ok(system, "alice", "run_task", echo("alice's", 60_000, idempotency_key="shared-key",
                                                  children=[{"tool": "echo", "input": {"prompt": "child"}}]))
    task_id = parent["task_id"]
    record = ok(system, "alice", "get_task", {"task_id": task_id})
    assert record["tenant"] == "alice" and record["agent"] is None
    [child] = record["children"]
    missing = error(system, "bob", "get_task", {"task_id": "0" * 32})
    for other in (task_id, child):  # bob gets exactly what an id that never existed gets
        for method in ("get_task", "cancel_task"):
            refused = error(system, "bob", method, {"task_id": other})
            assert refused == {**missing, "message": missing["message"].replace("0" * 32, other),
                               "data": {**missing["data"], "task_id": other}}
        events = httpx.get(f"{system.base_url}/v1/tasks/{other}/events", headers=headers("bob"), timeout=30)
        assert events.status_code == 404 and events.json()["error"]["code"] == -32001
        for tool in ("get_task", "cancel_task"):
            _, over_mcp = mcp_post(system, "bob", {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                                   "params": {"name": tool, "arguments": {"task_id": other}}})
            assert over_mcp["result"]["structuredContent"]["error"]["code"] == -32001
    # bob's idempotency keys are his own: the same key makes him a new task
    bobs = ok(system, "bob", "run_task", echo("bob's", idempotency_key="shared-key"))
    assert bobs["task_id"] != task_id and bobs["duplicate"] is False
    # the operator sees and steers every tenant's tasks
    assert ok(system, "ops", "get_task", {"task_id": task_id})["tenant"] == "alice"
    wait_until(lambda: ok(system, "alice", "get_task", {"task_id": task_id})["status"] == "running", 30,
               "alice's task to run")
    running_for = {key: {r["task_id"] for r in ok(system, key, "status")["running"]} for key in ("alice", "bob", "ops")}
    assert task_id in running_for["alice"] and task_id in running_for["ops"] and task_id not in running_for["bob"]
    assert ok(system, "alice", "cancel_task", {"task_id": task_id})["task_id"] == task_id
    wait_until(lambda: ok(system, "alice", "get_task", {"task_id": task_id})["status"] == "cancelled", 30,
               "the cancel to land")
    assert ok(system, "alice", "get_task", {"task_id": child})["status"] == "cancelled"


def test_a_tenant_sees_and_cancels_only_its_own_sagas(system: Deployed) -> None:
    started = ok(system, "alice", "run_saga", {"workflow": "hello", "input": {"who": "alice"}, "idempotency_key": "s"})
    saga_id = started["saga_id"]
    missing = error(system, "bob", "get_saga", {"saga_id": "0" * 32})
    for method in ("get_saga", "cancel_saga"):
        refused = error(system, "bob", method, {"saga_id": saga_id})
        assert refused == {**missing, "message": missing["message"].replace("0" * 32, saga_id),
                           "data": {**missing["data"], "saga_id": saga_id}}
    bobs = ok(system, "bob", "run_saga", {"workflow": "hello", "input": {}, "idempotency_key": "s"})
    assert bobs["saga_id"] != saga_id and bobs["duplicate"] is False
    state: dict[str, Any] = {}

    def settled() -> bool:
        state.update(ok(system, "alice", "get_saga", {"saga_id": saga_id}))
        return state["status"] == "succeeded"

    wait_until(settled, 60, "alice's saga to succeed")
    assert state["tenant"] == "alice"
    step_task = state["steps"][0]["attempts"][0]["task_id"]
    assert ok(system, "alice", "get_task", {"task_id": step_task})["tenant"] == "alice"  # the steps are hers too
    assert error(system, "bob", "get_task", {"task_id": step_task})["code"] == -32001
    assert ok(system, "ops", "get_saga", {"saga_id": saga_id})["saga_id"] == saga_id


async def test_analytics_of_a_tenant_count_only_its_tasks(system: Deployed) -> None:
    for key in ("alice", "bob"):
        ok(system, key, "run_task", echo(f"counted for {key}", wait=30))
    ops_view: dict[str, Any] = {}

    async def both_counted() -> bool:
        ops_view.update(ok(system, "ops", "analytics", {"window_s": 600}))
        return {"alice", "bob"} <= set(ops_view["by_tenant"])

    await eventually(both_counted, 30, "the operator to see both tenants")
    for key in ("alice", "bob"):
        mine = ok(system, key, "analytics", {"window_s": 600})
        assert set(mine["by_tenant"]) == {key}
        assert mine["overall"]["tasks"] == mine["by_tenant"][key]["tasks"] <= ops_view["by_tenant"][key]["tasks"]
        assert sum(group["tasks"] for group in mine["by_tool"].values()) == mine["overall"]["tasks"]


# ---------------------------------------------------------------- quotas


def stored_records(system: Deployed) -> int:
    client = redis_view.client(system.settings)
    try:
        return redis_view.task_keys(client, system.settings)
    finally:
        client.close()


def test_unfinished_tasks_are_capped_per_tenant_children_included(system: Deployed) -> None:
    first = ok(system, "tiny", "run_task", echo("1", 60_000))["task_id"]
    ok(system, "tiny", "run_task", echo("2", 60_000))
    before = stored_records(system)
    refused = error(system, "tiny", "run_task", echo("3"))
    assert refused["code"] == -32013 and "tiny" in refused["message"]
    assert refused["data"] == {"retryable": True, "tenant": "tiny", "retry_after_s": 1.0, "quota": "max_active_tasks",
                               "limit": 2}
    assert stored_records(system) == before  # nothing half-written
    assert ok(system, "alice", "run_task", echo("another tenant is not held up"))["status"] == "queued"
    ok(system, "tiny", "cancel_task", {"task_id": first})
    with_child = echo("p", children=[{"tool": "echo", "input": {"prompt": "c"}}])
    assert error(system, "tiny", "run_task", with_child)["data"]["quota"] == "max_active_tasks"  # 1 free, 2 needed
    assert ok(system, "tiny", "run_task", echo("fits again"))["status"] == "queued"
    # the operator is not held to a tenant's quota
    assert ok(system, "ops", "inject", {"action": "add", "task": echo("by hand"), "tenant": "tiny"})["task_id"]


def test_submits_are_rate_limited_per_tenant_with_a_retry_hint(system: Deployed) -> None:
    first = ok(system, "slow", "run_task", echo("a", idempotency_key="slow-a"))
    ok(system, "slow", "run_task", echo("b"))  # the burst of 2
    refused = error(system, "slow", "run_task", echo("c"))
    assert refused["code"] == -32013 and refused["data"]["quota"] == "submits_per_s"
    assert refused["data"]["limit"] == 0.05 and 0 < refused["data"]["retry_after_s"] <= 20
    assert error(system, "slow", "run_saga", {"workflow": "hello", "input": {}})["data"]["quota"] == "submits_per_s"
    # a retried submit (same idempotency key) finds its task, whatever the rate
    again = ok(system, "slow", "run_task", echo("a", idempotency_key="slow-a"))
    assert again == {**first, "duplicate": True, "status": again["status"]}
    assert ok(system, "bob", "run_task", echo("bob is not slowed"))["status"] == "queued"


def test_urgent_priorities_need_the_urgent_scope_or_the_tenants_max_priority(system: Deployed) -> None:
    refused = error(system, "alice", "run_task", echo("now", priority=10))
    assert refused["code"] == -32602 and "urgent" in refused["data"]["fields"]["params.priority"]
    saga = error(system, "alice", "run_saga", {"workflow": "hello", "input": {}, "priority": 10})
    assert set(saga["data"]["fields"]) == {"params.priority"}
    child = echo("p", children=[{"tool": "echo", "input": {"prompt": "c"}, "priority": 10}])
    assert set(error(system, "alice", "run_task", child)["data"]["fields"]) == {"params.children.0.priority"}
    assert ok(system, "alice", "run_task", echo("soon", priority=9))["status"] == "queued"
    for trusted in ("pager", "trusted", "ops"):  # the scope, the tenant's max_priority, an admin
        assert ok(system, trusted, "run_task", echo("now", priority=10))["task_id"]


def test_artifacts_belong_to_their_tenant_and_only_operators_restore(system: Deployed) -> None:
    def publish(key: str, content: str) -> Any:
        record = ok(system, key, "run_task", {"tool": "artifacts", "wait": 30,
                                               "input": {"action": "publish", "artifact": "site", "content": content}})
        assert record["status"] == "succeeded", record
        return record["result"]

    assert publish("alice", "alice v1")["version"] == 1
    assert publish("alice", "alice v2") == {"artifact": "site", "version": 2, "previous_version": 1}
    assert publish("bob", "bob v1") == {"artifact": "site", "version": 1, "previous_version": None}  # bob's own
    restore = {"tool": "artifacts", "input": {"action": "restore", "artifact": "site", "version": 1}}
    refused = error(system, "alice", "run_task", restore)
    assert refused["code"] == -32602 and "saga" in refused["data"]["fields"]["params.input.action"]
    client = redis_view.client(system.settings)
    try:
        versions = Keys(system.settings.redis.prefix).artifact("site", "alice")[0]
        assert 0 < client.ttl(versions) <= system.settings.redis.artifact_retention_s  # versions expire
    finally:
        client.close()
    done = ok(system, "ops", "run_task", {**restore, "wait": 30})  # an admin may (its own tenant's artifact)
    assert done["status"] == "failed" and "no version 1" in done["error"]["message"]
