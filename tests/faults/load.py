"""Load and inspection helpers shared by the fault tests: batched JSON-RPC, polling, actor pids, announcements."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import ray
import redis
from ray.exceptions import GetTimeoutError, RayActorError

from tests.support import wait_until

BATCH = 100
TERMINAL = ("succeeded", "failed", "cancelled")


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
        seen.update(message["data"].split())  # the ids one script finished
    raise AssertionError(f"sentinel not received on {channel} within {timeout_s}s")


def effects(directory: Path) -> Counter[str]:
    """Task ids in the echo tool's side-effect log, with how often each effect was performed."""
    log = directory / "effects.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return Counter(line.split()[0] for line in lines)


def echo_effects(effect_dir: Path) -> dict[str, Any]:
    """Settings override: the echo tool writes its side-effect log (one line per performed effect) here."""
    return {"echo": {"kind": "echo", "effect_dir": str(effect_dir)}}


@contextmanager
def announcement_feed(redis_url: str, channel: str) -> Iterator[tuple[redis.Redis, Any]]:
    """A client and a subscription to the finished channel, opened before any task exists so that every
    announcement is seen (read them with `announcements`)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    try:
        yield client, pubsub
    finally:
        pubsub.close()
        client.close()
