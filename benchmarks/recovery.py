"""Recovery benchmark: kill -9 a worker, a router or redis-server under load; how fast work resumes, what is lost
or done twice.

    python benchmarks/recovery.py [--tasks 1000] [--kinds none,worker,router,router-shard,redis] [--outage-s 2]
                                  [--workers 2] [--slots 16] [--memory-tasks N] [--json]

For each kind, a fresh self-hosted system (redis-server with AOF, `appendfsync always`; Ray; Serve; the
orchestrator with `--workers` reasoning workers of `--slots` slots; one shard and one router unless said
below) gets `--tasks` echo tasks: most quick, every 5th `{"delay_ms": 500, "steps": 5}` (2.5 s, checkpointing
each step). All are submitted first; once a checkpointed task is running (on worker:reasoning:0 for
`worker`), the component is killed:

    none          no kill: the reference (the same load drained from the same moment)
    worker        SIGKILL the process of worker:reasoning:0 (Ray restarts the actor)
    router        SIGKILL router-0, the only router: it holds the shard's lease and the pools lease (it is the
                  pool manager). Ray restarts it. Workers take tasks from Redis themselves: no router is on a
                  task's path
    router-shard  4 shards (`redis.shards`), 2 routers (`router.replicas`), `router.lease_s` 2 s: SIGKILL
                  router-1 once it holds the leases of its shards (1 and 3), and the pools lease if it won it
                  (the routers start together: either may); router-0, or router-1 restarted, takes them over
                  once they expire
    redis         SIGKILL redis-server, restart it on the same port and AOF after --outage-s seconds; that
                  pause is the fault's duration (Redis is down that long), not a wait for anything

then every accepted task is polled until terminal. Figures per kind (times from the kill, wall clock,
server-side timestamps from the task records):

    affected   worker: tasks running on the killed worker at the kill; router, router-shard: tasks running at
               the kill (they keep running on their workers: none should run again); redis: tasks that
               finished after the kill. Tasks that finished between the snapshot and the kill are left out.
    resume     when the affected tasks run again --
                 worker: the first new start (`started_at` of a new attempt) of a task that was running
                         on the killed worker; `resume_all` is when the last of them had started again
                 router: the start of a probe task submitted right after the kill at priority 9 (ahead
                         of the backlog): workers take it from Redis, so it waits for a free slot only.
                         `probe_queued_s` is its start after its `created_at`; `probe_first_slot_s` when
                         the first other task finished after that (a slot freed, if all were busy)
                 redis:  the first task to finish after the kill (nothing can finish while Redis is down)
    takeover   router, router-shard: every lease the killed router held at the kill (its shards' and, if it
               held it, the pools lease; `leases_taken_over` counts them) held again, by any router, with a
               larger fencing token. A lease
               expires `router.lease_s` after its last renewal (5 s by default; 2 s for router-shard); a
               router tries to take it every lease_s / 3
    back       worker, router, router-shard: the benchmark's first call the actor answered from a new
               process (a router's `ready()`: its first round of leases, which takes none of those the dead
               incarnation still holds). An upper bound: a call made at the kill fails only once Ray reports
               the death (1-2 s here), so the actor may have been back earlier. redis: the restarted
               redis-server answers PING
    total      kill -> the last task terminal (the latest `finished_at`); it includes draining the
               backlog, so compare it with the `none` row
    lost       accepted (run_task returned a task id) but never terminal, or missing; must be 0
    dup        tasks whose id was announced more than once on `<prefix>:finished` (space-separated ids, one
               message per script; subscribed before the load); must be 0. `dup_stored` counts tasks with
               more than one terminal event in their history (`h` in the task's record; durable, so it
               also covers announcements missed while the subscriber re-subscribed after a Redis restart);
               must be 0
    failed     terminal but not succeeded with the task's own text
    reruns     tasks that took more than one attempt (router, router-shard: expected 0)

Then the Redis memory per queued task: a system whose reasoning pool has 0 workers (so the tasks stay in
their queue: a sorted set per shard, worker type and priority) gets `--memory-tasks` echo tasks with a
100-character prompt; `used_memory` (INFO memory) before and after, once settled, over the task count.
Also given: the same for `used_memory_dataset` (without client buffers and other overhead, so steadier),
and the parts: MEMORY USAGE of one task's record (one JSON string, its history included) and of the queue
sorted sets per queued task.

Every system is torn down afterwards, also on an error, Ctrl-C or SIGTERM. `--json` prints one JSON
object as the last line. The exit status is 1 if any task was lost, failed or stored twice.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find the harness beside us
from harness import own_system_with_redis, raise_interrupt

from orchestrator.adapters.keys import PRIORITIES, Keys
from orchestrator.naming import router_name
from orchestrator.routing import preferred_router
from orchestrator.tasks import shard_of
from tests import redis_view

KINDS = ("none", "worker", "router", "router-shard", "redis")
VICTIM_WORKER = "worker:reasoning:0"
ROUTERS = {"router": 0, "router-shard": 1}  # kind -> the index of the router killed
SHARDED = {"redis": {"shards": 4}, "router": {"replicas": 2, "lease_s": 2.0}}  # router-shard's system
SLOW = {"delay_ms": 500, "steps": 5}
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
BATCH = 100  # the server's default limits.max_batch
TASK_NOT_FOUND = -32001
POLL_S = 0.1  # pause between polling rounds that found something still unfinished
MEMORY_PROMPT_CHARS = 100


# --- JSON-RPC -----------------------------------------------------------------------------------


def rpc(client: httpx.Client, calls: Sequence[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One JSON-RPC batch; the replies (result or error) in call order. HTTP failures raise httpx errors."""
    body = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
    reply = client.post("/v1/rpc", json=body)
    reply.raise_for_status()
    by_id = {r.get("id"): r for r in reply.json()}
    return [by_id.get(i, {"error": {"code": None, "message": "no reply"}}) for i in range(len(calls))]


