"""API keys managed at runtime (kept in Redis), over real HTTP on two ingress replicas: created keys work on
every face within a second, revoked and expired ones are refused as fast, settings keys keep working, failed
authentications are counted and logged without the key, and the `orchestrator keys` commands end to end."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from orchestrator.adapters.keys import Keys
from orchestrator.auth import hash_key, new_key
from tests.conftest import Deployed, deployed, make_settings
from tests.support import RedisServer, eventually, wait_until

pytestmark = pytest.mark.integration

OPS, SCRAPER = new_key(), new_key()
SETTINGS_KEYS = {"ops": {"hash": hash_key(OPS), "tenant": "ops", "scopes": ["admin"]},
                 "scraper": {"hash": hash_key(SCRAPER), "tenant": "ops", "scopes": ["metrics"]}}
ACCEPT = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
WITHIN_S = 1.0  # what the README promises for a created, revoked or expired key on every replica
PER_FACE = 3  # requests per face in one check, all at once: each replica gets some (their logs show it)


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int) -> Iterator[Deployed]:
    settings = make_settings(redis_server.url, auth={"keys": SETTINGS_KEYS}, http={"replicas": 2})
    with deployed(settings, ray_session) as running:
        yield running


def bearer(key: str | None) -> dict[str, str]:
    return {} if key is None else {"authorization": f"Bearer {key}"}


def rpc(system: Deployed, key: str | None, method: str, params: Any, path: str = "v2/rpc") -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    reply = httpx.post(f"{system.base_url}/{path}", json=body, headers=bearer(key), timeout=60)
    assert reply.status_code in (200, 401), reply.text
    return dict(reply.json())


def ok(system: Deployed, key: str | None, method: str, params: Any) -> Any:
    reply = rpc(system, key, method, params)
    assert "error" not in reply, reply
    return reply["result"]


def manage(system: Deployed, **params: Any) -> dict[str, Any]:
    """The `keys` admin method, with the settings' admin key."""
    return dict(ok(system, OPS, "keys", params))


def finished_task_of(system: Deployed, tenant: str) -> str:
    task_id = ok(system, OPS, "inject", {"action": "add", "tenant": tenant,
                                         "task": {"tool": "echo", "input": {"prompt": "mine"}}})["task_id"]
    wait_until(lambda: ok(system, OPS, "get_task", {"task_id": task_id})["status"] == "succeeded", 30,
               "the tenant's task to finish")
    return str(task_id)


async def every_face(system: Deployed, key: str, task_id: str) -> dict[str, int]:
    """HTTP status of each face for `key` (several requests each, at once), the worst one per face."""
    base = system.base_url
    discover = {"jsonrpc": "2.0", "id": 1, "method": "rpc.discover", "params": {}}
    status = {"jsonrpc": "2.0", "id": 1, "method": "status", "params": {}}
    tools = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    async with httpx.AsyncClient(headers=bearer(key), timeout=30) as http:
        faces = {
            "v1 status": lambda: http.post(f"{base}/v1/status", json=status),
            "v2 rpc": lambda: http.post(f"{base}/v2/rpc", json=discover),
            "sse": lambda: http.get(f"{base}/v1/tasks/{task_id}/events"),
            "mcp": lambda: http.post(f"{base}/mcp", json=tools, headers=ACCEPT),
            "metrics": lambda: http.get(f"{base}/metrics"),
        }
        names = [name for name in faces for _ in range(PER_FACE)]
        replies = await asyncio.gather(*(faces[name]() for name in names))
    worst: dict[str, int] = {}
    for name, reply in zip(names, replies):
        code = reply.status_code
        if code == 200 and reply.headers["content-type"].startswith("application/json") and "error" in reply.json():
            code = 299  # a JSON-RPC error on a 200: not accepted either
        worst[name] = max(worst.get(name, 0), code)
    return worst


