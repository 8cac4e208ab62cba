"""kill -9 a router under load: workers go on taking tasks from Redis (no router is on their path); another router
takes over the dead one's shards within seconds (fenced: the dead one's lease no longer writes); Ray restarts
it. Nothing lost, nothing run twice."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from orchestrator.adapters.keys import Keys
from orchestrator.naming import router_name
from tests import redis_view
from tests.conftest import deployed, make_settings
from tests.faults.load import (
    actor_pid,
    all_terminal,
    announcement_feed,
    announcements,
    checkpointed,
    echo_effects,
    effects,
    rpc_batch,
    submit,
)
from tests.integration.test_spine import finished, result
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration


def test_router_killed_under_load_dispatches_nothing_twice(redis_server: RedisServer, ray_session: int,
                                                           tmp_path: Path) -> None:
    settings = make_settings(redis_server.url, pools={"reasoning": {"workers": 2, "slots": 8}},
                             tools=echo_effects(tmp_path))
    keys = Keys(settings.redis.prefix)
    slow = {"delay_ms": 400, "steps": 4}
    load = [{"tool": "echo", "prompt": f"r{i}", "context": slow if i % 5 == 0 else {}} for i in range(1000)]
    with announcement_feed(redis_server.url, keys.finished) as (client, pubsub), \
            deployed(settings, ray_session) as system, ThreadPoolExecutor(1) as pool:
        base = system.base_url
        submitting = pool.submit(submit, base, load)  # the kill lands mid-submission, with tasks running
        wait_until(lambda: bool(checkpointed(base)), 30, "checkpointed tasks running")
        old_pid = actor_pid(router_name(0), settings.namespace)
        os.kill(old_pid, signal.SIGKILL)
        ids = submitting.result(timeout=120)
        records = all_terminal(base, ids, timeout_s=90)
        prompts = {t: p["prompt"] for t, p in zip(ids, load, strict=True)}
        bad = {t: r for t, r in records.items() if r["status"] != "succeeded" or r["result"]["text"] != prompts[t]}
        assert not bad, list(bad.items())[:3]
        # No router is on the tasks' path: nothing was run again.
        assert all(r["attempts"] == 1 for r in records.values()), [r for r in records.values() if r["attempts"] > 1][:2]
        assert actor_pid(router_name(0), settings.namespace) != old_pid
        published = announcements(pubsub, client, keys.finished, timeout_s=30)
        assert published == Counter(ids), {t: n for t, n in published.items() if n != 1}
        assert effects(tmp_path) == Counter(ids), "the tool's side-effect log shows an effect twice or missing"
        wait_until(lambda: redis_view.pending(client, settings) == 0, 15, "no pending deliveries")
        wait_until(lambda: redis_view.active(client, settings) == 0, 15, "the active counter back to 0")
        dead = rpc_batch(base, [("control", {"action": "dead_letters"})])[0]["result"]["dead_letters"]
        assert dead == [], "nothing here was meant to fail"


def test_queue_order_is_kept_in_redis_across_a_router_kill(redis_server: RedisServer, ray_session: int) -> None:
    settings = make_settings(redis_server.url, tools={"serial": {"kind": "echo", "worker_type": "codegen"}},
                             pools={"codegen": {"workers": 1, "slots": 1}}, router={"aging_interval_s": 0})
    with deployed(settings, ray_session) as system:
        base = system.base_url
        blocker = result(base, "run_task", {"tool": "serial", "prompt": "blocker", "priority": 9,
                                            "context": {"delay_ms": 60_000, "steps": 600}})["task_id"]
        wait_until(lambda: result(base, "get_task", {"task_id": blocker})["status"] == "running", 20, "blocker")
        priorities = [2, 8, 5, 0, 8, 3]
        queued = [result(base, "run_task", {"tool": "serial", "prompt": f"p{p}", "priority": p,  # 5 ms: starts apart
                                            "context": {"delay_ms": 5}})["task_id"]
                  for p in priorities]
        os.kill(actor_pid(router_name(0), settings.namespace), signal.SIGKILL)
        result(base, "cancel_task", {"task_id": blocker})
        records = [finished(base, t, timeout_s=60) for t in queued]
        order = sorted(records, key=lambda r: r["created_at"] + r["queue_wait_ms"] / 1000)
        assert [r["priority"] for r in order] == sorted(priorities, reverse=True)
        assert all(r["attempts"] == 1 for r in records)


def test_a_router_shard_killed_under_load_is_taken_over_and_fenced(redis_server: RedisServer, ray_session: int,
                                                                   tmp_path: Path) -> None:
    """Two routers share four shards. SIGKILL the one that holds shards 1 and 3 under load: their leases get a new
    holder within seconds (the other router, or the restarted one, with a larger fencing token) and the dead
    router's lease value no longer writes; every task runs once."""
    settings = make_settings(redis_server.url, redis={"shards": 4},
                             router={"replicas": 2, "lease_s": 1.5, "visibility_timeout_s": 3,
                                     "heartbeat_interval_s": 0.5},
                             pools={"reasoning": {"workers": 2, "slots": 8}}, tools=echo_effects(tmp_path))
    keys = Keys(settings.redis.prefix)
    slow = {"delay_ms": 600, "steps": 3}
    load = [{"tool": "echo", "prompt": f"s{i}", "context": slow if i % 4 == 0 else {}} for i in range(1200)]
    with announcement_feed(redis_server.url, keys.finished) as (client, pubsub), \
            deployed(settings, ray_session) as system, ThreadPoolExecutor(1) as pool:
        base = system.base_url
        before = {s: client.get(keys.shard(s).lease) for s in range(4)}
        assert {before[1].split(".")[0], before[3].split(".")[0]} == {router_name(1)}, before
        submitting = pool.submit(submit, base, load)
        wait_until(lambda: bool(checkpointed(base)), 30, "checkpointed tasks running")
        killed_at = time.monotonic()
        os.kill(actor_pid(router_name(1), settings.namespace), signal.SIGKILL)

        def taken_over() -> bool:
            now = {s: client.get(keys.shard(s).lease) for s in (1, 3)}
            return all(v is not None and int(v.rsplit(":", 1)[1]) > int(before[s].rsplit(":", 1)[1])
                       for s, v in now.items())

        wait_until(taken_over, 15, "shards 1 and 3 to get a new lease holder")
        takeover_s = time.monotonic() - killed_at
        print(f"shards of the killed router held again {takeover_s:.1f}s after the kill")
        store = redis_view.client(settings)
        assert redis_view.requeue_as(store, settings, shard=1, holder=before[1]) == -1, "the dead lease still writes"
        ids = submitting.result(timeout=120)
        records = all_terminal(base, ids, timeout_s=120)
        prompts = {t: p["prompt"] for t, p in zip(ids, load, strict=True)}
        assert all(r["status"] == "succeeded" and r["result"]["text"] == prompts[t] for t, r in records.items())
        published = announcements(pubsub, client, keys.finished, timeout_s=30)
        assert published == Counter(ids), {t: n for t, n in published.items() if n != 1}
        assert effects(tmp_path) == Counter(ids), "the tool's side-effect log shows an effect twice or missing"
        wait_until(lambda: redis_view.pending(client, settings) == 0, 15, "no pending deliveries")
        wait_until(lambda: redis_view.active(client, settings) == 0, 15, "the active counter back to 0")