def submit(client: httpx.Client, params: Sequence[dict[str, Any]]) -> tuple[list[str | None], Counter[str]]:
    """run_task for each params in batches; the task ids (None where refused) and the refusals by reason."""
    ids: list[str | None] = []
    refused: Counter[str] = Counter()
    for start in range(0, len(params), BATCH):
        chunk = params[start:start + BATCH]
        try:
            replies = rpc(client, [("run_task", p) for p in chunk])
        except httpx.HTTPError as exc:
            ids += [None] * len(chunk)
            refused[type(exc).__name__] += len(chunk)
            continue
        for reply in replies:
            task_id = (reply.get("result") or {}).get("task_id")
            ids.append(task_id)
            if task_id is None:
                refused[f"rpc {reply.get('error', {}).get('code')}"] += 1
    return ids, refused


def await_terminal(client: httpx.Client, ids: Sequence[str], timeout_s: float) -> tuple[dict[str, Any], set[str]]:
    """Poll get_task until every task is terminal; the final records and the ids found missing.

    Errors other than "not found" (e.g. -32005 while Redis is down, HTTP errors) are transient: asked again.
    """
    records: dict[str, Any] = {}
    missing: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        pending = [t for t in ids if t not in missing and records.get(t, {}).get("status") not in TERMINAL]
        if not pending or time.monotonic() > deadline:
            return records, missing
        for start in range(0, len(pending), BATCH):
            chunk = pending[start:start + BATCH]
            try:
                replies = rpc(client, [("get_task", {"task_id": t}) for t in chunk])
            except httpx.HTTPError:
                continue
            for task_id, reply in zip(chunk, replies, strict=True):
                if "result" in reply:
                    records[task_id] = reply["result"]
                elif reply["error"].get("code") == TASK_NOT_FOUND:
                    missing.add(task_id)
        time.sleep(POLL_S)  # poll interval


