"""kill -9 a worker under load: Ray restarts it, its tasks run again (resuming their checkpoints); nothing lost or stored twice."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import ray
import redis
from ray.exceptions import GetTimeoutError, RayActorError

from orchestrator.adapters.keys import ROUTER_GROUP, Keys
from tests.conftest import deployed, make_settings
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration

BATCH = 100
TERMINAL = ("succeeded", "failed", "cancelled")
VICTIM = "worker:reasoning:0"


def rpc_batch(base_url: str, calls: Sequence[tuple[str, dict[str, Any]]], timeout_s: float = 60) -> list[dict[str, Any]]:
    """One JSON-RPC batch over HTTP; the replies in call order."""
    body = [{"jsonrpc": "2.0", "method": method, "params": params, "id": i} for i, (method, params) in enumerate(calls)]
    reply = httpx.post(f"{base_url}/v1/rpc", json=body, timeout=timeout_s)
    reply.raise_for_status()
    by_id = {member["id"]: member for member in reply.json()}
    return [by_id[i] for i in range(len(calls))]


def submit(base_url: str, params: Sequence[dict[str, Any]]) -> list[str]:
    """run_task for each params, in batches of BATCH; every one must be accepted. Returns the task ids in order."""
    ids: list[str] = []
    for start in range(0, len(params), BATCH):
        replies = rpc_batch(base_url, [("run_task", p) for p in params[start:start + BATCH]])
        assert all("result" in r for r in replies), [r for r in replies if "result" not in r][:3]
        ids += [r["result"]["task_id"] for r in replies]
    return ids


def get_tasks(base_url: str, task_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """get_task for each id, in batches of BATCH; every one must be found."""
    ids = list(task_ids)
    records: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), BATCH):
        chunk = ids[start:start + BATCH]
        replies = rpc_batch(base_url, [("get_task", {"task_id": t}) for t in chunk])
        for task_id, reply in zip(chunk, replies, strict=True):
            assert "result" in reply, (task_id, reply)  # -32001 here would mean an accepted task was lost
            records[task_id] = reply["result"]
    return records


def all_terminal(base_url: str, task_ids: Sequence[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    """Poll (batched get_task) until every task is terminal; the final records."""
    done: dict[str, dict[str, Any]] = {}
    latest: dict[str, dict[str, Any]] = {}

    def check() -> bool:
        latest.update(get_tasks(base_url, [t for t in task_ids if t not in done]))
        done.update({t: r for t, r in latest.items() if r["status"] in TERMINAL})
        return len(done) == len(task_ids)

    try:
        wait_until(check, timeout_s, f"{len(task_ids)} tasks to finish")
    except TimeoutError:
        stuck = Counter(r["status"] for t, r in latest.items() if t not in done)
        raise AssertionError(f"{len(task_ids) - len(done)} tasks never finished: {dict(stuck)}") from None
    return done


def actor_pid(name: str, namespace: str) -> int:
    handle = ray.get_actor(name, namespace=namespace)
    return int(ray.get(handle.__ray_call__.remote(lambda _self: os.getpid()), timeout=30))


def restarted_pid(name: str, namespace: str, old_pid: int) -> int | None:
    """The actor's pid if it answers from a new process; None while it is dead or restarting."""
    try:
        pid = actor_pid(name, namespace)
    except (RayActorError, GetTimeoutError):
        return None
    return pid if pid != old_pid else None


def checkpointed(base_url: str, worker: str | None = None) -> dict[str, int]:
    """Tasks running right now (on `worker`, if given) that have checkpointed a step: task id → last step."""
    running = [r["task_id"] for r in rpc_batch(base_url, [("status", {})])[0]["result"]["running"]
               if worker is None or r["worker"] == worker]
    records = get_tasks(base_url, running) if running else {}
    return {t: r["progress"]["step"] for t, r in records.items()
            if r["status"] == "running" and (worker is None or r["worker"] == worker) and r["progress"]
            and r["context"].get("steps", 1) > r["progress"]["step"] >= 1}


def announcements(pubsub: Any, client: redis.Redis, channel: str, timeout_s: float) -> Counter[str]:
    """Every task id published on the finished channel so far: publish a sentinel and read up to it."""
    sentinel = f"sentinel-{time.time_ns()}"
    client.publish(channel, sentinel)
    seen: Counter[str] = Counter()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1.0)
        if message is None:
            continue
        if message["data"] == sentinel:
            return seen
        seen[message["data"]] += 1
    raise AssertionError(f"sentinel not received on {channel} within {timeout_s}s")


def test_worker_killed_under_load_loses_nothing_and_stores_each_result_once(
    redis_server: RedisServer, ray_session: int
) -> None:
    settings = make_settings(redis_server.url, pools={"reasoning": {"workers": 2, "slots": 8}})
    keys = Keys(settings.redis.prefix)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.finished)  # before any task exists, so every finish announcement is seen
    slow = {"delay_ms": 300, "steps": 3}
    load = [{"tool": "echo", "prompt": f"w{i}", "context": slow if i % 5 == 0 else {}} for i in range(1000)]
    with deployed(settings, ray_session) as system, ThreadPoolExecutor(1) as pool:
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
        wait_until(lambda: client.xpending(keys.tasks, ROUTER_GROUP)["pending"] == 0, 15, "no pending entries")
        wait_until(lambda: int(client.get(keys.active) or 0) == 0, 15, "the active counter back to 0")
    pubsub.close()
    client.close()