def replica_logs(system: Deployed) -> dict[Path, str]:
    """Each ingress replica's Serve log (access lines and our warnings)."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"  # type: ignore[attr-defined]
    return {path: path.read_text(errors="replace") for path in logs.glob(f"replica_{system.name}_RpcIngress_*.log")}


async def on_every_replica(system: Deployed, key: str, task_id: str, expect: int) -> None:
    """Every face answers `expect` for `key` in a check started within WITHIN_S, and both replicas serve it."""
    sizes = {path: len(text) for path, text in replica_logs(system).items()}
    assert len(sizes) == 2, sizes

    async def all_answer() -> bool:
        return set((await every_face(system, key, task_id)).values()) == {expect}

    await eventually(all_answer, WITHIN_S, f"every face of every replica to answer {expect}")

    async def both_served() -> bool:  # Serve's router may favour one replica for a while: more bursts, same answer
        if len([p for p, text in replica_logs(system).items() if len(text) > sizes[p]]) == 2:
            return True
        assert await all_answer(), f"a face answered other than {expect} after all had"
        return False

    await eventually(both_served, 30, "both replicas to serve a burst")


def scrape_failures(system: Deployed) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    reply = httpx.get(f"{system.base_url}/metrics", headers=bearer(SCRAPER), timeout=30)
    assert reply.status_code == 200
    return {s.labels["reason"]: s.value for f in text_string_to_metric_families(reply.text)
            if f.name == "orchestrator_auth_failures" for s in f.samples if s.name.endswith("_total")}


async def test_failed_authentications_are_counted_by_reason_and_logged_without_the_key(system: Deployed) -> None:
    offsets = worker_logs()
    before = scrape_failures(system)
    assert set(before) == {"missing", "unknown", "expired", "revoked"}
    guessed = "orch_never-issued-" + new_key()[5:]
    expiring = manage(system, action="create", tenant="acme", scopes=["read"], ttl_s=0.5)
    revoked = manage(system, action="create", tenant="acme", scopes=["read"], name="to-revoke")["key"]
    manage(system, action="revoke", name="to-revoke")
    await eventually(lambda: asyncio.to_thread(lambda: "error" in rpc(system, expiring["key"], "status", {})), 5,
                     "the short key to expire")
    sent = {"missing": None, "unknown": guessed, "revoked": revoked, "expired": expiring["key"]}
    for key in sent.values():
        for _ in range(3):
            assert rpc(system, key, "status", {})["error"]["code"] == -32011
    after: dict[str, float] = {}

    async def counted() -> bool:
        after.update(await asyncio.to_thread(scrape_failures, system))
        return all(after[reason] - before[reason] >= 3 for reason in sent)

    await eventually(counted, 10, "every replica's failures to be counted")
    logs = ""

    async def logged() -> bool:
        nonlocal logs
        logs = worker_logs_since(offsets)
        return all(f"authentication refused: reason={reason} count=" in logs for reason in sent)

    await eventually(logged, 10, "a line per reason in the replicas' logs")
    assert "keys=to-revoke" in logs  # the names of ended keys help the operator; names are not secret
    for key in (guessed, revoked, expiring["key"]):
        assert key not in logs and key[5:20] not in logs


def worker_logs() -> dict[Path, int]:
    """The size of each Ray worker's stderr log: where a replica's warnings go (and, under `orchestrator up`, on
    to the daemon's log)."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())  # type: ignore[attr-defined]
    return {path: path.stat().st_size for path in logs.glob("worker-*.err")}


def worker_logs_since(offsets: dict[Path, int]) -> str:
    """What the workers logged after `offsets` (modules run one after the other: only this one's replicas)."""
    text = []
    for path in worker_logs():
        with path.open("rb") as log:
            log.seek(offsets.get(path, 0))
            text.append(log.read().decode(errors="replace"))
    return "\n".join(text)


async def test_a_key_created_at_runtime_works_on_every_replica_at_once_and_a_revoked_one_is_refused(
        system: Deployed) -> None:
    task_id = finished_task_of(system, "acme")
    for _ in range(3):  # both replicas are up and hold a snapshot of the keys before the change
        await every_face(system, OPS, task_id)
    created = manage(system, action="create", tenant="acme", scopes=["read", "metrics"], name="acme-ci")
    key = created["key"]
    assert key.startswith("orch_") and created["info"] == {
        "name": "acme-ci", "tenant": "acme", "scopes": ["metrics", "read"], "source": "runtime", "status": "active",
        "created_at": created["info"]["created_at"], "expires_at": None, "revoked_at": None, "created_by": "ops"}
    await on_every_replica(system, key, task_id, 200)
    mine = ok(system, key, "get_task", {"task_id": task_id})
    assert mine["tenant"] == "acme"
    assert rpc(system, key, "cancel_task", {"task_id": task_id})["error"]["code"] == -32012  # no submit scope

    # Only the hash is stored; the key is in no Redis value, and in no audit entry.
    conn = redis.Redis.from_url(system.settings.redis.url, decode_responses=True)
    family = Keys(system.settings.redis.prefix).api_keys()
    assert conn.hexists(family["records"], hash_key(key))
    for name in conn.scan_iter(f"*{system.settings.redis.prefix}*", count=1000):
        if conn.type(name) == "hash":
            assert key not in json.dumps(conn.hgetall(name))
    conn.close()

    revoked = manage(system, action="revoke", name="acme-ci")
    assert revoked["info"]["status"] == "revoked" and revoked["key"] is None
    await on_every_replica(system, key, task_id, 401)
    refused = rpc(system, key, "status", {}, "v1/rpc")
    assert refused["error"] == {"code": -32011, "message": "unauthenticated: API key revoked",
                                "data": {"retryable": False, "reason": "API key revoked"}}
    assert [k["name"] for k in manage(system, action="list")["keys"]] == ["ops", "scraper"]
    listed = {k["name"]: k for k in manage(system, action="list", all=True)["keys"]}
    assert listed["acme-ci"]["status"] == "revoked" and listed["ops"]["source"] == "settings"
    audit = ok(system, OPS, "control", {"action": "audit_log", "count": 10})["audit_log"]
    changes = [(e["who"], e["action"], e["details"]["name"]) for e in audit if e["action"].startswith("keys.")]
    assert changes[:2] == [("ops", "keys.revoke", "acme-ci"), ("ops", "keys.create", "acme-ci")]
    assert key not in json.dumps(audit)
    # The name is free again; the new key is another one.
    again = manage(system, action="create", tenant="acme", scopes=["read"], name="acme-ci")
    assert again["key"] != key and ok(system, again["key"], "get_task", {"task_id": task_id})["tenant"] == "acme"
    manage(system, action="revoke", name="acme-ci")


async def test_an_expiring_key_stops_working_after_its_expiry(system: Deployed) -> None:
    created = manage(system, action="create", tenant="acme", scopes=["read"], ttl_s=2)
    key, expires_at = created["key"], created["info"]["expires_at"]
    assert created["info"]["name"].startswith("acme-") and expires_at > time.time()
    ok(system, key, "list_workflows", {})  # works meanwhile

    async def refused() -> bool:
        return "error" in rpc(system, key, "list_workflows", {})

    await eventually(refused, expires_at - time.time() + WITHIN_S, "the key to expire")
    assert time.time() >= expires_at - 0.05  # not before (the same clock: one machine)
    assert rpc(system, key, "list_workflows", {})["error"]["message"] == "unauthenticated: API key expired"
    statuses = {k["name"]: k["status"] for k in manage(system, action="list", all=True)["keys"]}
    assert statuses[created["info"]["name"]] == "expired"
    at = manage(system, action="create", tenant="acme", scopes=["read"],
                expires_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600)))
    assert 3590 < at["info"]["expires_at"] - time.time() <= 3600
    manage(system, action="revoke", name=at["info"]["name"])


