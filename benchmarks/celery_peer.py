"""Celery peer for the throughput benchmark: null tasks through one solo-pool worker, Redis broker and backend.

    python benchmarks/celery_peer.py [-n 5000] [--batch 100] [--concurrency 4] [--latency-samples 200] [--json]

Starts its own redis-server (no persistence) and one `celery worker --pool=solo` subprocess, then measures:
- throughput: `concurrency` client threads each send their share of n tasks with `apply_async` in chunks
  of `batch` and wait for every result of a chunk before sending the next one, the shape of our client's
  waited JSON-RPC batches; timed from the first submit to the last result, every result checked;
- the CPU seconds the worker process and redis-server used during that phase (/proc/<pid>/stat);
- latency: `latency_samples` sequential `null.delay(i).get()` round trips, p50 and p99.
The worker and redis-server are stopped on the way out, also on an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import celery
import redis
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import ResultSet

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout as a script: make `tests.support` and `benchmarks` importable
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the harness beside us, as throughput.py imports it

from harness import percentile, raise_interrupt

from benchmarks.celery_app import QUEUE_ENV, URL_ENV, make_app
from tests.support import RedisServer

READY_TIMEOUT_S = 60.0
RESULT_TIMEOUT_S = 120.0  # per chunk; a chunk not back by then counts its missing results as failures
STOP_TIMEOUT_S = 10.0  # SIGTERM (warm shutdown), then SIGKILL
WARMUP_TASKS = 20  # uncounted, like throughput.py's warm-up batch


def cpu_s(pid: int) -> float:
    """utime + stime of a process so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # fields 14 and 15 of stat(5)


def _start_worker(redis_url: str, queue: str, log: Any) -> subprocess.Popen[bytes]:
    env = {**os.environ, URL_ENV: redis_url, QUEUE_ENV: queue,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # --without-mingle/--without-gossip: no start-up sync with (non-existent) peer workers, no gossip consumer.
    # Loglevel WARNING (Celery's default) keeps per-task "received/succeeded" lines out of the hot path.
    args = [sys.executable, "-m", "celery", "-A", "benchmarks.celery_app", "worker", "--pool=solo",
            "--concurrency=1", "-Q", queue, "-n", f"{queue}@%h", "--loglevel=WARNING",
            "--without-mingle", "--without-gossip"]
    # Own session: a Ctrl-C at the terminal reaches only us, and we stop the worker in order.
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ready(app: celery.Celery, worker: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not app.control.ping(timeout=0.5):  # the Redis is ours, so any reply is our worker
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"celery worker not ready (exit status {worker.returncode}):\n"
                               f"{log_path.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _client(app: celery.Celery, indices: range, batch: int, stop: threading.Event) -> int:
    """Send `indices` in chunks of `batch`, waiting for each chunk's results; return how many failed."""
    null = app.tasks["null"]
    failed = 0
    for start in range(0, len(indices), batch):
        if stop.is_set():
            break
        chunk = indices[start:start + batch]
        results = ResultSet([null.apply_async((i,)) for i in chunk])
        try:
            # interval=0: before listening on pub/sub, ResultSet.get MGETs the results once and, if any is
            # not ready yet, sleeps one `interval` (default 0.5 s), which capped each client at ~2 chunks/s.
            values = results.get(timeout=RESULT_TIMEOUT_S, propagate=False, interval=0)
        except CeleryTimeoutError:
            values = [r.result if r.ready() else None for r in results.results]
        failed += sum(value != i for i, value in zip(chunk, values))
    return failed


def run_celery(n: int, *, batch: int = 100, concurrency: int = 4, latency_samples: int = 200) -> dict[str, Any]:
    """Throughput, per-process CPU and round-trip latency of null tasks on Celery; see the module docstring."""
    redis_server = RedisServer().start()
    queue = f"peer-{uuid.uuid4().hex[:8]}"
    app = make_app(redis_server.url, queue)
    log_dir = Path(tempfile.mkdtemp(prefix="celery-peer-"))
    log_path = log_dir / "worker.log"
    worker = None
    try:
        with log_path.open("wb") as log:
            worker = _start_worker(redis_server.url, queue, log)
        _wait_ready(app, worker, log_path)
        null = app.tasks["null"]
        ResultSet([null.delay(i) for i in range(WARMUP_TASKS)]).get(timeout=RESULT_TIMEOUT_S, interval=0)

        with redis.Redis.from_url(redis_server.url) as client:
            redis_pid = int(client.info("server")["process_id"])
        pids = {"worker": worker.pid, "redis": redis_pid}
        shares = [range(c, n, concurrency) for c in range(concurrency)]  # interleaved: equal shares
        stop = threading.Event()
        with ThreadPoolExecutor(concurrency) as pool:
            cpu_before = {name: cpu_s(pid) for name, pid in pids.items()}
            client_cpu_before = time.process_time()
            started = time.perf_counter()
            try:
                failed = sum(pool.map(lambda share: _client(app, share, batch, stop), shares))
            finally:
                stop.set()  # on Ctrl-C the clients give up after their current chunk, so the pool can join them
            seconds = time.perf_counter() - started
            client_cpu_s = time.process_time() - client_cpu_before
            cpu = {name: cpu_s(pid) - cpu_before[name] for name, pid in pids.items()}

        latencies_ms = []
        for i in range(latency_samples):
            sent = time.perf_counter()
            value = null.delay(i).get(timeout=RESULT_TIMEOUT_S)
            latencies_ms.append((time.perf_counter() - sent) * 1000)
            failed += value != i
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        try:
            app.close()
            if worker is not None:
                _stop(worker)
            redis_server.stop()
            with contextlib.suppress(OSError):
                for path in log_dir.iterdir():
                    path.unlink()
                log_dir.rmdir()
        finally:
            signal.signal(signal.SIGINT, previous)

    p50, p99 = percentile(latencies_ms, 50), percentile(latencies_ms, 99)
    return {"system": "celery", "version": celery.__version__, "tasks": n, "seconds": round(seconds, 3),
            "tasks_per_s": round(n / seconds, 1), "failed": failed,
            "latency_p50_ms": None if p50 is None else round(p50, 3),
            "latency_p99_ms": None if p99 is None else round(p99, 3),
            "pool": "solo", "broker": "redis", "backend": "redis",
            "worker_cpu_s": round(cpu["worker"], 2), "redis_cpu_s": round(cpu["redis"], 2),
            "client_cpu_s": round(client_cpu_s, 2)}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="tasks in the throughput phase (default 5000)")
    parser.add_argument("--batch", type=int, default=100, help="apply_async calls per chunk (default 100)")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--latency-samples", type=int, default=200, help="sequential round trips (default 200)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_interrupt)  # unwind through run_celery's cleanup
    try:
        report = run_celery(args.n, batch=args.batch, concurrency=args.concurrency,
                            latency_samples=args.latency_samples)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(report, separators=(",", ":")))
    else:
        print(f"celery {report['version']} solo/redis: {report['tasks']} tasks in {report['seconds']} s -> "
              f"{report['tasks_per_s']} tasks/s, {report['failed']} failed; round trip p50 "
              f"{report['latency_p50_ms']} ms p99 {report['latency_p99_ms']} ms; CPU worker "
              f"{report['worker_cpu_s']} s, redis {report['redis_cpu_s']} s, client {report['client_cpu_s']} s")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
