"""`whoami`: a key learns its own tenant and scopes (what the console offers it), and nothing else."""

from __future__ import annotations

import json
from typing import Any, cast

from orchestrator import api
from orchestrator.auth import ANONYMOUS, Principal
from orchestrator.jsonrpc import Dispatcher, RequestContext
from orchestrator.service import TaskService


async def whoami(principal: Principal) -> dict[str, Any]:
    dispatcher = Dispatcher(api.methods(cast(TaskService, None), 2), max_batch=10, version="2")
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "whoami", "params": {}}).encode()
    reply = await dispatcher.handle(body, RequestContext(version=2, principal=principal))
    assert reply is not None
    return dict(json.loads(reply))


async def test_a_tenant_key_is_told_its_tenant_and_scopes() -> None:
    reader = Principal("alice-reader", "alice", frozenset({"read"}))
    assert (await whoami(reader))["result"] == {"key": "alice-reader", "tenant": "alice", "scopes": ["read"],
                                                "admin": False, "auth": True}


async def test_an_admin_has_every_scope() -> None:
    answer = (await whoami(Principal("ops", "ops", frozenset({"admin"}))))["result"]
    assert answer["admin"] and answer["scopes"] == ["submit", "read", "admin", "metrics", "urgent"]


async def test_with_auth_off_the_caller_is_anonymous() -> None:
    answer = (await whoami(ANONYMOUS))["result"]
    assert answer["auth"] is False and answer["admin"] and answer["key"] == "anonymous"


async def test_a_key_with_a_scope_that_allows_nothing_else_may_still_ask() -> None:
    scraper = Principal("scraper", "ops", frozenset({"metrics"}))
    assert (await whoami(scraper))["result"]["scopes"] == ["metrics"]


async def test_extra_params_are_refused() -> None:
    dispatcher = Dispatcher(api.methods(cast(TaskService, None), 2), max_batch=10, version="2")
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "whoami", "params": {"tenant": "bob"}}).encode()
    reply = await dispatcher.handle(body, RequestContext(version=2, principal=ANONYMOUS))
    assert reply is not None and json.loads(reply)["error"]["code"] == -32602
