"""Delayed-task benchmark: N tasks scheduled to come due over a short window; how late each became ready and started.

    python benchmarks/delayed.py [-n 100000] [--window-s 15] [--lead-s 40] [--workers 1] [--slots 16] [--json]

Brings up its own redis-server, Ray, Serve and the orchestrator (aging off), and submits N echo tasks over JSON-RPC
batches, task i with `not_before` = T + lead + i * window / N (priorities 0..10 in turn), all before T + lead.
It prints Redis bytes per scheduled task (`used_memory` delta once all are accepted), then waits until every task
has finished and reads each record: *promotion lateness* is the time of its `queued` event (the router or a take
moved it from the due set into its queue) minus its not_before; *start lateness* is started_at minus not_before,
which also holds the time it waited for a free slot — above the pool's throughput the tasks queue up, so that
figure measures the pool, not the scheduling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find the harness beside us
from harness import own_system_with_redis, percentile

RPC_PATH = "/v1/rpc"


async def submit_all(base_url: str, due: Sequence[float], batch: int, concurrency: int) -> list[str]:
    """Submit one task per due time; their ids, in order."""
    ids: list[str] = [""] * len(due)
    starts = iter(range(0, len(due), batch))

    async def sender(client: httpx.AsyncClient) -> None:
        for start in starts:
            body = [{"jsonrpc": "2.0", "id": i, "method": "run_task",
                     "params": {"tool": "echo", "prompt": f"t{i}", "priority": i % 11,
                                "not_before": datetime.fromtimestamp(due[i], UTC).isoformat()}}
                    for i in range(start, min(start + batch, len(due)))]
            replies = (await client.post(RPC_PATH, json=body)).json()
            refused = [r for r in replies if "error" in r]
            if refused:
                raise RuntimeError(f"submit refused: {refused[0]['error']}")
            for reply in replies:
                ids[reply["id"]] = reply["result"]["task_id"]

    async with httpx.AsyncClient(base_url=base_url, timeout=120,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(sender(client) for _ in range(concurrency)))
    return ids


def wait_finished(base_url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=base_url, timeout=60) as client:
        while True:
            status = client.post(RPC_PATH, json={"jsonrpc": "2.0", "id": 1, "method": "status"}).json()["result"]
            if status["active_tasks"] == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{status['active_tasks']} tasks unfinished after {timeout_s}s")
            time.sleep(1.0)  # a poll period


def lateness(store: redis.Redis, prefix: str, shards: int, ids: Sequence[str]) -> dict[str, Any]:
    """Per task, from its record: promotion and start lateness (ms); outcomes."""
    from orchestrator.adapters.keys import Keys
    from orchestrator.tasks import shard_of

    keys = Keys(prefix)
    promoted: list[float] = []
    started: list[float] = []
    statuses: dict[str, int] = {}
    due_ms: list[float] = []
    for start in range(0, len(ids), 1000):
        pipe = store.pipeline(transaction=False)
        for task_id in ids[start:start + 1000]:
            pipe.get(keys.shard(shard_of(task_id, shards) or 0).task(task_id))
        for raw in pipe.execute():
            record = json.loads(raw)
            statuses[record["s"]] = statuses.get(record["s"], 0) + 1
            queued = next(at for _seq, kind, at, _data in record["h"] if kind == "queued")
            promoted.append(queued - record["nb"])
            started.append(record["fs"] - record["nb"])
            due_ms.append(record["nb"])
    first = min(due_ms)
    by_second: dict[int, list[float]] = {}
    for due, late in zip(due_ms, promoted, strict=True):
        by_second.setdefault(int((due - first) // 1000), []).append(late)
    return {"statuses": statuses, "early": sum(1 for p in promoted if p < 0) + sum(1 for s in started if s < 0),
            "promoted_ms": _summary(promoted), "started_ms": _summary(started),
            "promoted_p99_ms_by_second": [percentile(by_second[s], 99) for s in sorted(by_second)]}


def _summary(values: Sequence[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 50), "p99": percentile(values, 99), "max": max(values)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--window-s", type=float, default=15.0, help="the due times spread over this")
    parser.add_argument("--lead-s", type=float, default=40.0, help="the first is due this long after the start")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="reasoning workers")
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    overrides = {"pools": {"reasoning": {"workers": args.workers, "slots": args.slots}},
                 "router": {"aging_interval_s": 0}}
    with own_system_with_redis(overrides) as (base_url, settings, server):
        store = redis.Redis.from_url(server.url)
        first_due = time.time() + args.lead_s
        due = [first_due + i * args.window_s / args.n for i in range(args.n)]
        used_before = store.info("memory")["used_memory"]
        began = time.perf_counter()
        ids = asyncio.run(submit_all(base_url, due, args.batch, args.concurrency))
        submit_s = time.perf_counter() - began
        used_scheduled = store.info("memory")["used_memory"]
        if time.time() > first_due:
            print(f"warning: submitting took {submit_s:.1f} s, past the first due time: raise --lead-s",
                  file=sys.stderr)
        wait_finished(base_url, args.lead_s + args.window_s + 600)
        figures = lateness(store, settings.redis.prefix, settings.redis.shards, ids)
        store.close()
    report = {"tasks": args.n, "window_s": args.window_s, "submit_s": round(submit_s, 1),
              "submit_per_s": round(args.n / submit_s), "workers": args.workers, "slots": args.slots,
              "redis_bytes_per_scheduled_task": round((used_scheduled - used_before) / args.n), **figures}
    print(f"submitted {args.n} delayed tasks in {report['submit_s']} s ({report['submit_per_s']}/s), due over "
          f"{args.window_s} s ({args.n / args.window_s:.0f}/s)")
    print(f"redis     {report['redis_bytes_per_scheduled_task']} bytes per scheduled task")
    for name, key in (("promoted", "promoted_ms"), ("started", "started_ms")):
        f = figures[key]
        print(f"{name:9s} late by p50 {f['p50']:.0f} ms, p99 {f['p99']:.0f} ms, max {f['max']:.0f} ms")
    print(f"promoted  p99 per second of the window (ms): {figures['promoted_p99_ms_by_second']}")
    print(f"outcomes  {figures['statuses']}; {figures['early']} early")
    if args.json:
        print(json.dumps(report, separators=(",", ":")))
    return 0 if figures["statuses"] == {"succeeded": args.n} and figures["early"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
