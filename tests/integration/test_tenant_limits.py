"""One tenant cannot hold every long-lived connection: event streams and MCP sessions are capped per tenant
(across replicas) and in duration; a tenant at its cap gets 429 with a retry hint, another is still served."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from orchestrator.auth import hash_key, new_key
from tests.conftest import Deployed, deployed, make_settings
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration

TOKENS = {name: new_key() for name in ("alice", "bob")}
ACCEPT = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int) -> Iterator[Deployed]:
    keys = {name: {"hash": hash_key(token), "tenant": name, "scopes": ["submit", "read"]}
            for name, token in TOKENS.items()}
    settings = make_settings(redis_server.url, auth={"keys": keys},
                             limits={"max_event_streams_per_tenant": 2, "max_event_stream_s": 3.0,
                                     "max_mcp_sessions_per_tenant": 2})
    with deployed(settings, ray_session) as running:
        yield running


def auth(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {TOKENS[name]}"}


def long_task(system: Deployed, name: str) -> str:
    body = {"jsonrpc": "2.0", "id": 1, "method": "run_task",
            "params": {"tool": "echo", "input": {"prompt": "hold", "delay_ms": 60_000, "steps": 60}}}
    return str(httpx.post(f"{system.base_url}/v2/rpc", json=body, headers=auth(name), timeout=30).json()["result"]
               ["task_id"])


class Follower(threading.Thread):
    """An SSE follower held open until told to stop (or until the server ends the stream)."""

    def __init__(self, system: Deployed, name: str, task_id: str) -> None:
        super().__init__(daemon=True)
        self.url, self.headers = f"{system.base_url}/v1/tasks/{task_id}/events", auth(name)
        self.opened, self.ended, self.stop = threading.Event(), threading.Event(), threading.Event()
        self.status: int | None = None

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url, headers=self.headers, timeout=30) as response:
                self.status = response.status_code
                self.opened.set()
                for _ in response.iter_lines():
                    if self.stop.is_set():
                        break
        finally:
            self.opened.set()
            self.ended.set()


def follow(system: Deployed, name: str, task_id: str) -> Follower:
    follower = Follower(system, name, task_id)
    follower.start()
    assert follower.opened.wait(30) and follower.status == 200, follower.status
    return follower


def test_a_tenant_at_its_stream_cap_waits_and_another_is_served(system: Deployed) -> None:
    task = long_task(system, "alice")
    followers = [follow(system, "alice", task) for _ in range(2)]
    try:
        refused = httpx.get(f"{system.base_url}/v1/tasks/{task}/events", headers=auth("alice"), timeout=30)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        error = refused.json()["error"]
        assert error["code"] == -32013 and error["data"]["quota"] == "max_event_streams" and error["data"]["limit"] == 2
        bob = follow(system, "bob", long_task(system, "bob"))  # bob is not held up by alice's streams
        bob.stop.set()
    finally:
        for follower in followers:
            follower.stop.set()
    # the streams end by themselves after max_event_stream_s, giving their slots back
    assert all(f.ended.wait(30) for f in followers)
    wait_until(lambda: httpx.get(f"{system.base_url}/v1/tasks/{task}/events", headers=auth("alice"),
                                 timeout=30).status_code == 200, 15, "alice's slots to come back")


def initialize(system: Deployed, name: str) -> httpx.Response:
    return httpx.post(f"{system.base_url}/mcp", json=INITIALIZE, headers={**ACCEPT, **auth(name)}, timeout=30)


def test_a_tenant_at_its_mcp_session_cap_is_refused_until_it_ends_one(system: Deployed) -> None:
    opened = [initialize(system, "alice") for _ in range(2)]
    assert all(r.status_code == 200 for r in opened)
    refused = initialize(system, "alice")
    assert refused.status_code == 429 and refused.json()["error"]["data"]["quota"] == "max_mcp_sessions"
    assert initialize(system, "bob").status_code == 200
    session = opened[0].headers["mcp-session-id"]
    ended = httpx.delete(f"{system.base_url}/mcp", headers={**ACCEPT, **auth("alice"), "mcp-session-id": session},
                         timeout=30)
    assert ended.status_code == 200
    assert initialize(system, "alice").status_code == 200

