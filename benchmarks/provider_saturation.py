"""Provider saturation: how close the orchestrator runs to a provider's rate limit, and what it costs.

    python benchmarks/provider_saturation.py [--rpm 600] [--concurrency 4] [--tasks 200] [--workers 2]
                                             [--slots 16] [--latency-ms 200] [--json]

Starts the fake OpenAI-compatible provider limited to `--rpm` requests per minute and `--concurrency`
requests in flight (429 with Retry-After above either), and a self-hosted orchestrator whose pool of
`--workers` worker processes has `--slots` slots each. Runs `--tasks` tasks twice:

- paced: the provider's limits are configured in `providers` (the shared Redis gate paces every worker);
- unpaced: nothing configured; the workers learn the limits from 429s and their Retry-After.

Prints, per run: the provider's admitted requests per minute as a fraction of the limit (measured
between its first and last admission), the 429s it answered, its peak concurrency, the tasks that
failed (must be 0), and the tasks' end-to-end p50/p99.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find the harness beside us
from harness import own_system, percentile, raise_interrupt
from preemption import await_all, rpc

from deployments.fake_provider import FakeProviderConfig
from tests.fakeprovider import RunningFakeProvider, fake_provider


def run_scenario(client: httpx.Client, base: str, tool: str, provider: RunningFakeProvider, tasks: int,
                 rpm: float) -> dict[str, Any]:
    provider.reset_stats()
    started = time.time()
    calls = [("run_task", {"tool": tool, "prompt": f"task {i} of {tool}"}) for i in range(tasks)]
    ids: list[str] = []
    for start in range(0, tasks, 50):
        ids += [r["task_id"] for r in rpc(client, base, calls[start:start + 50])]
    records = await_all(client, base, ids)
    wall_s = time.time() - started
    stats = provider.stats()
    span_s = (stats["last_admission_at"] or 0) - (stats["first_admission_at"] or 0)
    achieved_rpm = (stats["admitted"] - 1) / span_s * 60 if span_s > 0 else 0.0
    e2e_ms = [(r["finished_at"] - r["created_at"]) * 1000 for r in records]
    return {
        "tool": tool,
        "tasks": tasks,
        "failed": sum(r["status"] != "succeeded" for r in records),
        "wall_s": round(wall_s, 2),
        "provider_admitted": stats["admitted"],
        "provider_429s": stats["rate_limited"],
        "provider_max_in_flight": stats["max_in_flight"],
        "achieved_rpm": round(achieved_rpm, 1),
        "fraction_of_limit": round(achieved_rpm / rpm, 3),
        "e2e_p50_ms": round(percentile(e2e_ms, 50) or 0, 1),
        "e2e_p99_ms": round(percentile(e2e_ms, 99) or 0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpm", type=float, default=600)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, raise_interrupt)

    def config() -> FakeProviderConfig:
        return FakeProviderConfig(latency_ms=args.latency_ms, latency_jitter_ms=args.latency_ms // 4, seed=1,
                                  rate_limit_rpm=args.rpm, rate_limit_burst=2, max_concurrency=args.concurrency)

    with fake_provider(config()) as paced, fake_provider(config()) as unpaced:
        tool = {"kind": "openai", "model": "fake-model", "timeout_s": 30}
        overrides = {
            "pools": {"reasoning": {"workers": args.workers, "slots": args.slots}, "codegen": {"workers": 0},
                      "ml": {"workers": 0}},
            "tools": {"paced": {**tool, "base_url": paced.base_url},
                      "unpaced": {**tool, "base_url": unpaced.base_url}},
            "providers": {"paced": {"requests_per_minute": args.rpm, "max_concurrency": args.concurrency}},
        }
        with own_system(overrides) as (base, _settings), httpx.Client() as client:
            results = [run_scenario(client, base, name, provider, args.tasks, args.rpm)
                       for name, provider in (("paced", paced), ("unpaced", unpaced))]

    print(f"provider limit: {args.rpm:g} requests/min, {args.concurrency} concurrent; latency {args.latency_ms} ms; "
          f"{args.workers} workers x {args.slots} slots; {args.tasks} tasks per run")
    for r in results:
        print(f"  {r['tool']:8} {r['achieved_rpm']:7.1f} req/min = {r['fraction_of_limit']:.3f} of the limit; "
              f"429s {r['provider_429s']}; peak in flight {r['provider_max_in_flight']}; failed {r['failed']}; "
              f"e2e p50 {r['e2e_p50_ms']:.0f} ms p99 {r['e2e_p99_ms']:.0f} ms; wall {r['wall_s']} s")
    if args.json:
        print(json.dumps({"rpm": args.rpm, "concurrency": args.concurrency, "runs": results}))
    return 0 if all(r["failed"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