def running_on(client: httpx.Client, worker: str | None) -> list[str]:
    """Tasks the router lists as running (on `worker`, if given)."""
    reply = rpc(client, [("status", {})])[0]
    return [r["task_id"] for r in (reply.get("result") or {}).get("running", [])
            if worker is None or r["worker"] == worker]


def checkpointed_running(client: httpx.Client, worker: str | None) -> list[str]:
    """Tasks running right now (on `worker`, if given) that have checkpointed a step and have more to go."""
    running = running_on(client, worker)
    replies = rpc(client, [("get_task", {"task_id": t}) for t in running[:BATCH]]) if running else []
    found = []
    for reply in replies:
        record = reply.get("result") or {}
        step = (record.get("progress") or {}).get("step", 0)
        if record.get("status") == "running" and 1 <= step < (record.get("context") or {}).get("steps", 1):
            found.append(record["task_id"])
    return found


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)  # poll interval


# --- the finished channel -------------------------------------------------------------------------


class Announcements:
    """Counts the task ids published on the finished channel, re-subscribing after a Redis restart."""

    def __init__(self, url: str, channel: str) -> None:
        self._url, self._channel = url, channel
        self.counts: Counter[str] = Counter()
        self.resubscriptions = 0
        self._sentinels: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._client, self._pubsub = self._subscribe()  # before the load: no announcement slips by
        self._thread = threading.Thread(target=self._listen, name="announcements", daemon=True)
        self._thread.start()

    def _subscribe(self) -> tuple[redis.Redis, Any]:
        client = redis.Redis.from_url(self._url, decode_responses=True, socket_timeout=5)
        pubsub = client.pubsub()
        pubsub.subscribe(self._channel)
        deadline = time.monotonic() + 10
        while (message := pubsub.get_message(timeout=1.0)) is None or message["type"] != "subscribe":
            if time.monotonic() > deadline:
                raise TimeoutError("no subscribe confirmation")
        return client, pubsub

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.2)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self._reconnect()
                continue
            if message is None or message["type"] != "message":
                continue
            with self._lock:
                for task_id in message["data"].split():  # one message per script, of every task it finished
                    event = self._sentinels.get(task_id)
                    if event is not None:
                        event.set()
                    else:
                        self.counts[task_id] += 1

    def _reconnect(self) -> None:
        with contextlib.suppress(Exception):
            self._pubsub.close()
            self._client.close()
        while not self._stop.is_set():
            try:
                self._client, self._pubsub = self._subscribe()
                self.resubscriptions += 1
                return
            except (redis.ConnectionError, redis.TimeoutError, OSError, TimeoutError):
                time.sleep(0.05)  # Redis is down: try again shortly

    def drain(self, timeout_s: float = 30) -> Counter[str]:
        """Every announcement so far: publish a sentinel and wait until the listener has read up to it."""
        sentinel, event = f"sentinel-{time.time_ns()}", threading.Event()
        with self._lock:
            self._sentinels[sentinel] = event
        deadline = time.monotonic() + timeout_s
        publisher = redis.Redis.from_url(self._url, decode_responses=True)
        try:
            while not event.wait(1.0):  # re-publish: the listener may have been re-subscribing
                if time.monotonic() > deadline:
                    raise TimeoutError("sentinel not received on the finished channel")
                publisher.publish(self._channel, sentinel)
        finally:
            publisher.close()
        with self._lock:
            return Counter(self.counts)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(Exception):
            self._pubsub.close()
            self._client.close()


def terminal_events(url: str, settings: Any, ids: Sequence[str]) -> Counter[str]:
    """Per task, the terminal events in its history (`h` in its record): one per stored final state."""
    counts, conn = Counter[str](), redis.Redis.from_url(url, decode_responses=True)
    try:
        for task_id in ids:
            history = (redis_view.stored(conn, settings, task_id) or {}).get("h", [])
            counts[task_id] = sum(1 for _seq, kind, _time_ms, _data in history if kind in TERMINAL)
    finally:
        conn.close()
    return counts