def test_settings_keys_keep_working_and_cannot_be_revoked_at_runtime(system: Deployed) -> None:
    refused = rpc(system, OPS, "keys", {"action": "revoke", "name": "scraper"})["error"]
    assert refused["code"] == -32602
    assert refused["data"]["fields"]["params.name"].startswith(
        "key 'scraper' is configured in settings (auth.keys.scraper): it cannot be revoked at runtime")
    assert httpx.get(f"{system.base_url}/metrics", headers=bearer(SCRAPER), timeout=30).status_code == 200
    taken = rpc(system, OPS, "keys", {"action": "create", "tenant": "x", "scopes": ["read"], "name": "ops"})
    assert "configured in settings" in taken["error"]["data"]["fields"]["params.name"]
    missing = rpc(system, OPS, "keys", {"action": "create", "tenant": "x"})["error"]["data"]["fields"]
    assert missing == {"params.scopes": "required for action 'create'"}
    assert rpc(system, OPS, "keys", {"action": "revoke", "name": "never-made"})["error"]["code"] == -32602
    manage(system, action="create", tenant="x", scopes=["read"], name="twice")
    twice = rpc(system, OPS, "keys", {"action": "create", "tenant": "x", "scopes": ["read"], "name": "twice"})
    assert "revoke it first" in twice["error"]["data"]["fields"]["params.name"]
    manage(system, action="revoke", name="twice")
    reader = manage(system, action="create", tenant="x", scopes=["read"])["key"]
    assert rpc(system, reader, "keys", {"action": "list"})["error"]["code"] == -32012  # admin only


