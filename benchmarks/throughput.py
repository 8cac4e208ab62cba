"""Throughput benchmark: echo tasks as JSON-RPC batches against a running or a self-started orchestrator.

    python benchmarks/throughput.py [--url URL] [-n 2000] [--batch 50] [--concurrency 4] [--delay-ms 0]
                                    [--priority 5] [--no-wait] [--processes 2] [--latency-samples 100]
                                    [--vs-celery] [--trace] [--json]

Without --url it starts its own redis-server, Ray, Serve and the orchestrator for the run and tears them
down afterwards, also on error or Ctrl-C, and reports the CPU every process of it used per task. Every task
is checked (succeeded, right text); any lost or failed task makes the exit status non-zero. After the
throughput run, `--latency-samples` single `run_task` calls with `wait` on the idle system give the round
trip of one task. `--vs-celery` then runs the same load on Celery (solo pool, Redis broker and result
backend; `pip install -e '.[bench]'`) in the same run and prints both rates and the ratio. `--trace` runs the
self-started system with tracing on, exporting to a throwaway OTLP/HTTP receiver of the benchmark's own
(compare with a run without it: the cost of tracing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import queue
import signal
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import httpx

from orchestrator.auth import hash_key, new_key

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find the harness beside us
from harness import cpu_by_process, cpu_spent, own_system, percentile, raise_interrupt, wait_healthy

RPC_PATH = "/v1/rpc"
MAX_RPC_BATCH = 100  # the server's default limits.max_batch; get_task polls stay within it
FINISHED = frozenset({"succeeded", "failed", "cancelled"})
POLL_INTERVAL_S = 0.1  # pause after a get_task round that found some task still unfinished
# Polling is the instrument, not the load: one get_task batch at a time, for the oldest unfinished
# tasks (they finish roughly in submission order); the next batch follows at once only when this one
# was all finished. A get_task batch of k ids makes the ingress issue k concurrent Redis reads, and
# its Redis pool (100 connections) refuses rather than queues beyond that, so k stays small while
# submits are in flight too.
POLL_BATCH = 20
POLL_BATCH_AFTER_SENDING = 60
TASK_NOT_FOUND = -32001


@dataclass(frozen=True, slots=True)
class Load:
    base_url: str
    run_id: str
    batch: int
    delay_ms: int
    priority: int
    wait_s: float  # 0: submit only, then poll get_task
    timeout_s: float  # for the whole run, after which unfinished tasks count as lost
    api_key: str | None = None  # sent as a bearer token


@dataclass(slots=True)
class Outcome:
    """One task as the client saw it; times are wall-clock (time.time), comparable across processes."""

    index: int
    sent_at: float
    accepted_at: float | None = None
    known_at: float | None = None  # when the client learned the final state
    task_id: str | None = None
    status: str | None = None
    error: str | None = None
    text_ok: bool = False
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == "succeeded" and self.text_ok


def prompt(run_id: str, index: int) -> str:
    return f"bench-{run_id}-{index}"


# --- the client ---------------------------------------------------------------------------------


def _absorb(outcome: Outcome, result: Any, now: float, run_id: str) -> None:
    """Take a `run_task` or `get_task` result: a record once finished, else just the id and status."""
    if not isinstance(result, dict):
        outcome.error = f"unexpected result {result!r:.200}"
        return
    outcome.task_id = result.get("task_id", outcome.task_id)
    outcome.status = result.get("status")
    if outcome.status in FINISHED and "created_at" in result:
        outcome.known_at = now
        outcome.text_ok = (result.get("result") or {}).get("text") == prompt(run_id, outcome.index)
        outcome.created_at = result.get("created_at")
        outcome.started_at = result.get("started_at")
        outcome.finished_at = result.get("finished_at")
        if outcome.status != "succeeded":
            outcome.error = f"task {outcome.status}: {result.get('error')}"


async def _post(client: httpx.AsyncClient, body: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    """One JSON-RPC batch; the replies by id."""
    reply = await client.post(RPC_PATH, content=json.dumps(body), headers={"content-type": "application/json"})
    reply.raise_for_status()
    replies = reply.json()
    if not isinstance(replies, list):  # a batch-level error (e.g. batch too large) comes back as one object
        raise ValueError(f"batch rejected: {replies!r:.300}")
    return {r.get("id"): r for r in replies}


async def _submit(client: httpx.AsyncClient, load: Load, batch: Sequence[int], outcomes: dict[int, Outcome]) -> None:
    params: dict[str, Any] = {"tool": "echo", "priority": load.priority, "context": {"delay_ms": load.delay_ms}}
    if load.wait_s:
        params["wait"] = load.wait_s
    body = [{"jsonrpc": "2.0", "id": i, "method": "run_task", "params": {**params, "prompt": prompt(load.run_id, i)}}
            for i in batch]
    sent_at = time.time()
    try:
        replies = await _post(client, body)
    except (httpx.HTTPError, ValueError) as exc:
        for i in batch:
            outcomes[i] = Outcome(i, sent_at, error=f"submit failed: {exc!r:.300}")
        return
    now = time.time()
    for i in batch:
        outcome = outcomes[i] = Outcome(i, sent_at, accepted_at=now)
        reply = replies.get(i)
        if reply is None:
            outcome.error = "no reply for this request in the batch"
        elif "error" in reply:
            outcome.error = f"rpc error {reply['error'].get('code')}: {reply['error'].get('message')}"
        else:
            _absorb(outcome, reply.get("result"), now, load.run_id)


async def _poll(client: httpx.AsyncClient, load: Load, outcomes: dict[int, Outcome], sent: asyncio.Event,
                deadline: float) -> int:
    """Alongside the senders, get_task the accepted, unfinished tasks until all are finished (or the
    deadline passes); returns how many get_task answers were transient errors (asked again)."""
    transient = 0

    async def check(batch: list[Outcome]) -> bool:
        """True when every task in the batch is now settled."""
        nonlocal transient
        body = [{"jsonrpc": "2.0", "id": o.task_id, "method": "get_task", "params": {"task_id": o.task_id}}
                for o in batch]
        try:
            replies = await _post(client, body)
        except (httpx.HTTPError, ValueError):
            transient += len(batch)
            return False
        now = time.time()
        for outcome in batch:
            reply = replies.get(outcome.task_id)
            if reply is None or ("error" in reply and reply["error"].get("code") != TASK_NOT_FOUND):
                transient += 1  # e.g. an internal error: the task's fate is unknown, not failed; ask again
            elif "error" in reply:
                outcome.error = f"lost: get_task says {reply['error'].get('message')}"
            else:
                _absorb(outcome, reply.get("result"), now, load.run_id)
        return all(o.error is not None or o.known_at is not None for o in batch)

    while True:
        sending_done = sent.is_set()  # read before scanning, so no task accepted afterwards is missed
        pending = [o for o in outcomes.values() if o.error is None and o.known_at is None and o.task_id]
        if not pending:
            if sending_done:
                return transient
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sent.wait(), POLL_INTERVAL_S)
            continue
        if time.time() > deadline:
            for outcome in pending:
                outcome.error = f"not finished after {load.timeout_s:.0f}s (last status {outcome.status})"
            return transient
        if not await check(pending[:POLL_BATCH_AFTER_SENDING if sending_done else POLL_BATCH]):
            await asyncio.sleep(POLL_INTERVAL_S)  # a poll period, not synchronisation


async def run_client(load: Load, batches: Sequence[Sequence[int]], concurrency: int,
                     ready: Callable[[], None]) -> tuple[list[Outcome], int]:
    """Send `batches` over `concurrency` connections, polling (on one more) what replies left unfinished."""
    limits = httpx.Limits(max_connections=concurrency + 1, max_keepalive_connections=concurrency + 1)
    timeout = httpx.Timeout(load.wait_s + 30, connect=10)
    headers = {"Authorization": f"Bearer {load.api_key}"} if load.api_key else {}
    async with httpx.AsyncClient(base_url=load.base_url, timeout=timeout, limits=limits, headers=headers) as client:
        # Open every connection before the clock starts.
        await asyncio.gather(*(client.get("/healthz") for _ in range(concurrency + 1)))
        ready()
        deadline = time.time() + load.timeout_s
        queue = deque(batches)
        outcomes: dict[int, Outcome] = {}
        sent = asyncio.Event()
        poller = asyncio.create_task(_poll(client, load, outcomes, sent, deadline))

        async def sender() -> None:
            while queue:
                await _submit(client, load, queue.popleft(), outcomes)

        try:
            await asyncio.gather(*(sender() for _ in range(concurrency)))
        finally:
            sent.set()
        poll_errors = await poller
    return sorted(outcomes.values(), key=lambda o: o.index), poll_errors


def _client_process(load: Load, batches: list[list[int]], concurrency: int, barrier: Any, results: Any) -> None:
    """Entry point of one client process: its share of the batches; results go back as plain tuples."""
    try:
        outcomes, poll_errors = asyncio.run(run_client(load, batches, concurrency, lambda: barrier.wait(timeout=120)))
        results.put(("ok", ([astuple(o) for o in outcomes], poll_errors)))
    except BaseException as exc:  # report anything, the parent decides
        results.put(("error", repr(exc)))


def drive(load: Load, n: int, concurrency: int, processes: int) -> tuple[list[Outcome], int]:
    """Run the load over `processes` client processes (in this process when 1)."""
    batches = [list(range(k, min(k + load.batch, n))) for k in range(0, n, load.batch)]
    if processes == 1:
        return asyncio.run(run_client(load, batches, concurrency, lambda: None))
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    shares = [concurrency // processes + (1 if p < concurrency % processes else 0) for p in range(processes)]
    children = [ctx.Process(target=_client_process, args=(load, batches[p::processes], shares[p], barrier, results),
                            daemon=True) for p in range(processes)]
    for child in children:
        child.start()
    try:
        outcomes: list[Outcome] = []
        poll_errors = 0
        for _ in children:
            while True:
                try:
                    kind, payload = results.get(timeout=1.0)
                    break
                except queue.Empty:
                    if any(child.exitcode not in (None, 0) for child in children):
                        raise RuntimeError("a client process died without reporting") from None
            if kind != "ok":
                raise RuntimeError(f"a client process failed: {payload}")
            outcomes += [Outcome(*row) for row in payload[0]]
            poll_errors += payload[1]
        return sorted(outcomes, key=lambda o: o.index), poll_errors
    finally:
        for child in children:  # only the processes this run started
            child.join(timeout=5)
            if child.is_alive():
                child.terminate()
                child.join()


async def warm_up(base_url: str, size: int, wait_s: float, api_key: str | None) -> None:
    """One small waited batch, not counted: the first tasks pay for connections and lazy starts."""
    load = Load(base_url, f"warmup{uuid.uuid4().hex[:6]}", size, 0, 5, wait_s, wait_s + 60, api_key)
    outcomes, _ = await run_client(load, [list(range(size))], 1, lambda: None)
    bad = [o for o in outcomes if not o.ok]
    if bad:
        raise RuntimeError(f"warm-up failed: {len(bad)}/{size} tasks, e.g. {bad[0].error or bad[0].status}")


def _ms(values: Sequence[float], q: float) -> float | None:
    value = percentile(values, q)
    return None if value is None else round(value * 1000, 2)


def _rate(count: int, seconds: float | None) -> float | None:
    return round(count / seconds, 1) if seconds else None


def summarize(outcomes: Sequence[Outcome], n: int, wait_mode: bool) -> dict[str, Any]:
    ok = [o for o in outcomes if o.ok]
    known = [o for o in outcomes if o.known_at is not None]
    first_sent = min((o.sent_at for o in outcomes), default=None)
    last_known = max((o.known_at for o in known), default=None)  # type: ignore[type-var]
    seconds = last_known - first_sent if first_sent is not None and last_known is not None else None
    queue_wait = [o.started_at - o.created_at for o in ok if o.started_at is not None and o.created_at is not None]
    server_e2e = [o.finished_at - o.created_at for o in ok if o.finished_at is not None and o.created_at is not None]
    run = [o.finished_at - o.started_at for o in ok if o.finished_at is not None and o.started_at is not None]
    created = [o.created_at for o in ok if o.created_at is not None]
    finished = [o.finished_at for o in ok if o.finished_at is not None]
    server_span = max(finished) - min(created) if created and finished else None
    e2e = [o.known_at - o.sent_at for o in ok if o.known_at is not None]
    report: dict[str, Any] = {
        "tasks": n,
        "succeeded": len(ok),
        "failures": n - len(ok),
        "seconds": round(seconds, 3) if seconds else None,
        "tasks_per_s": _rate(len(ok), seconds),
        "e2e_p50_ms": _ms(e2e, 50),
        "e2e_p99_ms": _ms(e2e, 99),
        "queue_wait_p50_ms": _ms(queue_wait, 50),
        "queue_wait_p99_ms": _ms(queue_wait, 99),
        "run_p50_ms": _ms(run, 50),
        "run_p99_ms": _ms(run, 99),
        "server_e2e_p50_ms": _ms(server_e2e, 50),
        "server_e2e_p99_ms": _ms(server_e2e, 99),
        "server_seconds": round(server_span, 3) if server_span else None,
        "server_tasks_per_s": _rate(len(ok), server_span),
    }
    if not wait_mode:
        accepted = [o for o in outcomes if o.accepted_at is not None and o.task_id]
        last_accept = max((o.accepted_at for o in accepted), default=None)  # type: ignore[type-var]
        accept_s = last_accept - first_sent if first_sent is not None and last_accept is not None else None
        report |= {
            "accepted": len(accepted),
            "accept_seconds": round(accept_s, 3) if accept_s else None,
            "accept_tasks_per_s": _rate(len(accepted), accept_s),
            "completion_seconds": report["seconds"],
            "completion_tasks_per_s": report["tasks_per_s"],
        }
    errors: dict[str, int] = {}
    for o in outcomes:
        if not o.ok:
            reason = o.error or f"status {o.status}, text ok {o.text_ok}"
            errors[reason[:120]] = errors.get(reason[:120], 0) + 1
    report["failure_reasons"] = dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5])
    return report


def print_report(report: dict[str, Any]) -> None:
    def fmt(key: str) -> str:
        value = report.get(key)
        return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    print(f"target        {report['url'] or 'self-hosted'}{' with an API key' if report['auth'] else ''}, "
          f"{report['proxy']} proxy "
          f"({report['mode']}; batch {report['batch']}, "
          f"concurrency {report['concurrency']} over {report['processes']} process(es), delay {report['delay_ms']} ms, "
          f"reasoning workers {fmt('workers')} x slots {fmt('slots')})")
    print(f"tasks         {report['tasks']}  succeeded {report['succeeded']}  failures {report['failures']}")
    if report["mode"] == "no-wait":
        print(f"accept        {fmt('accept_seconds')} s  ->  {fmt('accept_tasks_per_s')} tasks/s accepted durably")
        print(f"completion    {fmt('completion_seconds')} s  ->  {fmt('completion_tasks_per_s')} tasks/s "
              f"(client-observed, poll period {POLL_INTERVAL_S}s)")
    else:
        print(f"throughput    {fmt('seconds')} s  ->  {fmt('tasks_per_s')} tasks/s")
    print(f"server span   {fmt('server_seconds')} s  ->  {fmt('server_tasks_per_s')} tasks/s "
          "(first created_at to last finished_at)")
    print(f"client e2e    p50 {fmt('e2e_p50_ms')} ms  p99 {fmt('e2e_p99_ms')} ms")
    print(f"queue wait    p50 {fmt('queue_wait_p50_ms')} ms  p99 {fmt('queue_wait_p99_ms')} ms  (started_at - created_at)")
    print(f"run           p50 {fmt('run_p50_ms')} ms  p99 {fmt('run_p99_ms')} ms  (finished_at - started_at)")
    print(f"server e2e    p50 {fmt('server_e2e_p50_ms')} ms  p99 {fmt('server_e2e_p99_ms')} ms  "
          "(finished_at - created_at)")
    if report.get("cpu_ms_per_task") is not None:
        top = ", ".join(f"{name} {seconds:g}" for name, seconds in list(report["cpu_s"].items())[:8])
        print(f"cpu           {fmt('cpu_ms_per_task')} ms per task over every process ({top} s)")
    if report.get("latency_samples"):
        print(f"one task      p50 {fmt('latency_p50_ms')} ms  p99 {fmt('latency_p99_ms')} ms  "
              f"(run_task with wait, {report['latency_samples']} sequential calls on the idle system)")
    if "celery" in report:
        peer = report["celery"]
        print(f"celery        {peer['tasks_per_s']:g} tasks/s (solo pool, Redis broker and backend; worker "
              f"{peer['worker_cpu_s']:g} + redis {peer['redis_cpu_s']:g} + client {peer['client_cpu_s']:g} CPU s); "
              f"one task p50 {peer['latency_p50_ms']} ms")
        print(f"ratio         {fmt('ratio_vs_celery')} x Celery's throughput, same load, same machine, same run")
    if "spans_received" in report:
        print(f"tracing       on: {report['spans_received']} spans received by the OTLP receiver during the run")
    if report["poll_errors"]:
        print(f"poll errors   {report['poll_errors']} get_task answers were errors and were asked again")
    for reason, count in report["failure_reasons"].items():
        print(f"failure       {count} x {reason}")


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="base URL of a running orchestrator (default: start one for the run)")
    parser.add_argument("-n", type=int, default=2000, help="tasks to run (default 2000)")
    parser.add_argument("--batch", type=int, default=50, help="run_task requests per JSON-RPC batch (default 50)")
    parser.add_argument("--concurrency", type=int, default=4, help="batches in flight (default 4)")
    parser.add_argument("--processes", type=int,
                        help="client processes sharing the concurrency (default min(2, concurrency); see README)")
    parser.add_argument("--delay-ms", type=int, default=0, help="echo's delay_ms per task (default 0)")
    parser.add_argument("--priority", type=int, default=5, help="task priority 0..10 (default 5)")
    parser.add_argument("--wait", type=float, default=120.0,
                        help="run_task `wait` seconds (the server caps it; unfinished tasks are then polled)")
    parser.add_argument("--no-wait", action="store_true",
                        help="submit only (measures the durable accept rate), then poll get_task until done")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="give up on unfinished tasks after this")
    parser.add_argument("--warmup", type=int, default=20, help="tasks in the uncounted warm-up batch (0: none)")
    parser.add_argument("--slots", type=int, help="self-hosted: slots per reasoning worker")
    parser.add_argument("--workers", type=int, help="self-hosted: reasoning workers")
    parser.add_argument("--api-key", default=os.environ.get("ORCH_API_KEY"),
                        help="with --url: the API key to send (default: $ORCH_API_KEY)")
    parser.add_argument("--auth", action="store_true",
                        help="self-hosted: with an API key and a tenant quota, so every request pays for both")
    parser.add_argument("--haproxy", action="store_true",
                        help="self-hosted: HAProxy as the HTTP ingress (http.proxy=haproxy; implies --auth)")
    parser.add_argument("--keep-logs", action="store_true", help="self-hosted: keep Ray's temp dir (its logs)")
    parser.add_argument("--latency-samples", type=int, default=100,
                        help="sequential single run_task calls with wait, after the run (0: none)")
    parser.add_argument("--vs-celery", action="store_true",
                        help="also run the same load on Celery in this run and report the ratio (needs .[bench])")
    parser.add_argument("--trace", action="store_true",
                        help="self-hosted: tracing on, every span exported (OTLP/HTTP) to a receiver of our own")
    parser.add_argument("--json", action="store_true", help="also print one JSON object as the last line")
    args = parser.parse_args(argv)
    if args.processes is None:
        args.processes = min(2, args.concurrency)
    if args.n < 1 or args.batch < 1 or args.concurrency < 1 or not 1 <= args.processes <= args.concurrency:
        parser.error("need n, batch, concurrency >= 1 and 1 <= processes <= concurrency")
    if args.url and (args.slots is not None or args.workers is not None or args.auth or args.haproxy or args.trace):
        parser.error("--slots/--workers/--auth/--haproxy/--trace shape a self-hosted system; they do not apply "
                     "with --url")
    args.auth = args.auth or args.haproxy  # HAProxy listens on every interface: only with API keys
    return args


async def single_task_latency(base_url: str, samples: int, api_key: str | None) -> dict[str, Any]:
    """`samples` sequential run_task calls with `wait` on an otherwise idle system: one task's round trip."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    seconds: list[float] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=30, headers=headers) as client:
        for i in range(samples):
            body = {"jsonrpc": "2.0", "id": i, "method": "run_task",
                    "params": {"tool": "echo", "prompt": f"one-{i}", "wait": 10}}
            sent = time.perf_counter()
            reply = (await client.post(RPC_PATH, json=body)).json()
            seconds.append(time.perf_counter() - sent)
            if reply.get("result", {}).get("status") != "succeeded":
                raise RuntimeError(f"single task failed: {reply!r:.300}")
    return {"latency_samples": samples, "latency_p50_ms": _ms(seconds, 50), "latency_p99_ms": _ms(seconds, 99)}


