"""Batch ML job: submit a grid of `autotune` tasks to the orchestrator, follow them to the end, print a summary.

Standalone (stdlib + httpx) so it runs wherever the job runs:

    ray job submit --address http://127.0.0.1:8265 -- python deployments/batch_ml.py --url http://127.0.0.1:8000
    ray submit ray_cluster.yaml deployments/batch_ml.py -- --datasets iris,wine --models svc

One task per (dataset, model), submitted in one JSON-RPC batch to `/v2/rpc`, each with an idempotency key
derived from its input (and `--run-id`): running the job again follows the same tasks instead of
submitting them twice. Exit code 0 only if every task succeeded; 1 otherwise; 2 for bad options.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

TOOL = "autotune"
FINISHED = {"succeeded", "failed", "cancelled"}
DEFAULT_SEARCH: dict[str, dict[str, list[Any]]] = {
    # Small grids: a batch is datasets × models tasks, each trial of each one a Ray task.
    "svc": {"C": [0.1, 1.0, 10.0], "gamma": ["scale", 0.01]},
    "logistic_regression": {"C": [0.1, 1.0, 10.0]},
    "random_forest": {"n_estimators": [50, 100], "max_depth": [None, 5]},
    "gradient_boosting": {"n_estimators": [50, 100], "learning_rate": [0.05, 0.1]},
    "knn": {"n_neighbors": [3, 5, 9]},
}
CHUNK = 50  # JSON-RPC batch members per request (the server's default limit is 100)
RETRYABLE_HTTP = {429, 500, 502, 503, 504}


class JobError(Exception):
    """A failure that ends the job with a readable message."""


@dataclass
class Entry:
    """One task of the batch, as the job tracks it."""

    dataset: str
    model: str
    input: dict[str, Any]
    idempotency_key: str
    task_id: str | None = None
    status: str = "unsubmitted"
    duplicate: bool = False
    progress: Any = None
    result: Any = None
    error: dict[str, Any] | None = None
    shown: str = field(default="", repr=False)

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.model}"

    @property
    def done(self) -> bool:
        return self.status in FINISHED or self.status == "rejected"


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('must be a JSON object, e.g. {"C": [0.1, 1]}')
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", default=os.environ.get("ORCH_URL", "http://127.0.0.1:8000"),
                        help="orchestrator base URL (default: $ORCH_URL or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", default=os.environ.get("ORCH_API_KEY"),
                        help="API key with scopes submit and read (default: $ORCH_API_KEY; none when auth is off)")
    parser.add_argument("--datasets", default="iris,wine,breast_cancer", help="comma-separated bundled datasets")
    parser.add_argument("--models", default="svc,random_forest", help="comma-separated autotune models")
    parser.add_argument("--cv", type=int, default=5, help="cross-validation folds (2..10)")
    parser.add_argument("--search", type=json_object, default=None,
                        help='JSON grid used for every model, e.g. \'{"C": [0.1, 1]}\' (default: a small grid per model)')
    parser.add_argument("--scoring", default="accuracy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--priority", type=int, default=2, help="0 (bulk) .. 10; a batch should not preempt")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="give up following after this long")
    parser.add_argument("--poll-interval-s", type=float, default=1.0)
    parser.add_argument("--run-id", default="", help="change it to run the same batch again as new tasks")
    parser.add_argument("--agent", default="batch_ml", help="the submitting agent, as the orchestrator records it")
    args = parser.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.datasets or not args.models:
        parser.error("--datasets and --models need at least one name each")
    unknown = [m for m in args.models if m not in DEFAULT_SEARCH and args.search is None]
    if unknown:
        parser.error(f"no default grid for {', '.join(unknown)}: pass --search")
    return args


def plan(args: argparse.Namespace) -> list[Entry]:
    """One entry per (dataset, model), with a stable idempotency key."""
    entries: list[Entry] = []
    for dataset in args.datasets:
        for model in args.models:
            tool_input = {"model": model, "dataset": dataset, "cv": args.cv, "scoring": args.scoring,
                          "seed": args.seed, "search": args.search if args.search is not None else DEFAULT_SEARCH[model]}
            digest = hashlib.sha256(json.dumps({"run_id": args.run_id, "input": tool_input},
                                               sort_keys=True).encode()).hexdigest()[:32]
            entries.append(Entry(dataset, model, tool_input, f"batch_ml:{digest}"))
    return entries


class Client:
    """JSON-RPC batches to `/v2/rpc`, retrying what a restart or overload makes fail for a while."""

    def __init__(self, url: str, deadline: float, api_key: str | None = None) -> None:
        self.url = url.rstrip("/") + "/v2/rpc"
        self.deadline = deadline
        self.http = httpx.Client(timeout=30.0, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})

    def batch(self, calls: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Replies in call order; an HTTP or connection failure is retried until the deadline."""
        body = [{"jsonrpc": "2.0", "id": i, "method": method, "params": params}
                for i, (method, params) in enumerate(calls)]
        delay_s = 0.5
        while True:
            problem = self._post(body)
            if isinstance(problem, list):
                by_id = {reply.get("id"): reply for reply in problem}
                return [by_id.get(i, {"error": {"code": -32603, "message": "no reply"}}) for i in range(len(calls))]
            if time.monotonic() + delay_s > self.deadline:
                raise JobError(f"orchestrator at {self.url} unavailable: {problem}")
            log(f"orchestrator unavailable ({problem}); retrying in {delay_s:g} s")
            time.sleep(delay_s)  # backoff between retries
            delay_s = min(delay_s * 2, 10.0)

    def _post(self, body: list[dict[str, Any]]) -> list[dict[str, Any]] | str:
        try:
            response = self.http.post(self.url, json=body)
        except httpx.TransportError as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.status_code in RETRYABLE_HTTP:
            return f"HTTP {response.status_code}"
        try:
            replies = response.json()
        except ValueError:
            raise JobError(f"{self.url} answered HTTP {response.status_code} with a non-JSON body") from None
        if not isinstance(replies, list):  # a whole-request error (e.g. the body too large)
            error = replies.get("error", {}) if isinstance(replies, dict) else {}
            hint = " (pass --api-key or set ORCH_API_KEY)" if response.status_code == 401 else ""
            raise JobError(f"{self.url} refused the batch: {error.get('message', replies)}{hint}")
        return replies


