"""list_tasks benchmark: a page's latency with 100 and with 100,000 stored tasks, and the indexes' bytes per task.

    python benchmarks/list_tasks.py [-n 100000] [--shards 1] [--repeat 20] [--json]

Starts its own redis-server and stores tasks directly through the task store's submit script (batches of 500;
5 tenants, 4 tools over 2 worker types, priorities 0..10); a few percent are then run to succeeded, failed or
cancelled. For each filter it times the first page (`--limit` rows) and the page after 10 pages, through the same
`Finder` the JSON-RPC method calls (no HTTP: the figure is the store's), first with 100 tasks stored, then with
`-n`. It also prints the Redis bytes the indexes take per task (`MEMORY USAGE` of their keys).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages

from orchestrator.adapters.saga_store import SagaStore
from orchestrator.adapters.task_store import Settlement, Submission, TakePolicy, TakeRequest, TaskStore
from orchestrator.auth import Principal
from orchestrator.finder import Finder
from orchestrator.models import ListTasksParams, TaskStatus
from orchestrator.settings import RedisSettings
from orchestrator.tasks import TaskSpec, new_task_id
from tests.support import RedisServer

TENANTS = [f"tenant{i}" for i in range(5)]
TOOLS = {"echo": "reasoning", "summarize": "reasoning", "codegen": "codegen", "lint": "codegen"}
ADMIN = Principal("bench", None, frozenset({"admin"}))
TENANT = Principal("bench-tenant", "tenant1", frozenset({"read"}))
FILTERS: dict[str, tuple[Principal, dict[str, Any]]] = {
    "admin, no filter": (ADMIN, {}),
    "tenant, no filter": (TENANT, {}),
    "tenant, status=failed (rare)": (TENANT, {"status": "failed"}),
    "tenant, status=queued|running": (TENANT, {"status": ["queued", "running"]}),
    "tenant, tool=lint": (TENANT, {"tool": "lint"}),
    "tenant, tool=lint, status=succeeded": (TENANT, {"tool": "lint", "status": "succeeded"}),
    "tenant, worker_type=codegen (scan)": (TENANT, {"worker_type": "codegen"}),
    "tenant, priority 10 (scan)": (TENANT, {"priority_min": 10}),
    "admin, created in the oldest 1%": (ADMIN, {"created_before": "oldest"}),
}
BASE = 1_765_000_000.0
BATCH = 500


async def store_tasks(store: TaskStore, start: int, end: int) -> None:
    """Tasks start..end-1, created a millisecond apart, in their shards."""
    for first in range(start, end, BATCH):
        by_shard: dict[int, list[Submission]] = {}
        for i in range(first, min(first + BATCH, end)):
            shard = (i // len(TOOLS)) % store.shards  # tools and tenants spread over every shard
            tool = list(TOOLS)[i % len(TOOLS)]
            spec = TaskSpec(task_id=new_task_id(shard), tool=tool, worker_type=TOOLS[tool], priority=i % 11,
                            input={"prompt": "p" * 100}, created_at=BASE + i / 1000, tenant=TENANTS[i % len(TENANTS)])
            by_shard.setdefault(shard, []).append(Submission(spec))
        for shard, items in by_shard.items():
            await store.submit(shard, items, time.time(), 10_000_000, 1.0, 10)


async def run_some(store: TaskStore, fraction: float, seq: list[int]) -> None:
    """Take a share of the queued tasks of every shard and worker type; settle most succeeded, some failed,
    leave some running."""
    policy = TakePolicy(max_attempts=3, max_preemptions=3, aging_interval_s=0)
    depth = sum(n for row in (await store.depths(sorted(set(TOOLS.values())))).values() for n in row.values())
    per_call = 500
    for shard in range(store.shards):
        for worker_type in sorted(set(TOOLS.values())):
            for _ in range(max(1, int(depth * fraction / store.shards / 2 / per_call))):
                seq[0] += 1
                taken = await store.take(TakeRequest(shard, worker_type, "bench", per_call, seq[0], policy), time.time())
                outcomes = [TaskStatus.SUCCEEDED] * 16 + [TaskStatus.FAILED] + [None] * 3
                items = [Settlement(t.task.task_id, t.attempt, outcome, result={"ok": 1}, has_result=True,
                                    error={"code": -32011, "message": "x"} if outcome is TaskStatus.FAILED else None)
                         for n, t in enumerate(taken.taken) if (outcome := outcomes[n % len(outcomes)]) is not None]
                await store.settle(shard, items, time.time())


async def page_ms(finder: Finder, who: Principal, params: dict[str, Any], n: int, repeat: int,
                  depth: int, limit: int) -> tuple[float, int]:
    """Median ms of the page `depth` pages in (0: the first), and its rows."""
    if params.get("created_before") == "oldest":
        params = {**params, "created_before": BASE + max(1, n // 100) / 1000}
    def wire(cursor: str | None) -> ListTasksParams:  # as the dispatcher builds them: from JSON
        return ListTasksParams.model_validate_json(json.dumps({**params, "cursor": cursor, "limit": limit}))

    cursor = None
    for _ in range(depth):
        cursor = (await finder.list_tasks(wire(cursor), who)).next_cursor
        if cursor is None:
            return float("nan"), 0
    times, rows = [], 0
    for _ in range(repeat):
        began = time.perf_counter()
        page = await finder.list_tasks(wire(cursor), who)
        times.append((time.perf_counter() - began) * 1000)
        rows = len(page.tasks)
    return statistics.median(times), rows


async def index_bytes(store: TaskStore) -> int:
    total = 0
    for shard in range(store.shards):
        tag = store.keys.shard(shard).tag
        async for key in store.redis.scan_iter(match=f"{tag}:ix:*", count=1000):
            total += int(await store.redis.memory_usage(key, samples=0) or 0)
    return total


async def measure(finder: Finder, n: int, repeat: int, limit: int) -> dict[str, dict[str, Any]]:
    figures: dict[str, dict[str, Any]] = {}
    for name, (who, params) in FILTERS.items():
        first, rows = await page_ms(finder, who, params, n, repeat, 0, limit)
        deep, deep_rows = await page_ms(finder, who, params, n, repeat, 10, limit)
        figures[name] = {"first_ms": round(first, 2), "rows": rows, "page_11_ms": round(deep, 2),
                         "page_11_rows": deep_rows}
    return figures


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    server = RedisServer().start()
    try:
        settings = RedisSettings(url=server.url, prefix=f"bench{uuid.uuid4().hex[:6]}", shards=args.shards)
        store = TaskStore.from_settings(settings)
        await store.ensure_groups()
        finder = Finder(store, SagaStore(store.redis, settings.prefix, settings.retention_s,
                                         settings.idempotency_ttl_s, settings.shards))
        seq = [0]
        report: dict[str, Any] = {"shards": args.shards}
        await store_tasks(store, 0, 100)
        await run_some(store, 0.1, seq)
        report["small"] = {"tasks": 100, "pages": await measure(finder, 100, args.repeat, args.limit)}
        before = (await store.redis.info("memory"))["used_memory"]
        began = time.perf_counter()
        await store_tasks(store, 100, args.n)
        stored_s = time.perf_counter() - began
        used = (await store.redis.info("memory"))["used_memory"] - before
        await run_some(store, 0.1, seq)
        report["large"] = {"tasks": args.n, "store_s": round(stored_s, 1),
                           "redis_bytes_per_task": round(used / (args.n - 100)),
                           "pages": await measure(finder, args.n, args.repeat, args.limit)}
        report["index_bytes_per_task"] = round(await index_bytes(store) / args.n)
        await store.aclose()
        return report
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--limit", type=int, default=50, help="rows per page")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    large = report["large"]
    print(f"stored {large['tasks']} tasks in {large['store_s']} s ({args.shards} shard(s)); "
          f"{large['redis_bytes_per_task']} bytes of Redis per queued task, of which the indexes "
          f"{report['index_bytes_per_task']} (after some ran)")
    print(f"{'filter (limit ' + str(args.limit) + ')':42s} {'first page, ms':>22s} {'11th page, ms':>22s}")
    print(f"{'':42s} {'100':>10s} {large['tasks']:>11d} {'100':>10s} {large['tasks']:>11d}")
    for name, small in report["small"]["pages"].items():
        big = large["pages"][name]
        print(f"{name:42s} {small['first_ms']:10.2f} {big['first_ms']:11.2f} {small['page_11_ms']:10.2f} "
              f"{big['page_11_ms']:11.2f}   rows {small['rows']}/{big['rows']}")
    if args.json:
        print(json.dumps(report, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
