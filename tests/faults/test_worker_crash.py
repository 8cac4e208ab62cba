"""kill -9 a worker under load: Ray restarts it, its tasks run again (resuming their checkpoints); nothing lost or stored twice."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from orchestrator.adapters.keys import Keys
from orchestrator.adapters.task_store import Submission, TaskStore
from orchestrator.intake import build_task
from orchestrator.models import RunTaskParams
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
    get_tasks,
    restarted_pid,
    rpc_batch,
    submit,
)
from tests.integration.test_spine import result
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration

VICTIM = "worker:reasoning:0"

def test_worker_killed_under_load_loses_nothing_and_stores_each_result_once(
    redis_server: RedisServer, ray_session: int, tmp_path: Path
) -> None:
    settings = make_settings(redis_server.url, pools={"reasoning": {"workers": 2, "slots": 8}},
                             tools=echo_effects(tmp_path))
    keys = Keys(settings.redis.prefix)
    slow = {"delay_ms": 300, "steps": 3}
    load = [{"tool": "echo", "prompt": f"w{i}", "context": slow if i % 5 == 0 else {}} for i in range(1000)]
    with announcement_feed(redis_server.url, keys.finished) as (client, pubsub), \
            deployed(settings, ray_session) as system, ThreadPoolExecutor(1) as pool:
        base, namespace = system.base_url, settings.namespace
        old_pid = actor_pid(VICTIM, namespace)
        submitting = pool.submit(submit, base, load)  # in the background: the kill may land mid-submission
        victims: dict[str, int] = {}

        def victim_mid_task() -> bool:
            victims.update(checkpointed(base, VICTIM))
            return bool(victims)

        wait_until(victim_mid_task, 30, f"a checkpointed task running on {VICTIM}")
        os.kill(old_pid, signal.SIGKILL)
        killed_at = time.time()
        ids = submitting.result(timeout=60)
        new_pid: list[int] = []

        def restarted() -> bool:
            pid = restarted_pid(VICTIM, namespace, old_pid)
            new_pid.extend([pid] if pid is not None else [])
            return bool(new_pid)

        wait_until(restarted, 60, f"Ray to restart {VICTIM}")
        restarted_at = time.time()
        # More concurrent slow tasks than one worker's slots, so the restarted worker must take some.
        after = submit(base, [{"tool": "echo", "prompt": f"a{i}", "context": {"delay_ms": 200, "steps": 2}}
                              for i in range(24)])
        records = all_terminal(base, ids + after, timeout_s=60)

        prompts = {t: p["prompt"] for t, p in zip(ids, load, strict=True)} | {t: f"a{i}" for i, t in enumerate(after)}
        assert len(set(ids + after)) == len(load) + len(after)
        bad = {t: r for t, r in records.items() if r["status"] != "succeeded" or r["result"]["text"] != prompts[t]}
        assert not bad, list(bad.items())[:3]
        attempts = Counter(r["attempts"] for r in records.values())
        assert set(attempts) <= {1, 2}, attempts  # one kill: at most one extra attempt per task

        # The tasks caught mid-run on the killed worker ran once more, resuming from their checkpoint.
        for task_id, step in victims.items():
            record = records[task_id]
            if record["attempts"] == 1:  # it finished in the instant between our look and the kill
                assert record["finished_at"] <= killed_at, record
                continue
            assert record["resumed_from"] is not None and record["resumed_from"]["step"] >= step, record
        assert any(records[t]["attempts"] == 2 for t in victims), {t: records[t] for t in victims}
        for record in records.values():
            if record["attempts"] > 1 and record["resumed_from"] is not None:
                assert 1 <= record["resumed_from"]["step"] < record["result"]["steps"], record
            if record["result"]["steps"] == 1:  # a single-step echo never checkpoints
                assert record["resumed_from"] is None, record
            assert record["progress"]["step"] == record["result"]["steps"], record
            assert record["created_at"] <= record["started_at"] <= record["finished_at"], record

        # Ray restarted the worker (a new process under the same name) and it takes work again.
        assert new_pid and new_pid[0] != old_pid
        assert any(r["worker"] == VICTIM and r["started_at"] >= restarted_at for r in records.values()), \
            "the restarted worker took no task"
        assert {records[t]["worker"] for t in after} <= {"worker:reasoning:0", "worker:reasoning:1"}

        # Each result stored once: one finish announcement per task, nothing left pending or counted.
        published = announcements(pubsub, client, keys.finished, timeout_s=30)
        assert published == Counter(ids + after), {t: n for t, n in published.items() if n != 1}
        assert effects(tmp_path) == Counter(ids + after), "the tool's side-effect log shows an effect twice or missing"
        wait_until(lambda: redis_view.pending(client, settings) == 0, 15, "no pending deliveries")
        wait_until(lambda: redis_view.active(client, settings) == 0, 15, "the active counter back to 0")
        dead = rpc_batch(base, [("control", {"action": "dead_letters"})])[0]["result"]["dead_letters"]
        assert dead == [], "nothing here was meant to fail"


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for one test that leaves a large backlog behind (the session's stays small)."""
    server = RedisServer().start()
    yield server
    server.stop()