def log(line: str) -> None:
    print(line, flush=True)  # the job's output is its interface: Ray keeps it as the job's logs


def submit(client: Client, entries: list[Entry], priority: int, agent: str) -> None:
    """Submit every entry, retrying members refused for a retryable reason (queue full, restarting)."""
    todo = [e for e in entries if e.task_id is None]
    wait_s = 0.5
    while todo:
        retry: list[Entry] = []
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start:start + CHUNK]
            calls = [("run_task", {"tool": TOOL, "input": e.input, "priority": priority,
                                   "idempotency_key": e.idempotency_key, "agent": agent}) for e in chunk]
            for entry, reply in zip(chunk, client.batch(calls), strict=True):
                if "result" in reply:
                    entry.task_id = reply["result"]["task_id"]
                    entry.status = "submitted"  # `follow` reads its record, even when it has already finished
                    entry.duplicate = bool(reply["result"].get("duplicate"))
                    log(f"submitted {entry.label}: task {entry.task_id}"
                        + (" (already submitted: following it)" if entry.duplicate else ""))
                    continue
                error = reply.get("error") or {}
                data = error.get("data") if isinstance(error.get("data"), dict) else {}
                if data.get("retryable"):
                    wait_s = max(wait_s, float(data.get("retry_after_s") or 0))
                    retry.append(entry)
                    continue
                entry.status, entry.error = "rejected", {"code": error.get("code"), "message": error.get("message"),
                                                          "data": error.get("data")}
                log(f"rejected {entry.label}: {error.get('message')} {json.dumps(error.get('data'))}")
        todo = retry
        if todo:
            if time.monotonic() + wait_s > client.deadline:
                for entry in todo:
                    entry.status, entry.error = "rejected", {"message": "still refused (retryable) at the deadline"}
                return
            log(f"{len(todo)} tasks refused for now (queue full or restarting); retrying in {wait_s:g} s")
            time.sleep(wait_s)  # the server asked us to come back later