# --- router leases ------------------------------------------------------------------------------


def lease_names(settings: Any) -> list[str]:
    keys = Keys(settings.redis.prefix)
    return [keys.pool_lease, *(keys.shard(s).lease for s in range(settings.redis.shards))]


def leases_of(conn: redis.Redis, names: Sequence[str], router: str) -> dict[str, int]:
    """Of the leases `names`, those an incarnation of `router` holds (`<router>.<incarnation>:<token>`): key ->
    fencing token."""
    return {name: int(value.rsplit(":", 1)[1]) for name, value in zip(names, conn.mget(names))
            if value and value.split(".", 1)[0] == router}


def held_by(url: str, settings: Any, index: int) -> dict[str, int]:
    """The leases router `index` holds, once it holds those of the shards it prefers (a router started later
    gets them only after the first one gave them back)."""
    mine = [Keys(settings.redis.prefix).shard(s).lease for s in range(settings.redis.shards)
            if preferred_router(s, settings.router.replicas) == index]
    conn = redis.Redis.from_url(url, decode_responses=True)
    try:
        wait_for(lambda: len(leases_of(conn, mine, router_name(index))) == len(mine), 30,
                 f"{router_name(index)} to hold its shards")
        return leases_of(conn, lease_names(settings), router_name(index))
    finally:
        conn.close()


def taken_over(url: str, held: dict[str, int], timeout_s: float = 60) -> float:
    """When every lease in `held` had a holder (any router) with a larger fencing token."""
    names, conn = list(held), redis.Redis.from_url(url, decode_responses=True)
    try:
        wait_for(lambda: all(value is not None and int(value.rsplit(":", 1)[1]) > held[name]
                             for name, value in zip(names, conn.mget(names))), timeout_s, "the leases taken over")
        return time.time()
    finally:
        conn.close()


# --- actors -------------------------------------------------------------------------------------


def actor_pid(name: str, namespace: str, timeout_s: float = 30) -> int:
    import ray

    handle = ray.get_actor(name, namespace=namespace)
    return int(ray.get(handle.__ray_call__.remote(lambda _self: os.getpid()), timeout=timeout_s))


def wait_restarted(name: str, namespace: str, old_pid: int, timeout_s: float = 120) -> float:
    """Block until the actor answers from a new process (a router: and has been through its leases once); when."""
    import ray
    from ray.exceptions import GetTimeoutError, RayError

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            # A call to a restarting actor waits for the restart, so this returns as soon as it is back.
            if actor_pid(name, namespace, timeout_s=10) != old_pid:
                if name.startswith("router-"):
                    ray.get(ray.get_actor(name, namespace=namespace).ready.remote(), timeout=60)
                return time.time()
        except (RayError, GetTimeoutError, ValueError):
            pass
        time.sleep(0.02)  # poll interval
    raise TimeoutError(f"{name} not back within {timeout_s}s")


# --- one kill -----------------------------------------------------------------------------------


def pool_overrides(args: argparse.Namespace, reasoning_workers: int) -> dict[str, Any]:
    """Only the reasoning pool (echo's): the other pools get no workers, to spare the 2-core machine."""
    return {"pools": {"reasoning": {"workers": reasoning_workers, "slots": args.slots},
                      "codegen": {"workers": 0}, "ml": {"workers": 0}}}


