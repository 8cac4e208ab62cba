"""Scale benchmark: a million queued tasks in a paused pool, then drained.

    python benchmarks/scale.py [-n 1000000] [--batch 100] [--concurrency 4] [--workers 2] [--slots 16] [--json]

Brings up its own redis-server, Ray, Serve and the orchestrator on the default limits, pauses the `reasoning`
pool and submits N echo tasks (a 100-character prompt, priorities 0..10 in turn, no context) over JSON-RPC
batches. It prints the submit rate, Redis bytes per queued task (`used_memory` delta), every process's resident
memory over the run (sampled every few seconds: idle, during the submit, queued, during the drain, drained),
then resumes the pool and prints the drain rate and whether a sample of the tasks started in priority order
(aging is off, so the order must be strict up to tasks taken in one batch).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find the harness beside us
from harness import own_system_with_redis, rss_by_process

RPC_PATH = "/v1/rpc"
PROMPT = "p" * 100
SAMPLE = 2000  # tasks whose start times are read back to check the order
SAMPLE_EVERY_S = 5.0


class MemorySampler(threading.Thread):
    """Every few seconds, every process's resident memory, labelled with the phase of the run."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.phase = "idle"
        self.samples: list[tuple[float, str, dict[str, int]]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.samples.append((time.time(), self.phase, rss_by_process()))
            self._done.wait(SAMPLE_EVERY_S)  # a sampling period, not synchronisation

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.samples.append((time.time(), self.phase, rss_by_process()))


async def rpc(client: httpx.AsyncClient, method: str, params: dict[str, Any]) -> Any:
    reply = (await client.post(RPC_PATH, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})).json()
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


async def submit_all(base_url: str, n: int, batch: int, concurrency: int) -> tuple[list[str], float]:
    """Submit n tasks; their ids (in order) and the seconds it took."""
    ids: list[str] = [""] * n
    starts = iter(range(0, n, batch))

    async def sender(client: httpx.AsyncClient) -> None:
        for start in starts:
            body = [{"jsonrpc": "2.0", "id": i, "method": "run_task",
                     "params": {"tool": "echo", "prompt": PROMPT, "priority": i % 11}}
                    for i in range(start, min(start + batch, n))]
            while True:
                replies = (await client.post(RPC_PATH, content=json.dumps(body),
                                             headers={"content-type": "application/json"})).json()
                refused = [r for r in replies if "error" in r]
                if not refused:
                    break
                raise RuntimeError(f"submit refused: {refused[0]['error']}")
            for reply in replies:
                ids[reply["id"]] = reply["result"]["task_id"]

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:
        began = time.perf_counter()
        await asyncio.gather(*(sender(client) for _ in range(concurrency)))
        return ids, time.perf_counter() - began


async def drain(base_url: str, n: int) -> float:
    """Resume the pool; seconds until no task is left unfinished."""
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        await rpc(client, "control", {"action": "resume", "worker_type": "reasoning"})
        began = time.perf_counter()
        while (await rpc(client, "status", {}))["active_tasks"] > 0:
            await asyncio.sleep(1.0)  # a poll period
        return time.perf_counter() - began


async def order_check(base_url: str, ids: Sequence[str]) -> dict[str, Any]:
    """Start times of a sample of tasks: pairs where a higher priority started after a lower one (beyond the
    same take, 50 ms), i.e. inversions of the priority order."""
    sample = random.Random(1).sample(list(ids), min(SAMPLE, len(ids)))
    records: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        for start in range(0, len(sample), 100):
            body = [{"jsonrpc": "2.0", "id": i, "method": "get_task", "params": {"task_id": t}}
                    for i, t in enumerate(sample[start:start + 100])]
            records += [r["result"] for r in (await client.post(RPC_PATH, json=body)).json()]
    started = sorted((r["created_at"] + r["queue_wait_ms"] / 1000, r["priority"]) for r in records)
    inversions = sum(1 for i, (t, p) in enumerate(started) for t2, p2 in started[i + 1:] if p2 > p and t2 - t > 0.05)
    return {"sampled": len(records), "succeeded": sum(r["status"] == "succeeded" for r in records),
            "order_inversions": inversions}


def memory_table(samples: list[tuple[float, str, dict[str, int]]]) -> dict[str, dict[str, float]]:
    """Per process name: MB at the first sample, the largest over the run, and at the end."""
    names = {name for _t, _phase, rss in samples for name in rss}
    mb = 1024 * 1024
    return {name: {"start_mb": round(samples[0][2].get(name, 0) / mb, 1),
                   "max_mb": round(max(rss.get(name, 0) for _t, _p, rss in samples) / mb, 1),
                   "queued_mb": round(next((rss.get(name, 0) for _t, p, rss in reversed(samples) if p == "queued"), 0)
                                      / mb, 1),
                   "end_mb": round(samples[-1][2].get(name, 0) / mb, 1)}
            for name in sorted(names, key=lambda n: -max(rss.get(n, 0) for _t, _p, rss in samples))}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="reasoning workers for the drain")
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    overrides = {"pools": {"reasoning": {"workers": args.workers, "slots": args.slots}},
                 "router": {"aging_interval_s": 0}}
    sampler = MemorySampler()
    with own_system_with_redis(overrides) as (base_url, settings, server):
        store = redis.Redis.from_url(server.url)
        asyncio.run(_control(base_url, "pause"))
        sampler.start()
        time.sleep(2 * SAMPLE_EVERY_S)  # two idle samples: the baseline, not synchronisation
        used_before = store.info("memory")["used_memory"]
        sampler.phase = "submit"
        ids, submit_s = asyncio.run(submit_all(base_url, args.n, args.batch, args.concurrency))
        sampler.phase = "queued"
        used_queued = store.info("memory")["used_memory"]
        time.sleep(2 * SAMPLE_EVERY_S)  # samples with everything queued
        sampler.phase = "drain"
        drain_s = asyncio.run(drain(base_url, args.n))
        sampler.phase = "drained"
        order = asyncio.run(order_check(base_url, ids))
        sampler.stop()
        store.close()
    report = {"tasks": args.n, "submit_s": round(submit_s, 1), "submit_per_s": round(args.n / submit_s),
              "redis_bytes_per_queued_task": round((used_queued - used_before) / args.n),
              "drain_s": round(drain_s, 1), "drain_per_s": round(args.n / drain_s),
              "workers": args.workers, "slots": args.slots, **order, "memory": memory_table(sampler.samples)}
    print(f"submitted {args.n} tasks in {report['submit_s']} s: {report['submit_per_s']} tasks/s")
    print(f"redis     {report['redis_bytes_per_queued_task']} bytes per queued task")
    print(f"drained   in {report['drain_s']} s: {report['drain_per_s']} tasks/s "
          f"({args.workers} workers x {args.slots} slots)")
    print(f"order     {order['order_inversions']} inversions among {order['sampled']} sampled tasks "
          f"({order['succeeded']} succeeded)")
    print("memory    MB: start / largest / with everything queued / end")
    for name, figures in report["memory"].items():
        print(f"  {name:40s} {figures['start_mb']:8.1f} {figures['max_mb']:8.1f} {figures['queued_mb']:8.1f} "
              f"{figures['end_mb']:8.1f}")
    if args.json:
        print(json.dumps(report, separators=(",", ":")))
    return 0 if order["succeeded"] == order["sampled"] and order["order_inversions"] == 0 else 1


async def _control(base_url: str, action: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        await rpc(client, "control", {"action": action, "worker_type": "reasoning"})


if __name__ == "__main__":
    sys.exit(main())
