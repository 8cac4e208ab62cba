"""kill -9 the router under load: Ray restarts it, it re-attaches to running tasks; nothing lost or run twice."""

from __future__ import annotations

import os
import signal
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from orchestrator.adapters.keys import ROUTER_GROUP, Keys
from orchestrator.naming import ROUTER_NAME
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
        old_pid = actor_pid(ROUTER_NAME, settings.namespace)
        os.kill(old_pid, signal.SIGKILL)
        ids = submitting.result(timeout=120)
        records = all_terminal(base, ids, timeout_s=90)
        prompts = {t: p["prompt"] for t, p in zip(ids, load, strict=True)}
        bad = {t: r for t, r in records.items() if r["status"] != "succeeded" or r["result"]["text"] != prompts[t]}
        assert not bad, list(bad.items())[:3]
        # Running tasks were re-attached, not dispatched again: no attempt beyond the first.
        assert all(r["attempts"] == 1 for r in records.values()), [r for r in records.values() if r["attempts"] > 1][:2]
        assert actor_pid(ROUTER_NAME, settings.namespace) != old_pid
        published = announcements(pubsub, client, keys.finished, timeout_s=30)
        assert published == Counter(ids), {t: n for t, n in published.items() if n != 1}
        assert effects(tmp_path) == Counter(ids), "the tool's side-effect log shows an effect twice or missing"
        wait_until(lambda: client.xpending(keys.tasks, ROUTER_GROUP)["pending"] == 0, 15, "no pending entries")
        wait_until(lambda: int(client.get(keys.active) or 0) == 0, 15, "the active counter back to 0")
        dead = rpc_batch(base, [("control", {"action": "dead_letters"})])[0]["result"]["dead_letters"]
        assert dead == [], "nothing here was meant to fail"


def test_queue_order_is_rebuilt_from_redis_after_a_router_kill(redis_server: RedisServer, ray_session: int) -> None:
    settings = make_settings(redis_server.url, tools={"serial": {"kind": "echo", "worker_type": "codegen"}},
                             pools={"codegen": {"workers": 1, "slots": 1}}, router={"aging_interval_s": 0})
    with deployed(settings, ray_session) as system:
        base = system.base_url
        blocker = result(base, "run_task", {"tool": "serial", "prompt": "blocker", "priority": 9,
                                            "context": {"delay_ms": 60_000, "steps": 600}})["task_id"]
        wait_until(lambda: result(base, "get_task", {"task_id": blocker})["status"] == "running", 20, "blocker")
        priorities = [2, 8, 5, 0, 8, 3]
        queued = [result(base, "run_task", {"tool": "serial", "prompt": f"p{p}", "priority": p})["task_id"]
                  for p in priorities]
        wait_until(lambda: sum(result(base, "status")["matrix"]["codegen"].values()) == len(priorities), 20,
                   "the router to have read every queued task")
        os.kill(actor_pid(ROUTER_NAME, settings.namespace), signal.SIGKILL)
        result(base, "cancel_task", {"task_id": blocker})
        records = [finished(base, t, timeout_s=60) for t in queued]
        order = sorted(records, key=lambda r: r["created_at"] + r["queue_wait_ms"] / 1000)
        assert [r["priority"] for r in order] == sorted(priorities, reverse=True)
        assert all(r["attempts"] == 1 for r in records)