def follow(client: Client, entries: list[Entry], poll_interval_s: float, started: float) -> None:
    """Poll `get_task` for the unfinished entries (one batch per round) until all finish or the deadline."""
    while True:
        open_entries = [e for e in entries if not e.done]
        if not open_entries:
            return
        replies = client.batch([("get_task", {"task_id": e.task_id}) for e in open_entries])
        for entry, reply in zip(open_entries, replies, strict=True):
            if "result" in reply:
                record = reply["result"]
                entry.status, entry.progress = record["status"], record.get("progress")
                entry.result, entry.error = record.get("result"), record.get("error")
            elif (reply.get("error") or {}).get("code") == -32001:
                entry.status, entry.error = "failed", {"message": "task not found (expired or lost)"}
            show(entry, started)
        if all(e.done for e in entries) or time.monotonic() >= client.deadline:
            return
        time.sleep(poll_interval_s)  # polling interval


def show(entry: Entry, started: float) -> None:
    """One progress line per change of an entry's status or progress."""
    if entry.status == "succeeded" and isinstance(entry.result, dict):
        line = f"succeeded: best_score={entry.result.get('best_score')} best_params={entry.result.get('best_params')}"
    elif entry.status in ("failed", "cancelled"):
        line = f"{entry.status}: {(entry.error or {}).get('message', '')}"
    elif isinstance(entry.progress, dict) and "trials_total" in entry.progress:
        p = entry.progress
        line = f"{entry.status}: {p.get('trials_done')}/{p.get('trials_total')} trials, best {p.get('best_score')}"
    else:
        line = entry.status
    if line != entry.shown:
        entry.shown = line
        log(f"[{time.monotonic() - started:7.1f}s] {entry.label} {line}")


def summary(entries: list[Entry], url: str, started: float, problem: str | None) -> dict[str, Any]:
    tasks = []
    for e in entries:
        result = e.result if isinstance(e.result, dict) else {}
        status = e.status if e.done else ("timed_out" if e.task_id else "unsubmitted")
        tasks.append({"dataset": e.dataset, "model": e.model, "task_id": e.task_id, "status": status,
                      "duplicate": e.duplicate, "params": e.input, "best_params": result.get("best_params"),
                      "best_score": result.get("best_score"), "error": e.error if status != "succeeded" else None})
    totals = {"tasks": len(tasks)}
    for status in ("succeeded", "failed", "cancelled", "rejected", "timed_out", "unsubmitted"):
        totals[status] = sum(1 for t in tasks if t["status"] == status)
    return {"url": url, "tool": TOOL, "elapsed_s": round(time.monotonic() - started, 3), "totals": totals,
            "all_succeeded": totals["succeeded"] == len(tasks), "error": problem, "tasks": tasks}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    entries = plan(args)
    client = Client(args.url, started + args.timeout_s, args.api_key)
    log(f"batch_ml: {len(entries)} {TOOL} tasks ({', '.join(args.datasets)} × {', '.join(args.models)}) "
        f"to {args.url}")
    problem = None
    try:
        submit(client, entries, args.priority, args.agent)
        follow(client, entries, args.poll_interval_s, started)
    except JobError as exc:
        problem = str(exc)
    except KeyboardInterrupt:
        problem = "interrupted; submitted tasks keep running (run again with the same options to follow them)"
    if problem is None and not all(e.done for e in entries):
        problem = f"timed out after {args.timeout_s:g} s; unfinished tasks keep running (run again to follow them)"
    if problem is not None:
        log(f"batch_ml: {problem}")
    result = summary(entries, args.url, started, problem)
    log("batch_ml summary:")
    log(json.dumps(result, indent=2))
    return 0 if result["all_succeeded"] else 1


if __name__ == "__main__":
    sys.exit(main())