def scenario(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    overrides = pool_overrides(args, args.workers) | (SHARDED if kind == "router-shard" else {})
    with own_system_with_redis(overrides, aof=True) as (base, settings, server), \
            httpx.Client(base_url=base, timeout=60) as client:
        namespace = settings.namespace
        listener = Announcements(server.url, Keys(settings.redis.prefix).finished)
        try:
            victim = VICTIM_WORKER if kind == "worker" else router_name(ROUTERS[kind]) if kind in ROUTERS else None
            old_pid = actor_pid(victim, namespace) if victim else None
            load = [{"tool": "echo", "prompt": f"recovery-{i}", "context": SLOW if i % 5 == 0 else {}}
                    for i in range(args.tasks)]
            ids, refused = submit(client, load)
            prompts = {t: p["prompt"] for t, p in zip(ids, load, strict=True) if t is not None}

            on = VICTIM_WORKER if kind == "worker" else None
            wait_for(lambda: bool(checkpointed_running(client, on)), 60, "a checkpointed task running")
            at_kill = set(running_on(client, on))  # just before the kill: worker: the tasks it hits
            back_at = takeover_at = None
            probe: str | None = None
            held: dict[str, int] = {}  # routers: the leases of the one killed (key -> fencing token)
            if victim is not None:
                if kind in ROUTERS:
                    held = held_by(server.url, settings, ROUTERS[kind])
                os.kill(old_pid, signal.SIGKILL)  # type: ignore[arg-type]
                killed_at = time.time()
                with ThreadPoolExecutor(1) as pool:
                    takeover = pool.submit(taken_over, server.url, held) if held else None  # while Ray restarts it
                    if kind == "router":  # a fresh, high-priority task: does anything wait for the router?
                        [probe], probe_refused = submit(client, [{"tool": "echo", "prompt": "probe", "priority": 9}])
                        refused += probe_refused
                        if probe is not None:
                            prompts[probe] = "probe"
                    back_at = wait_restarted(victim, namespace, old_pid)  # type: ignore[arg-type]
                    takeover_at = takeover.result() if takeover else None
            elif kind == "redis":
                server.kill()
                killed_at = time.time()
                time.sleep(args.outage_s)  # the fault's duration: Redis stays down this long
                server.start()  # same port and directory: the AOF brings back every acknowledged write
                back_at = time.time()
            else:
                killed_at = time.time()

            accepted = list(prompts)
            records, missing = await_terminal(client, accepted, args.timeout_s)
            published = listener.drain()
            stored = terminal_events(server.url, settings, accepted)
        finally:
            listener.close()

    finished = [r for r in records.values() if r["status"] in TERMINAL]
    # Leave out tasks that finished in the instant between the snapshot and the kill.
    at_kill = {t for t in at_kill if not (t in records and records[t]["attempts"] == 1
                                          and (records[t].get("finished_at") or 0) <= killed_at)}
    lost = len(accepted) - len(finished)  # missing, or never terminal before the timeout
    failed = sum(1 for r in finished
                 if r["status"] != "succeeded" or (r.get("result") or {}).get("text") != prompts[r["task_id"]])
    resume_s = resume_all_s = None
    if kind == "worker":
        restarts = [records[t]["started_at"] for t in at_kill
                    if t in records and records[t]["attempts"] > 1 and records[t]["started_at"] > killed_at]
        if restarts:
            resume_s, resume_all_s = min(restarts) - killed_at, max(restarts) - killed_at
    elif kind == "router" and probe is not None and records.get(probe, {}).get("started_at"):
        resume_s = records[probe]["started_at"] - killed_at
    elif kind == "redis":
        after = [r["finished_at"] for r in finished if r["finished_at"] > killed_at]
        resume_s = min(after) - killed_at if after else None
    last = max((r["finished_at"] for r in finished), default=None)
    report = {
        "kind": kind,
        "accepted": len(accepted),
        "refused": sum(refused.values()),
        # worker: running on it at the kill; routers: running at the kill (not needing one); redis: unfinished
        "affected": (len(at_kill) if victim is not None
                     else sum(1 for r in finished if r["finished_at"] > killed_at) if kind == "redis" else 0),
        "resume_s": _s(resume_s),
        "resume_all_s": _s(resume_all_s),
        "takeover_s": _s(takeover_at - killed_at if takeover_at else None),
        "leases_taken_over": len(held),
        "back_s": _s(back_at - killed_at if back_at else None),
        "total_s": _s(last - killed_at if last else None),
        "lost": lost,
        "missing": len(missing),  # of the lost: get_task says "not found"
        "duplicates_announced": sum(1 for t in accepted if published[t] > 1),
        "unannounced": sum(1 for t in accepted if published[t] == 0),
        "duplicates_stored": sum(1 for t in accepted if stored[t] > 1),
        "failed": failed,
        "reruns": sum(1 for r in finished if r["attempts"] > 1),
        "resubscriptions": listener.resubscriptions,
    }
    if kind == "worker":
        report["affected_rerun"] = sum(1 for t in at_kill if records.get(t, {}).get("attempts", 1) > 1)
    if kind == "router" and probe in records and records[probe].get("started_at"):
        queued_at = records[probe]["created_at"]  # did the probe wait for more than a slot to free?
        freed = [r["finished_at"] for r in finished if r["finished_at"] > queued_at and r["task_id"] != probe]
        report["probe_queued_s"] = _s(records[probe]["started_at"] - queued_at)
        report["probe_first_slot_s"] = _s(min(freed) - queued_at if freed else None)
    if kind in ROUTERS:
        report["running_at_kill_rerun"] = sum(1 for t in at_kill if records.get(t, {}).get("attempts", 1) > 1)
    if refused:
        report["refused_reasons"] = dict(refused)
    return report


def _s(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# --- memory -------------------------------------------------------------------------------------


def used_memory(client: redis.Redis) -> tuple[int, int]:
    info = client.info("memory")
    return int(info["used_memory"]), int(info["used_memory_dataset"])


def settled_memory(client: redis.Redis, timeout_s: float = 10) -> tuple[int, int]:
    """(used_memory, used_memory_dataset) once two reads 0.2 s apart agree within 0.1 % (buffers drained)."""
    deadline, previous = time.monotonic() + timeout_s, used_memory(client)
    while True:
        time.sleep(0.2)  # the settle interval compared
        current = used_memory(client)
        if abs(current[0] - previous[0]) <= previous[0] * 0.001 or time.monotonic() > deadline:
            return current
        previous = current


def memory_per_task(args: argparse.Namespace) -> dict[str, Any]:
    n = args.memory_tasks
    with own_system_with_redis(pool_overrides(args, 0), aof=True) as (base, settings, server), \
            httpx.Client(base_url=base, timeout=60) as client:
        keys, shards = Keys(settings.redis.prefix), settings.redis.shards
        store = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            before = settled_memory(store)
            prompts = [f"memory-{i:08d}-".ljust(MEMORY_PROMPT_CHARS, "x") for i in range(n)]
            ids, refused = submit(client, [{"tool": "echo", "prompt": p} for p in prompts])
            if refused:
                raise RuntimeError(f"memory load refused: {dict(refused)}")
            after = settled_memory(store)
            levels = [keys.shard(s).level("reasoning", p) for s in range(shards) for p in PRIORITIES]
            queued = sum(store.zcard(level) for level in levels)
            if queued != n:  # no reasoning worker: every task stays queued
                raise RuntimeError(f"{queued} of {n} memory tasks queued")
            sample = ids[n // 2]
            assert sample is not None
            parts = {"record_bytes": store.memory_usage(keys.shard(shard_of(sample, shards) or 0).task(sample)),
                     "queue_bytes_per_task": round(sum(store.memory_usage(level, samples=0) or 0
                                                       for level in levels) / n)}
        finally:
            store.close()
    return {"memory_tasks": n, "prompt_chars": MEMORY_PROMPT_CHARS, "used_memory_before": before[0],
            "used_memory_after": after[0], "bytes_per_queued_task": round((after[0] - before[0]) / n),
            "dataset_bytes_per_queued_task": round((after[1] - before[1]) / n), **parts}


# --- main ---------------------------------------------------------------------------------------


DEFINITIONS = {
    "worker": "resume: kill -> first new start of a task that was running on the killed worker",
    "router": "resume: kill -> start of a priority-9 probe submitted right after the kill (workers take it "
              "from Redis)",
    "router-shard": "4 shards, 2 routers, lease 2 s; router-1 killed",
    "redis": "resume: kill -> first task finished after the kill (includes the outage)",
}


def print_report(report: dict[str, Any]) -> None:
    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    print(f"recovery: {report['tasks']} echo tasks (every 5th {SLOW}), reasoning {report['workers']} workers x "
          f"{report['slots']} slots, Redis AOF appendfsync always; redis outage {report['outage_s']} s")
    columns = ("kind", "affected", "resume_s", "resume_all_s", "takeover_s", "back_s", "total_s", "lost",
               "duplicates_announced", "duplicates_stored", "failed", "reruns")
    heads = ("kill", "affected", "resume s", "resume all s", "takeover s", "back s", "total s", "lost", "dup",
             "dup stored", "failed", "reruns")
    print("  ".join(f"{h:>12}" for h in heads))
    for row in report["scenarios"]:
        print("  ".join(f"{fmt(row.get(c)):>12}" for c in columns))
    for row in report["scenarios"]:
        extra = {k: row[k] for k in ("missing", "refused", "refused_reasons", "unannounced", "resubscriptions",
                                     "affected_rerun", "running_at_kill_rerun", "leases_taken_over",
                                     "probe_queued_s", "probe_first_slot_s")
                 if row.get(k)}
        if extra:
            print(f"  {row['kind']}: {extra}")
    for kind, text in DEFINITIONS.items():
        print(f"  {kind}: {text}")
    print("  takeover: kill -> every lease the killed router held (its shards', the pools' if it had it) held again"
          " with a larger fencing token")
    print("  back: first call the actor answered from a new process (an upper bound; a router: after its first round"
          " of leases) / redis-server answers PING")
    print("  total: kill -> last task terminal (includes draining the backlog; compare the `none` row);"
          " dup: announced twice on the finished channel; dup stored: two terminal events")
    memory = report.get("memory")
    if memory:
        print(f"redis memory: {memory['bytes_per_queued_task']} bytes per queued task "
              f"({memory['memory_tasks']} tasks, {memory['prompt_chars']}-char prompt; used_memory "
              f"{memory['used_memory_before']} -> {memory['used_memory_after']}; used_memory_dataset: "
              f"{memory['dataset_bytes_per_queued_task']} bytes per task); one task's record "
              f"{memory['record_bytes']} B, its share of the queue's sorted set {memory['queue_bytes_per_task']} B")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000, help="echo tasks per kill (default 1000)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--outage-s", type=float, default=2.0, help="how long Redis stays down (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="reasoning workers (default 2)")
    parser.add_argument("--slots", type=int, default=16, help="slots per reasoning worker (default 16)")
    parser.add_argument("--memory-tasks", type=int, help="queued tasks for the memory figure (default --tasks; 0: skip)")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="give up on unfinished tasks after this")
    parser.add_argument("--json", action="store_true", help="also print one JSON object as the last line")
    args = parser.parse_args(argv)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not set(args.kinds) <= set(KINDS):
        parser.error(f"--kinds takes {', '.join(KINDS)}")
    if args.memory_tasks is None:
        args.memory_tasks = args.tasks
    if args.tasks < 5 or args.workers < 1 or args.slots < 1 or args.memory_tasks < 0:
        parser.error("need --tasks >= 5, --workers >= 1, --slots >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_interrupt)
    report: dict[str, Any] = {"tasks": args.tasks, "workers": args.workers, "slots": args.slots,
                              "outage_s": args.outage_s, "scenarios": []}
    try:
        for kind in args.kinds:
            report["scenarios"].append(scenario(kind, args))
        if args.memory_tasks:
            report["memory"] = memory_per_task(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    bad = sum(row["lost"] + row["failed"] + row["duplicates_announced"] + row["duplicates_stored"]
              for row in report["scenarios"])
    report["ok"] = bad == 0
    print_report(report)
    if args.json:
        print(json.dumps(report, separators=(",", ":")))
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
