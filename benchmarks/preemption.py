"""Preemption benchmark: how fast priority-10 work starts while every slot is busy, and what it costs.

    python benchmarks/preemption.py [--slots 8] [--low 48] [--low-ms 1000] [--urgent 40] [--every-ms 100] [--json]

Runs a self-hosted system twice on the same workload of long low-priority echo tasks (more than the
pool's slots, so a backlog waits): once alone (baseline), once with `--urgent` priority-10 echo tasks
arriving every `--every-ms` while the low work saturates the pool. Prints the acceptance-to-start
latency of the urgent tasks (p50/p99, from the server's records), the preemptions, and the low
work's throughput with and without preemption. Every task must succeed with the right result.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find the harness beside us
from harness import own_system, percentile, raise_interrupt

FINISHED = {"succeeded", "failed", "cancelled"}


def rpc(client: httpx.Client, base: str, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """One JSON-RPC batch; results in call order (errors raise)."""
    body = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
    replies = sorted(client.post(f"{base}/v1/rpc", json=body, timeout=60).json(), key=lambda r: r["id"])
    errors = [r["error"] for r in replies if "error" in r]
    if errors:
        raise RuntimeError(f"JSON-RPC errors: {errors[:3]}")
    return [r["result"] for r in replies]


def submit(client: httpx.Client, base: str, prompts: list[str], priority: int, delay_ms: int, steps: int) -> list[str]:
    params = [{"tool": "echo", "prompt": p, "priority": priority, "context": {"delay_ms": delay_ms, "steps": steps}}
              for p in prompts]
    ids: list[str] = []
    for start in range(0, len(params), 50):
        ids += [r["task_id"] for r in rpc(client, base, [("run_task", p) for p in params[start:start + 50]])]
    return ids


def await_all(client: httpx.Client, base: str, ids: list[str], timeout_s: float = 600) -> list[dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while len(records) < len(ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ids) - len(records)} tasks unfinished after {timeout_s}s")
        pending = [t for t in ids if t not in records][:50]
        for record in rpc(client, base, [("get_task", {"task_id": t}) for t in pending]):
            if record["status"] in FINISHED:
                records[record["task_id"]] = record
        if len(records) < len(ids):
            time.sleep(0.05)  # poll interval
    return [records[t] for t in ids]


def scenario(args: argparse.Namespace, with_urgent: bool) -> dict[str, Any]:
    overrides = {"pools": {"reasoning": {"workers": 1, "slots": args.slots}}, "router": {"aging_interval_s": 0}}
    with own_system(overrides) as (base, _settings), httpx.Client() as client:
        low_prompts = [f"low-{i}" for i in range(args.low)]
        started = time.time()
        low = submit(client, base, low_prompts, priority=1, delay_ms=args.low_ms, steps=10)
        urgent: list[str] = []
        if with_urgent:
            # Let the low work fill every slot, then send urgent tasks one at a time, paced.
            time.sleep(args.low_ms / 1000 / 2)  # pacing of the workload, not synchronisation
            for i in range(args.urgent):
                urgent += submit(client, base, [f"urgent-{i}"], priority=10, delay_ms=0, steps=1)
                time.sleep(args.every_ms / 1000)  # arrival rate of the urgent work
        low_records = await_all(client, base, low)
        urgent_records = await_all(client, base, urgent)
    low_span = max(r["finished_at"] for r in low_records) - started
    bad = [r for r, p in zip(low_records, low_prompts) if r["status"] != "succeeded" or r["result"]["text"] != p]
    bad += [r for r in urgent_records if r["status"] != "succeeded"]
    starts = [r["queue_wait_ms"] / 1000 for r in urgent_records]
    return {
        "low_seconds": round(low_span, 3),
        "low_tasks_per_s": round(args.low / low_span, 2),
        "urgent_start_p50_ms": _ms(starts, 50),
        "urgent_start_p99_ms": _ms(starts, 99),
        "urgent_start_max_ms": _ms(starts, 100),
        "preemptions": sum(r["preemptions"] for r in low_records),
        "victims": sum(1 for r in low_records if r["preemptions"]),
        "victims_resumed_from_checkpoint": sum(1 for r in low_records if r["preemptions"] and r["resumed_from"]),
        "failures": len(bad),
    }


def _ms(values: Sequence[float], q: float) -> float | None:
    value = percentile(values, q)
    return None if value is None else round(value * 1000, 2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, default=8, help="reasoning slots (one worker)")
    parser.add_argument("--low", type=int, default=48, help="low-priority tasks")
    parser.add_argument("--low-ms", type=int, default=1000, help="duration of each low task (10 checkpointed steps)")
    parser.add_argument("--urgent", type=int, default=40, help="priority-10 tasks")
    parser.add_argument("--every-ms", type=int, default=100, help="gap between urgent arrivals")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, raise_interrupt)
    baseline = scenario(args, with_urgent=False)
    loaded = scenario(args, with_urgent=True)
    cost = 1 - loaded["low_tasks_per_s"] / baseline["low_tasks_per_s"]
    report = {
        "slots": args.slots, "low": args.low, "low_ms": args.low_ms, "urgent": args.urgent, "every_ms": args.every_ms,
        **loaded,
        "baseline_low_tasks_per_s": baseline["low_tasks_per_s"],
        "throughput_cost_pct": round(cost * 100, 1),
        "failures": baseline["failures"] + loaded["failures"],
    }
    print(f"urgent start (acceptance → start): p50 {report['urgent_start_p50_ms']} ms, "
          f"p99 {report['urgent_start_p99_ms']} ms, max {report['urgent_start_max_ms']} ms")
    print(f"preemptions {report['preemptions']} over {report['victims']} victims, "
          f"{report['victims_resumed_from_checkpoint']} resumed from a checkpoint")
    print(f"low-priority throughput: {baseline['low_tasks_per_s']} tasks/s alone, "
          f"{loaded['low_tasks_per_s']} with urgent work ({report['throughput_cost_pct']} % less)")
    print(f"failures {report['failures']}")
    if args.json:
        print(json.dumps(report, separators=(",", ":")))
    return 0 if report["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
