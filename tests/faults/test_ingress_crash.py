"""kill -9 the Serve ingress replica mid-load: every call is answered or fails visibly, and retrying with the same idempotency key does nothing twice."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray.exceptions import GetTimeoutError, RayActorError

from orchestrator.adapters.keys import Keys
from tests import redis_view
from tests.conftest import deployed, make_settings
from tests.faults.load import (
    all_terminal,
    announcement_feed,
    announcements,
    echo_effects,
    effects,
    submit,
)
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration

CLIENTS = 4  # threads each keeping one run_task call in flight
WAITED_TASK_MS = 1000
CALL_TIMEOUT_S = 30.0  # a call the dead replica never answers fails on this instead of hanging the test
SERVE_NAMESPACE = "serve"


@dataclass(slots=True)
class Call:
    """One run_task call as the client saw it."""

    key: str
    params: dict[str, Any]
    sent_at: float
    answered_at: float | None = None
    task_id: str | None = None
    duplicate: bool | None = None
    failure: str | None = None  # HTTP error, connection error, timeout or JSON-RPC error


def replica_name(app: str) -> str | None:
    """The name of the app's live ingress replica actor (Serve names it SERVE_REPLICA::<app>#RpcIngress#<id>)."""
    prefix = f"SERVE_REPLICA::{app}#RpcIngress"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == SERVE_NAMESPACE and a["name"].startswith(prefix)]
    return names[0] if len(names) == 1 else None


def replica_pid(name: str) -> int | None:
    """The replica's pid, or None while it does not answer."""
    try:
        handle = ray.get_actor(name, namespace=SERVE_NAMESPACE)
        return int(ray.get(handle.__ray_call__.remote(lambda _self: os.getpid()), timeout=10))
    except (ValueError, RayActorError, GetTimeoutError):
        return None