async def test_runtime_keys_alone_switch_auth_on_for_good(redis_server: RedisServer, ray_session: int) -> None:
    """No key in settings: open on loopback until the first runtime key exists; revoking it does not reopen."""
    with deployed(make_settings(redis_server.url), ray_session) as system:
        assert ok(system, None, "status", {})["pools"]  # auth off: the anonymous operator
        created = manage_as(system, None, action="create", tenant="ops", scopes=["admin"], name="first-admin")
        admin = created["key"]

        async def closed() -> bool:
            return (await asyncio.to_thread(rpc, system, None, "status", {})).get("error", {}).get("code") == -32011

        await eventually(closed, WITHIN_S, "auth to switch on")
        assert ok(system, admin, "status", {})["pools"]
        manage_as(system, admin, action="revoke", name="first-admin")
        await eventually(lambda: asyncio.to_thread(lambda: "error" in rpc(system, admin, "status", {})), WITHIN_S,
                         "the revoked admin key to be refused")
        assert rpc(system, None, "status", {})["error"]["code"] == -32011  # still on: nobody got in by revoking


def manage_as(system: Deployed, key: str | None, **params: Any) -> dict[str, Any]:
    return dict(ok(system, key, "keys", params))


# ---------------------------------------------------------------- the CLI


def cli(system: Deployed, *args: str, key: str | None = OPS) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(ORCH_REDIS__PREFIX=system.settings.redis.prefix, RAY_USAGE_STATS_ENABLED="0")
    env.update(ORCH_AUTH__KEYS__OPS__HASH=hash_key(OPS), ORCH_AUTH__KEYS__OPS__TENANT="ops",
               ORCH_AUTH__KEYS__OPS__SCOPES='["admin"]')  # as the operator's own settings name it
    if key is not None:
        env["ORCH_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "keys", *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def cli_ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


def test_the_keys_commands_end_to_end(system: Deployed) -> None:
    url = ["--url", system.base_url]
    printed = cli_ok(cli(system, "create", "--tenant", "cli-t", "--scope", "read", "--name", "cli-made", "--ttl",
                         "1h", *url))
    key = printed.splitlines()[1]
    assert printed.startswith("API key (shown only now") and key.startswith("orch_")
    assert "name cli-made · tenant cli-t · scopes read · expires 20" in printed
    assert ok(system, key, "list_workflows", {}) is not None
    table = cli_ok(cli(system, "list", *url))
    assert "cli-made" in table and "scraper" in table and "settings" in table and key not in table
    listed = {k["name"]: k for k in json.loads(cli_ok(cli(system, "list", "--json", *url)))}
    assert listed["cli-made"]["created_by"] == "ops" and 3590 < listed["cli-made"]["expires_at"] - time.time() <= 3600

    refused = cli(system, "revoke", "ops", *url)
    assert refused.returncode == 1 and "it cannot be revoked at runtime" in refused.stderr
    assert "revoked API key cli-made (tenant cli-t)" in cli_ok(cli(system, "revoke", "cli-made", *url))
    wait_until(lambda: "error" in rpc(system, key, "list_workflows", {}), WITHIN_S, "the revoked key to be refused")
    unauthenticated = cli(system, "list", *url, key=None)
    assert unauthenticated.returncode == 1 and "error -32011" in unauthenticated.stderr

    # Straight to Redis (no admin key): the bootstrap and break-glass path; it works on the running system too.
    direct = ["--redis-url", system.settings.redis.url]
    made = json.loads(cli_ok(cli(system, "create", "--tenant", "ops", "--scope", "admin", "--name", "break-glass",
                                 "--json", *direct, key=None)))
    assert made["info"]["created_by"].startswith("cli:")
    wait_until(lambda: "error" not in rpc(system, made["key"], "status", {}), WITHIN_S, "the new key to work")
    assert "break-glass" in cli_ok(cli(system, "list", *direct, key=None))
    settings_key = cli(system, "revoke", "ops", *direct, key=None)
    assert settings_key.returncode == 1 and "name: key 'ops' is configured in settings" in settings_key.stderr
    cli_ok(cli(system, "revoke", "break-glass", *direct, key=None))
    wait_until(lambda: "error" in rpc(system, made["key"], "status", {}), WITHIN_S, "the key to be refused")

    offline = cli_ok(cli(system, "create", "--tenant", "acme", "--scope", "admin", "--name", "boot", "--for-settings",
                         key=None))
    assert '[auth.keys."boot"]' in offline and f'hash = "{hash_key(offline.splitlines()[1])}"' in offline
    bad = cli(system, "create", "--tenant", "acme", "--scope", "read", "--ttl", "soon", *url)
    assert bad.returncode == 1 and "--ttl 'soon': give a positive duration" in bad.stderr