def test_a_silent_worker_behind_a_backlog_is_found_and_its_tasks_run_before_the_backlog(
        own_redis: RedisServer, ray_session: int) -> None:
    """SIGSTOP a worker while 50,000 tasks wait: the sweep looks at each worker's own deliveries (the backlog
    waits in the queues, not among them), so the silent worker's tasks are taken back after the visibility
    timeout and run again — resuming their checkpoints, at their old place, ahead of the backlog."""
    settings = make_settings(own_redis.url, pools={"reasoning": {"workers": 2, "slots": 2}},
                             router={"visibility_timeout_s": 3.0, "heartbeat_interval_s": 0.5})
    with deployed(settings, ray_session) as system:
        base, namespace = system.base_url, settings.namespace
        result(base, "control", {"action": "pause", "worker_type": "reasoning"})
        asyncio.run(queue_backlog(settings, 50_000))
        held = submit(base, [{"tool": "echo", "prompt": f"held{i}", "priority": 5,
                              "context": {"delay_ms": 5_000, "steps": 25}} for i in range(4)])
        result(base, "control", {"action": "resume", "worker_type": "reasoning"})
        victims: dict[str, int] = {}

        def both_mid_task() -> bool:
            victims.update(checkpointed(base, VICTIM))
            return len(victims) == 2

        wait_until(both_mid_task, 30, f"two checkpointed tasks running on {VICTIM}")
        pid = actor_pid(VICTIM, namespace)
        os.kill(pid, signal.SIGSTOP)
        stopped_at = time.time()
        try:
            def resumed() -> bool:
                return all(r["attempts"] == 2 for r in get_tasks(base, victims).values())

            wait_until(resumed, 60, "the silent worker's tasks to start again")
            resumed_s = time.time() - stopped_at
            waiting = result(base, "status")["matrix"]["reasoning"]
        finally:
            with contextlib.suppress(ProcessLookupError):  # the router had it killed, as it should
                os.kill(pid, signal.SIGCONT)
        print(f"the silent worker's tasks started again {resumed_s:.1f}s after SIGSTOP")
        assert sum(waiting.values()) > 10_000, "the backlog was still waiting when they ran again"
        records = all_terminal(base, held, timeout_s=60)
        for task_id, step in victims.items():
            record = records[task_id]
            assert record["status"] == "succeeded" and record["attempts"] == 2, record
            assert f"worker {VICTIM} went silent" in record["last_failure"]
            assert record["resumed_from"]["step"] >= step
        result(base, "control", {"action": "pause", "worker_type": "reasoning"})  # the backlog need not run


async def queue_backlog(settings: Any, n: int) -> list[str]:
    """n low-priority echo tasks queued straight through the task store (fast: the ingress is not under test)."""
    store = TaskStore.from_settings(settings.redis)
    ids: list[str] = []
    try:
        for start in range(0, n, 1000):
            tasks = [build_task(RunTaskParams(tool="echo", prompt=f"b{i}", priority=0), settings, time.time())[0]
                     for i in range(start, min(start + 1000, n))]
            outcomes = await store.submit(0, [Submission(t) for t in tasks], time.time(), n + 100, 1.0, 10)
            ids += [outcome[0] for outcome in outcomes if isinstance(outcome, tuple)]
    finally:
        await store.aclose()
    assert len(ids) == n
    return ids