def call_run_task(client: httpx.Client, base: str, call: Call) -> None:
    """POST one run_task; record the task id or how it failed."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "run_task", "params": call.params}
    try:
        reply = client.post(f"{base}/v1/rpc", json=body, timeout=CALL_TIMEOUT_S)
    except httpx.HTTPError as exc:
        call.failure = f"transport: {type(exc).__name__}"
        return
    finally:
        call.answered_at = time.time()
    if reply.status_code != 200:
        call.failure = f"http {reply.status_code}"
        return
    try:
        answer = reply.json()
    except ValueError:
        call.failure = f"non-JSON 200: {reply.text[:100]!r}"  # asserted against below: never acceptable
        return
    if "error" in answer:
        call.failure = f"rpc {answer['error'].get('code')}"
        return
    result = answer.get("result") or {}
    call.task_id, call.duplicate = result.get("task_id"), result.get("duplicate", False)
    if not call.task_id:
        call.failure = f"result without task_id: {answer!r:.200}"


def keep_calling(base: str, run: str, client_no: int, stop: threading.Event, calls: list[Call]) -> None:
    """Send run_task calls back to back, each with a fresh idempotency key, until `stop`."""
    with httpx.Client() as client:
        i = 0
        while not stop.is_set():
            key = f"{run}-{client_no}-{i}"
            params: dict[str, Any] = {"tool": "echo", "prompt": key, "idempotency_key": key}
            if i % 2 == 0:  # half the calls wait for a slow task: the kill catches accepted calls in their wait
                params |= {"context": {"delay_ms": WAITED_TASK_MS}, "wait": 10}
            call = Call(key, params, time.time())
            calls.append(call)  # list.append is atomic; the main thread only reads
            call_run_task(client, base, call)
            i += 1


def test_ingress_replica_killed_mid_load_drops_nothing_and_retries_do_nothing_twice(
    redis_server: RedisServer, ray_session: int, tmp_path: Path
) -> None:
    settings = make_settings(redis_server.url, pools={"reasoning": {"workers": 1, "slots": 16}},
                             tools=echo_effects(tmp_path))
    keys = Keys(settings.redis.prefix)
    run = uuid.uuid4().hex[:8]
    calls: list[Call] = []
    stop = threading.Event()
    with announcement_feed(redis_server.url, keys.finished) as (store, pubsub), \
            deployed(settings, ray_session) as system:
        base = system.base_url
        old_name = replica_name(system.name)
        assert old_name is not None
        old_pid = replica_pid(old_name)
        assert old_pid is not None
        clients = [threading.Thread(target=keep_calling, args=(base, run, n, stop, calls), daemon=True)
                   for n in range(CLIENTS)]
        # A backlog of 1,000 tasks keeps the system under load while the replica dies.
        backlog = submit(base, [{"tool": "echo", "prompt": f"b{i}", "idempotency_key": f"{run}-b{i}",
                                 "context": {"delay_ms": 20}} for i in range(1000)])
        try:
            for thread in clients:
                thread.start()
            wait_until(lambda: sum(c.task_id is not None for c in calls) >= 20, 30, "the load to be accepted")

            def accepted_call_in_flight() -> bool:
                """A call still unanswered whose task Redis already holds, running (so it stays in its wait)."""
                waiting = [c for c in list(calls) if c.answered_at is None and "wait" in c.params]
                task_ids = [redis_view.idempotent_task(store, settings, c.key) for c in waiting]
                return any(t and (redis_view.stored(store, settings, t) or {}).get("s") == "running" for t in task_ids)

            wait_until(accepted_call_in_flight, 15, "a call waiting on its accepted, running task")
            os.kill(old_pid, signal.SIGKILL)
            killed_at = time.time()

            # Serve notices the dead replica and starts a new one; the load keeps going meanwhile.
            wait_until(lambda: any(c.sent_at > killed_at and c.task_id for c in calls), 45,
                       "a call sent after the kill to be accepted")
            recovered_at = time.time()
        finally:
            stop.set()
            for thread in clients:
                thread.join(CALL_TIMEOUT_S + 5)
        assert not any(thread.is_alive() for thread in clients)
        new_name = replica_name(system.name)
        assert new_name is not None and new_name != old_name, (old_name, new_name)

        # Every call was answered with a task id or failed visibly: nothing hung, nothing half-answered.
        assert all(c.answered_at is not None for c in calls)
        odd = [c for c in calls if c.failure and not c.failure.startswith(("transport:", "http ", "rpc "))]
        assert not odd, odd[:3]
        failed = [c for c in calls if c.failure]
        accepted = [c for c in calls if c.task_id]
        assert len(failed) + len(accepted) == len(calls)

        # A task id that was returned names a task in Redis, created by that very call.
        for call in accepted:
            assert (redis_view.stored(store, settings, call.task_id) or {}).get("k") == call.key, call

        # Retry every failed call with the SAME key: a task id each time. A call the dead replica had in
        # fact accepted returns that task (duplicate: true); one it had not, a new task.
        accepted_anyway = {c.key: redis_view.idempotent_task(store, settings, c.key) for c in failed}
        assert any(accepted_anyway.values()), "the kill caught no accepted call in flight"
        # What the clients saw around the kill (shown with -s).
        print(f"{len(calls)} calls, {len(failed)} failed ({Counter(c.failure for c in failed)}), "
              f"{sum(bool(t) for t in accepted_anyway.values())} of them accepted before the kill; "
              f"a new call was accepted {recovered_at - killed_at:.1f}s after the kill")
        retried: dict[str, str] = {}
        with httpx.Client() as client:
            for call in failed:
                again = Call(call.key, {k: v for k, v in call.params.items() if k != "wait"}, time.time())
                call_run_task(client, base, again)
                assert again.task_id is not None, (call, again)
                earlier = accepted_anyway[call.key]
                assert again.duplicate is (earlier is not None), (call, again, earlier)
                assert earlier is None or again.task_id == earlier, (call, again, earlier)
                retried[call.key] = again.task_id
            # A retry of a call that was answered changes nothing either.
            for call in accepted[:5]:
                again = Call(call.key, {k: v for k, v in call.params.items() if k != "wait"}, time.time())
                call_run_task(client, base, again)
                assert (again.task_id, again.duplicate) == (call.task_id, True), (call, again)

        # One task per key: as many distinct tasks in Redis as distinct keys, each key's task the one we hold.
        task_of = {c.key: c.task_id for c in accepted} | retried | {f"{run}-b{i}": t for i, t in enumerate(backlog)}
        assert len(task_of) == len({c.key for c in calls}) + len(backlog)
        stored = redis_view.task_ids(store, settings)
        assert stored == set(task_of.values()), (len(stored), len(set(task_of.values())))
        assert len(set(task_of.values())) == len(task_of)

        # Every task finishes once, with its own prompt; each result stored (announced) exactly once.
        records = all_terminal(base, list(task_of.values()), timeout_s=60)
        prompt_of = {k: k.removeprefix(f"{run}-") if k.startswith(f"{run}-b") else k for k in task_of}
        bad = {k: records[t] for k, t in task_of.items()
               if records[t]["status"] != "succeeded" or records[t]["result"]["text"] != prompt_of[k]}
        assert not bad, list(bad.items())[:3]
        published = announcements(pubsub, store, keys.finished, timeout_s=15)
        assert published == Counter(task_of.values()), {t: n for t, n in published.items() if n != 1}
        assert effects(tmp_path) == Counter(task_of.values()), "the tool's side-effect log shows an effect twice"
        wait_until(lambda: redis_view.pending(store, settings) == 0, 15, "no pending deliveries")
        wait_until(lambda: redis_view.active(store, settings) == 0, 15, "the active counter back to 0")