def run(args: argparse.Namespace, base_url: str, pool: dict[str, Any]) -> dict[str, Any]:
    wait_s = 0.0 if args.no_wait else args.wait
    if args.warmup:
        asyncio.run(warm_up(base_url, min(args.warmup, MAX_RPC_BATCH), max(args.wait, 30.0), args.api_key))
    load = Load(base_url, uuid.uuid4().hex[:8], args.batch, args.delay_ms, args.priority, wait_s, args.timeout_s,
                args.api_key)
    cpu_before = None if args.url else cpu_by_process()
    outcomes, poll_errors = drive(load, args.n, args.concurrency, args.processes)
    report = summarize(outcomes, args.n, wait_mode=not args.no_wait) | {"poll_errors": poll_errors}
    if cpu_before is not None:
        spent = cpu_spent(cpu_before, cpu_by_process())
        report |= {"cpu_s": spent, "cpu_ms_per_task": round(sum(spent.values()) * 1000 / args.n, 3)}
    if args.latency_samples:
        report |= asyncio.run(single_task_latency(base_url, args.latency_samples, args.api_key))
    params = {"url": args.url, "auth": bool(args.api_key), "proxy": "haproxy" if args.haproxy else "serve",
              "mode": "no-wait" if args.no_wait else "wait", "n": args.n,
              "batch": args.batch,
              "concurrency": args.concurrency, "processes": args.processes, "delay_ms": args.delay_ms,
              "priority": args.priority, "wait_s": wait_s, **pool}
    return params | report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        if args.url:
            base_url = args.url.rstrip("/")
            wait_healthy(base_url, 10)
            report = run(args, base_url, {"workers": None, "slots": None})
        else:
            reasoning = {k: v for k, v in (("workers", args.workers), ("slots", args.slots)) if v is not None}
            overrides: dict[str, Any] = {"limits": {"max_wait_s": max(args.wait, 60.0)}}
            if args.haproxy:
                overrides["http"] = {"proxy": "haproxy"}
            if reasoning:
                overrides["pools"] = {"reasoning": reasoning}
            if args.auth:  # a quota the load stays within: measured is the cost of checking it
                args.api_key = new_key()
                overrides["auth"] = {"keys": {"bench": {"hash": hash_key(args.api_key), "tenant": "bench",
                                                         "scopes": ["submit", "read"]}},
                                     "default_quota": {"max_active_tasks": args.n + MAX_RPC_BATCH,
                                                       "submits_per_s": 1e6, "submit_burst": 1_000_000}}
            with contextlib.ExitStack() as stack:
                if args.trace:
                    from tests.otlp import otlp_receiver

                    receiver = stack.enter_context(otlp_receiver())
                    overrides["tracing"] = {"env": {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                                    "OTEL_SERVICE_NAME": "bench"}}
                base_url, settings = stack.enter_context(own_system(overrides, args.keep_logs))
                pool = settings.pools["reasoning"]
                report = run(args, base_url, {"workers": pool.workers, "slots": pool.slots})
                if args.trace:
                    report["spans_received"] = len(receiver.spans())  # before teardown: the batches still queued
        if args.vs_celery:
            from celery_peer import run_celery

            peer = run_celery(args.n, batch=args.batch, concurrency=args.concurrency,
                              latency_samples=args.latency_samples)
            report["celery"] = peer
            report["ratio_vs_celery"] = round(report["tasks_per_s"] / peer["tasks_per_s"], 2) \
                if report["tasks_per_s"] else None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print_report(report)
    if args.json:
        print(json.dumps(report, separators=(",", ":")))
    return 0 if report["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
