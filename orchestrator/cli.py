"""The `orchestrator` command (the composition root): start and stop a local orchestrator, run tasks, show status."""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
from pydantic import ValidationError
from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from orchestrator import auth, local
from orchestrator.errors import InvalidParamsError, OrchestratorError, ProtocolError, RpcError
from orchestrator.local import Appendfsync, CliError, Layout, State
from orchestrator.models import ScheduleState, TaskRecord, TaskStatus
from orchestrator.settings import ApiKeySettings, Settings

if TYPE_CHECKING:
    from orchestrator.client import Client

logger = logging.getLogger(__name__)

# soft_wrap: a message stays one line however narrow the terminal (tables still fit its width).
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

app = typer.Typer(
    name="orchestrator",
    help="MCP Orchestrator: run it locally (`up`, `down`), submit tasks (`run`) and look at it (`status`). "
    "Settings come from ORCH_* environment variables (e.g. ORCH_DATA_DIR, ORCH_REDIS__URL) or ORCH_CONFIG_FILE.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


# ---------------------------------------------------------------- commands


ApiKey = Annotated[str | None, typer.Option(envvar="ORCH_API_KEY", show_envvar=True,
                                           help="the API key to send (needed once auth is on: keys in settings or Redis)")]
keys_app = typer.Typer(
    help="API keys kept in Redis (hashed), effective on every replica within a second: `create`, `list`, `revoke`. "
    "They go through the orchestrator's API with an admin key (--url, ORCH_API_KEY), or straight to Redis with "
    "--redis-url (bootstrap, break-glass). `create --for-settings` makes a key for auth.keys instead; `hash` "
    "hashes one you have.",
    no_args_is_help=True)
app.add_typer(keys_app, name="keys")
schedules_app = typer.Typer(
    help="Schedules: a task fired on a cron expression (in a timezone) or an interval, each tick exactly once "
    "(`create`, `list`, `show`, `pause`, `resume`, `delete`).",
    no_args_is_help=True)
app.add_typer(schedules_app, name="schedules")
Url = Annotated[str | None, typer.Option(help="orchestrator URL (default: the one `up` started)")]
DirectRedis = Annotated[str | None, typer.Option(
    "--redis-url", help="work on this Redis directly instead of through the API (no admin key needed: whoever "
    "reaches Redis is trusted); the key prefix is redis.prefix (ORCH_REDIS__PREFIX)")]
AsJson = Annotated[bool, typer.Option("--json", help="print the raw result")]
LIST_PAGE_MAX = 500  # list_tasks's largest page
_DURATION_UNITS_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="interface the HTTP ingress listens on (default: http.host, "
                                             "127.0.0.1); another than loopback needs auth.keys or auth.required")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="port of the HTTP ingress (default: "
                                             "http.port, 8000)")] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(help="use this running Redis (default: ORCH_REDIS__URL, else start a local redis-server)"),
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="connect to this Ray cluster instead of starting a local one")
    ] = None,
    dashboard: Annotated[bool, typer.Option(help="start Ray's dashboard with the local Ray (about 1 GiB more)")] = True,
    appendfsync: Annotated[
        Appendfsync,
        typer.Option(help="fsync policy of the local redis-server's AOF: `always` loses nothing even on power "
                     "failure (slowest); `everysec` may lose the last second on a crash; `no` leaves it to the OS. "
                     "`down` always flushes."),
    ] = Appendfsync.EVERYSEC,
    timeout: Annotated[float, typer.Option(min=1, help="seconds to wait for /healthz to answer 200")] = 120.0,
) -> None:
    """Start the orchestrator in the background (Ray, Serve, router, workers; a local Redis unless given one)."""
    settings = _load_settings()
    host = settings.http.host if host is None else host
    port = settings.http.port if port is None else port
    refused = auth.unsafe_bind(host, settings.auth, settings.http.proxy)
    if refused is not None:
        raise CliError(f"orchestrator up: {refused}.")
    layout = _layout(settings)
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    with local.locked(layout):
        state = local.read_state(layout)
        if state is not None:
            if local.is_daemon(state.daemon_pid):
                out.print(f"orchestrator is already running: {state.url} (daemon pid {state.daemon_pid})",
                          markup=False)
                return
            local.stop(state, layout)  # stale: a daemon that died; clear what it left
        local.check_port_free(host, port)
        given_redis = redis_url or (settings.redis.url if "url" in settings.redis.model_fields_set else None)
        if given_redis is not None:
            local.check_redis(given_redis)
            redis_pid, effective_redis = None, given_redis
        else:
            redis_pid, effective_redis = local.start_redis(layout, appendfsync)
        url = f"http://{local.connect_host(host)}:{port}"
        ray_temp_dir = None if address else layout.ray_temp_dir
        log_offset = layout.log_file.stat().st_size if layout.log_file.exists() else 0
        daemon = local.spawn_daemon(layout, host, port, effective_redis, address, dashboard, ray_temp_dir)
        state = State(
            daemon_pid=daemon.pid, redis_pid=redis_pid, url=url, redis_url=effective_redis,
            started_redis=redis_pid is not None, ray_temp_dir=str(ray_temp_dir) if ray_temp_dir else None,
            ray_address=address, log_file=str(layout.log_file),
        )
        local.write_state(layout, state)
        try:
            with err.status("starting the orchestrator (Ray, Serve, router, workers)…"):
                problem = local.wait_healthy(url, daemon, timeout)
        except KeyboardInterrupt:
            err.print("interrupted: stopping what `up` started…")
            local.stop(state, layout, local.STARTING_DAEMON_STOP_TIMEOUT_S)
            raise typer.Exit(130) from None
        if problem is not None:
            tail = local.tail(layout.log_file, log_offset)
            local.stop(state, layout, local.STARTING_DAEMON_STOP_TIMEOUT_S)
            err.print(f"{problem}; its log is {layout.log_file}, last lines:", markup=False)
            err.print(tail, markup=False)
            raise CliError("orchestrator up failed: stopped what it had started.")
    ray_desc = f"ray {address}" if address else "ray local"
    out.print(f"orchestrator up: {url} (redis {effective_redis}, {ray_desc})", markup=False)
    runtime = _runtime_keys_exist(effective_redis, settings.redis.prefix)
    if settings.auth.keys:
        plus = " and keys created at runtime" if runtime else ""
        out.print(f"auth on: {len(settings.auth.keys)} API key(s) in settings{plus}; clients send "
                  "`Authorization: Bearer <key>`.")
    elif runtime:
        out.print("auth on: API keys created at runtime (`orchestrator keys list`); clients send "
                  "`Authorization: Bearer <key>`.")
    elif settings.auth.required:
        out.print("auth on (auth.required) but no API key exists yet, so every request is refused: "
                  "`orchestrator keys create --redis-url …` makes the first one.")
    else:
        out.print("auth off: no API keys are configured, so it listens on loopback only "
                  "(`orchestrator keys create` makes one; auth is on from then on).")


def _runtime_keys_exist(redis_url: str | list[str], prefix: str) -> bool:
    """Whether keys were ever created in this Redis (auth is then on); False when it cannot be read."""
    import asyncio

    from orchestrator.adapters.key_store import KeyStore
    from orchestrator.adapters.redis_connect import connect

    async def read() -> bool:
        client = connect(redis_url, max_connections=2, pool_timeout_s=5, socket_timeout_s=5)
        try:
            return await KeyStore(client, prefix).version() is not None
        finally:
            await client.aclose()

    try:
        return asyncio.run(read())
    except Exception:  # only a message depends on it
        logger.debug("runtime keys unreadable", exc_info=True)
        return False


@app.command()
def down() -> None:
    """Stop what `up` started (daemon, its local Ray, its redis-server); the Redis data stays."""
    settings = _load_settings()
    layout = _layout(settings)
    if not layout.data_dir.exists():
        out.print("orchestrator down: nothing is running.")
        return
    with local.locked(layout):
        state = local.read_state(layout)
        if state is None:
            out.print("orchestrator down: nothing is running.")
            return
        stopped = local.stop(state, layout)
    if stopped:
        out.print("orchestrator down: stopped " + ", ".join(stopped) + ".", markup=False)
    else:
        out.print("orchestrator down: nothing was running; removed the stale state file.")


INPUT_REQUIRED_EXIT = 3  # `run --wait`: the task waits for input


@app.command()
def run(
    prompt: Annotated[str, typer.Argument(help="the task's text input")],
    tool: Annotated[str, typer.Option("--tool", "-t", help="a tool from `orchestrator status`")],
    priority: Annotated[int | None, typer.Option(min=0, max=10, help="0 (bulk) .. 10 (urgent, preempts)")] = None,
    context: Annotated[str | None, typer.Option(help='JSON object passed to the tool, e.g. \'{"steps": 3}\'')] = None,
    wait: Annotated[bool, typer.Option(help="wait for the result (else print the task id)")] = True,
    wait_s: Annotated[float, typer.Option(min=0, help="seconds to wait")] = 60.0,
    agent: Annotated[str | None, typer.Option(help="the submitting agent")] = None,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Submit a task with `run_task`; print the finished record, or {task_id, status} with --no-wait.

    With --wait the exit code says how it ended: 0 succeeded, 1 failed or cancelled, 3 waiting for input (answer
    with `orchestrator answer`), 124 still unfinished after --wait-s (the record is printed as it is then)."""
    from orchestrator.client.protocol import RunTaskOptions

    options: RunTaskOptions = {}
    if priority is not None:
        options["priority"] = priority
    if context is not None:
        options["context"] = _parse_context(context)
    if agent is not None:
        options["agent"] = agent
    if wait and wait_s > 0:
        options["wait"] = min(wait_s, 3600.0)  # the server waits up to limits.max_wait_s; the client polls for the rest
    started = time.monotonic()
    with _api(url, api_key) as client:
        answer = client.run_task(tool, prompt, **options)
        if wait and not isinstance(answer, TaskRecord):
            try:
                answer = client.wait(answer.task_id, max(0.0, wait_s - (time.monotonic() - started)))
            except TimeoutError as exc:
                out.print_json(data=client.get_task(answer.task_id).model_dump(mode="json"))
                err.print(f"{exc}.", markup=False)
                raise typer.Exit(124) from None
    out.print_json(data=answer.model_dump(mode="json"))
    if isinstance(answer, TaskRecord) and answer.status is TaskStatus.INPUT_REQUIRED:
        for key, request in answer.input_requests.items():
            err.print(f"task {answer.task_id} waits for input {key!r}: {request.message} (answer with "
                      f"`orchestrator answer {answer.task_id} '<JSON>' --key {key}`)", markup=False)
        raise typer.Exit(INPUT_REQUIRED_EXIT)
    if isinstance(answer, TaskRecord) and answer.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        why = f": {answer.error.message}" if answer.error else ""
        err.print(f"task {answer.task_id} {answer.status.value}{why}", markup=False)
        raise typer.Exit(1)


@app.command()
def answer(
    task_id: Annotated[str, typer.Argument(help="a task waiting for input (status input_required)")],
    value: Annotated[str, typer.Argument(metavar="INPUT", help="the answer, JSON (checked against the request's "
                                                               "schema)")] = "null",
    key: Annotated[str | None, typer.Option(help="the request answered (needed when several are pending)")] = None,
    decline: Annotated[bool, typer.Option(help="decline the request: the tool's ask raises")] = False,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Answer a task's request for input (`provide_input`); it resumes once nothing it asked for is pending."""
    try:
        content = json.loads(value)
    except ValueError as exc:
        raise CliError(f"INPUT is not JSON: {exc}.") from None
    with _api(url, api_key) as client:
        done = client.provide_input(task_id, content, key=key, action="decline" if decline else "accept")
    out.print_json(data=done.model_dump(mode="json"))


@app.command()
def status(
    url: Url = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw `status` result")] = False,
    api_key: ApiKey = None,
) -> None:
    """Show pools, workers, tools and queue depth."""
    with _api(url, api_key) as client:
        result = client.status().model_dump(mode="json")
    if as_json:
        out.print_json(data=result)
        return
    _print_status(result)


@app.command()
def tasks(
    status: Annotated[list[TaskStatus] | None, typer.Option(help="repeat for several")] = None,
    tool: Annotated[str | None, typer.Option(help="only this tool's tasks")] = None,
    tenant: Annotated[str | None, typer.Option(help="only this tenant's (admin keys; others see their own)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="show at most this many")] = 50,
    url: Url = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """List tasks, newest first (`list_tasks`), page after page up to --limit."""
    from orchestrator.client.protocol import TaskFilters

    filters: TaskFilters = {"limit": min(limit, LIST_PAGE_MAX)}
    if status:
        filters["status"] = [s.value for s in status]
    if tool is not None:
        filters["tool"] = tool
    if tenant is not None:
        filters["tenant"] = tenant
    with _api(url, api_key) as client:
        found = list(itertools.islice(client.list_tasks(**filters), limit))
    if as_json:
        out.print_json(data=[task.model_dump(mode="json") for task in found])
        return
    out.print(_tasks_table(found, time.time()))


def _tasks_table(found: list[TaskRecord], now: float) -> Table:
    """Fits 80 columns (a long tenant name folds onto a second line); `--json` has every field."""
    rows = [[t.task_id, t.status.value, t.tool, str(t.priority), _age(now - t.created_at), t.tenant or ""]
            for t in found]
    return _narrow_table(f"{len(found)} task{'' if len(found) == 1 else 's'}, newest first",
                         ["task", "status", "tool", "prio", "age", "tenant"], rows, fold="tenant")


def _age(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(0, int(seconds))}s"


@app.command()
def top(
    url: Url = None,
    interval_s: Annotated[float, typer.Option("--interval", min=0.2, help="seconds between refreshes")] = 2.0,
    window_s: Annotated[int, typer.Option("--window", min=60, max=86_400, help="analytics window (s)")] = 300,
    once: Annotated[bool, typer.Option("--once", help="print one frame and exit")] = False,
    api_key: ApiKey = None,
) -> None:
    """A live view: pools with their SLA state, throughput and latency per pool, the running tasks."""
    from rich.live import Live

    with _api(url, api_key) as client:
        def frame() -> Group:
            return _top_frame(client.base_url, client.status().model_dump(mode="json"),
                              client.analytics(window_s).model_dump(mode="json"), window_s, time.time())

        if once:
            out.print(frame())
            return
        with Live(frame(), console=out, refresh_per_second=4, screen=False) as live:
            try:
                while True:
                    time.sleep(interval_s)  # the refresh period
                    live.update(frame())
            except KeyboardInterrupt:
                pass


def _top_frame(base: str, status: dict[str, Any], figures: dict[str, Any], window_s: int, now: float) -> Group:
    """Fits an 80-column terminal: numbers in narrow columns, free text (SLA reasons) as wrapping lines."""
    by_type = figures.get("by_worker_type", {})
    rows: list[list[str]] = []
    for pool in status.get("pools", []):
        stats = by_type.get(pool["worker_type"], {})
        rows.append([pool["worker_type"], str(pool["workers"]), f"{pool['running']}/{pool['slots']}",
                     str(pool["queued"]), f"{stats.get('throughput_per_s', 0):g}",
                     _ms((stats.get("queue_wait_ms") or {}).get("p95")), _ms((stats.get("run_ms") or {}).get("p95")),
                     str(stats.get("failed", 0)), "paused" if pool.get("paused") else ""])
    pools = _narrow_table(f"pools, last {window_s}s (p95 in ms)", ["type", "workers", "busy", "queued", "tasks/s",
                                                                  "wait p95", "run p95", "failed", "state"], rows)
    sla = [Text(f"SLA target {name}: {state.get('target_workers', '?')} workers ({state.get('reason', '')})")
           for name, state in sorted(status.get("sla", {}).items())]
    running = sorted(status.get("running", []), key=lambda r: (-r["priority"], r["since"]))[:15]
    tasks = _narrow_table("running (highest priority first)", ["task", "tool", "prio", "worker", "for"],
                          [[r["task_id"], r["tool"], str(r["priority"]), r["worker"].removeprefix("worker:"),
                            _age(now - r["since"])] for r in running])
    overall = figures.get("overall", {})
    summary = Text(f"{base} · active {status.get('active_tasks')} · finished {overall.get('tasks', 0)} "
                   f"({overall.get('throughput_per_s', 0):g}/s) · e2e p95 {_ms((overall.get('e2e_ms') or {}).get('p95'))}"
                   f" ms · tokens {overall.get('tokens', 0)}")
    return Group(pools, *sla, tasks, summary)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _narrow_table(title: str, columns: list[str], rows: list[list[str]], fold: str | None = None) -> Table:
    """A table for 80 columns: two spaces between columns, values never shortened or wrapped — but those of the
    `fold` column, which fold onto more lines when the terminal is too narrow. Text left, numbers right."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  padding=(0, 1, 0, 0))
    for i, column in enumerate(columns):
        justify = "left" if i == 0 or column in _TEXT_COLUMNS else "right"
        if column == fold:
            table.add_column(column, justify=justify, overflow="fold")
        else:
            widest = max([len(column), *(len(row[i]) for row in rows)])
            table.add_column(column, justify=justify, no_wrap=True, min_width=widest)
    for row in rows:
        table.add_row(*row)
    return table


_TEXT_COLUMNS = frozenset({"status", "tool", "tenant", "worker", "state"})


@schedules_app.command("create")
def schedules_create(
    tool: Annotated[str, typer.Argument(metavar="TOOL", help="the tool each tick runs")],
    tool_input: Annotated[str, typer.Argument(metavar="INPUT", help="the tool's input, JSON")],
    cron: Annotated[str | None, typer.Option(help='5 fields, e.g. "*/15 9-17 * * 1-5"')] = None,
    timezone: Annotated[str, typer.Option(help="IANA name, for --cron")] = "UTC",
    interval: Annotated[str | None, typer.Option(help="instead of --cron: 30s, 5m, 2h, 1d")] = None,
    priority: Annotated[int, typer.Option(min=0, max=10)] = 5,
    name: Annotated[str | None, typer.Option()] = None,
    overlap: Annotated[str, typer.Option(help="skip, queue or cancel_previous")] = "queue",
    catch_up: Annotated[str, typer.Option(help="none, latest or all")] = "latest",
    url: Url = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Create a schedule (`create_schedule`); prints it with its next ticks."""
    try:
        parsed = json.loads(tool_input)
    except json.JSONDecodeError as exc:
        raise CliError(f"INPUT is not JSON: {exc}.") from None
    options: dict[str, Any] = {"cron": cron, "timezone": timezone, "priority": priority, "name": name,
                               "overlap": overlap, "catch_up": catch_up}
    if interval is not None:
        options["interval_s"] = _parse_duration(interval, "--interval")
    with _api(url, api_key) as client:
        made = client.create_schedule(tool, parsed, **{k: v for k, v in options.items() if v is not None})
    _print_schedules([made], as_json)


@schedules_app.command("list")
def schedules_list(
    tenant: Annotated[str | None, typer.Option(help="admin keys: one tenant's")] = None,
    url: Url = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """The schedules of your tenant (an admin: every tenant's), newest first."""
    with _api(url, api_key) as client:
        _print_schedules(client.list_schedules(tenant), as_json)


def _schedule_command(action: str, doc: str) -> None:
    def command(schedule_id: Annotated[str, typer.Argument(metavar="SCHEDULE_ID")], url: Url = None, api_key: ApiKey = None,
                as_json: AsJson = False) -> None:
        with _api(url, api_key) as client:
            if action == "delete":
                client.delete_schedule(schedule_id)
                out.print(f"deleted schedule {schedule_id}: it fires no more (its tasks stay).", markup=False)
                return
            _print_schedules([getattr(client, f"{action}_schedule")(schedule_id)], as_json)

    command.__doc__ = doc
    schedules_app.command("show" if action == "get" else action)(command)


for _action, _doc in (("get", "A schedule: its next ticks, counts and latest fires."),
                      ("pause", "Stop firing (ticks that fall while paused never fire)."),
                      ("resume", "Fire again, from the next tick after now."),
                      ("delete", "Delete a schedule.")):
    _schedule_command(_action, _doc)


def _print_schedules(found: list[ScheduleState], as_json: bool) -> None:
    if as_json:
        out.print_json(data=[s.model_dump(mode="json") for s in found])
        return
    rows = [[s.schedule_id, s.spec.name or "", s.spec.cron or f"every {s.spec.interval_s:g}s", s.spec.tool,
             "paused" if s.paused else _clock(s.next_ms / 1000), str(s.fired)] for s in found]
    out.print(_narrow_table(f"{len(found)} schedule{'' if len(found) == 1 else 's'} (next: UTC; --json has all)",
                            ["schedule", "name", "when", "tool", "next", "fired"], rows, fold="name"))


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%m-%d %H:%M:%S")


@app.command("_daemon", hidden=True)
def daemon(
    host: Annotated[str, typer.Option()],
    port: Annotated[int, typer.Option()],
    redis_url: Annotated[str, typer.Option(envvar=local.DAEMON_REDIS_URL)],
    address: Annotated[str | None, typer.Option()] = None,
    dashboard: Annotated[bool, typer.Option()] = True,
    ray_temp_dir: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Run Ray, Serve and the app in the foreground until SIGTERM/SIGINT (started by `up`)."""
    handler = logging.StreamHandler()
    handler.setFormatter(_FieldsFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    stop = threading.Event()
    _on_stop_signals(stop)
    settings = _with_endpoints(_load_settings(), redis_url=redis_url, host=host, port=port)
    raise typer.Exit(_serve_until_stopped(settings, stop, address, dashboard, ray_temp_dir))


@app.command("fake-llm")
def fake_llm(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port to listen on")] = 8901,
    latency_ms: Annotated[int | None, typer.Option(min=0, help="mean total time of a completion (default 0)")] = None,
    jitter_ms: Annotated[int | None, typer.Option(min=0, help="spread of the latency (default 0)")] = None,
    distribution: Annotated[
        str | None, typer.Option(help="latency distribution: fixed, uniform, normal or lognormal (default uniform)")
    ] = None,
    first_byte_ms: Annotated[int | None, typer.Option(min=0, help="delay before the response headers")] = None,
    reply_tokens: Annotated[int | None, typer.Option(min=1, help="reply with this many words (long streams)")] = None,
    rpm: Annotated[float | None, typer.Option(help="requests per minute, a token bucket (default unlimited)")] = None,
    tpm: Annotated[float | None, typer.Option(help="tokens per minute, a token bucket (default unlimited)")] = None,
    burst: Annotated[int | None, typer.Option(min=1, help="request bucket capacity (default 1)")] = None,
    token_burst: Annotated[int | None, typer.Option(min=1, help="token bucket capacity (default: the tpm)")] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="max requests in flight (default unlimited)")] = None,
    error_ratio: Annotated[float | None, typer.Option(min=0, max=1, help="share of completions answered 503")] = None,
    model: Annotated[str | None, typer.Option(help="model name it reports (default fake-model)")] = None,
    api_key: Annotated[str | None, typer.Option(help="require `Authorization: Bearer <key>`")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of the latency and error draws (reproducible runs)")] = None,
) -> None:
    """Serve a fake OpenAI-compatible provider (latency, streaming, rate limits, errors) until Ctrl-C."""
    from deployments.fake_provider import config_from_options, serve

    options = {"latency_ms": latency_ms, "jitter_ms": jitter_ms, "distribution": distribution,
               "first_byte_ms": first_byte_ms, "reply_tokens": reply_tokens, "rpm": rpm, "tpm": tpm, "burst": burst,
               "token_burst": token_burst, "concurrency": concurrency, "error_ratio": error_ratio, "model": model,
               "api_key": api_key, "seed": seed}
    try:
        config = config_from_options(options)
    except ValueError as exc:
        raise CliError(f"{exc}.") from None
    local.check_port_free(host, port)
    out.print(f"fake-llm serving model {config.model} at http://{local.connect_host(host)}:{port}/v1 "
              "(control: POST /_control, stats: GET /_stats; Ctrl-C stops it)", markup=False)
    try:
        serve(host, port, config)
    except KeyboardInterrupt:
        pass  # uvicorn shut down gracefully, then re-raised the Ctrl-C
    out.print("fake-llm stopped.")


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="the tenant the key acts for: it sees only this tenant's tasks")],
    scope: Annotated[list[str], typer.Option(help="repeat for several: submit, read, admin (everything), "
                                                "metrics, urgent (priorities that preempt)")],
    name: Annotated[str | None, typer.Option(help="the key's name in listings and audits (default: the tenant and "
                                             "a few characters of the hash)")] = None,
    ttl: Annotated[str | None, typer.Option(help="the key expires after this: seconds, or 90m, 12h, 30d, 2w")] = None,
    expires_at: Annotated[str | None, typer.Option(help="the key expires then: ISO 8601 with a time zone, "
                                                   "e.g. 2030-01-31T00:00:00Z")] = None,
    for_settings: Annotated[bool, typer.Option("--for-settings", help="store nothing: print the key and the "
                                               "auth.keys entry that accepts it (the first admin key, or keys "
                                               "that must survive an emptied Redis)")] = False,
    url: Url = None,
    redis_url: DirectRedis = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Make a new API key and print it once (only its hash is kept); it works on every replica within a second."""
    if for_settings:
        if ttl is not None or expires_at is not None or redis_url is not None or url is not None:
            raise CliError("--for-settings stores nothing and keys in settings do not expire: drop --ttl, "
                           "--expires-at, --url and --redis-url.")
        _print_settings_key(tenant, scope, name)
        return
    params: dict[str, Any] = {"action": "create", "tenant": tenant, "scopes": scope}
    if name is not None:
        params["name"] = name
    if ttl is not None:
        params["ttl_s"] = _parse_duration(ttl)
    if expires_at is not None:
        params["expires_at"] = _parse_time(expires_at)
    result = _keys(params, url, redis_url, api_key)
    if as_json:
        out.print_json(data=result)
        return
    info = result["info"]
    out.print(f"API key (shown only now; give it to the client, keep it secret):\n{result['key']}\n", markup=False)
    out.print(f"name {info['name']} · tenant {info['tenant']} · scopes {', '.join(info['scopes'])} · expires "
              f"{_when(info['expires_at'])} UTC; it works on every replica within a second "
              f"(`orchestrator keys revoke {info['name']}` ends it).", markup=False)


@keys_app.command("list")
def keys_list(
    everything: Annotated[bool, typer.Option("--all", help="also the expired and revoked keys")] = False,
    url: Url = None,
    redis_url: DirectRedis = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """List the API keys: those of the settings and those kept in Redis (never a key or its hash)."""
    result = _keys({"action": "list", "all": everything}, url, redis_url, api_key)
    if as_json:
        out.print_json(data=result["keys"])
        return
    out.print(_keys_table(result["keys"]))


@keys_app.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Argument(help="the key's name (`orchestrator keys list`)")],
    url: Url = None,
    redis_url: DirectRedis = None,
    api_key: ApiKey = None,
) -> None:
    """Revoke a key kept in Redis: every replica refuses it within a second. Keys in settings cannot be revoked
    at runtime (remove them from the settings and redeploy)."""
    info = _keys({"action": "revoke", "name": name}, url, redis_url, api_key)["info"]
    out.print(f"revoked API key {info['name']} (tenant {info['tenant']}): every replica refuses it within a "
              "second.", markup=False)


def _print_settings_key(tenant: str, scopes: list[str], name: str | None) -> None:
    key = auth.new_key()
    digest = auth.hash_key(key)
    name = name or f"{tenant}-{digest[-6:]}"  # never a piece of the key: names show up in audits
    try:
        config = ApiKeySettings.model_validate({"hash": digest, "tenant": tenant, "scopes": scopes})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CliError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}.") from None
    out.print(f"API key (shown only now; give it to the client, keep it secret):\n{key}\n", markup=False)
    out.print("Accept it with these settings (the config file named by ORCH_CONFIG_FILE):\n", markup=False)
    out.print(_key_toml(name, config), markup=False)


def _keys(params: dict[str, Any], url: str | None, redis_url: str | None, api_key: str | None) -> dict[str, Any]:
    """The `keys` method's result: through the API, or straight from Redis with --redis-url."""
    if redis_url is None:
        with _api(url, api_key) as client:
            return client.keys(**params).model_dump(mode="json")
    if url is not None:
        raise CliError("give --url (through the API) or --redis-url (straight to Redis), not both.")
    import asyncio
    import getpass

    from orchestrator.adapters.key_store import KeyStore
    from orchestrator.adapters.task_store import TaskStore
    from orchestrator.key_service import KeyService
    from orchestrator.models import KeysParams

    settings = _load_settings()
    try:
        checked = KeysParams.model_validate(params)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CliError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}.") from None
    who = auth.Principal(f"cli:{getpass.getuser()}", None, frozenset(auth.SCOPES))

    async def direct() -> dict[str, Any]:
        # The URL `up` printed has no password: the local redis-server's is added from its file.
        direct_url = local.authenticated(_layout(settings), redis_url)
        store = TaskStore.from_settings(settings.redis.model_copy(update={"url": direct_url}))
        try:
            keys = KeyService(settings.auth, KeyStore(store.redis, settings.redis.prefix), store.audit, time.time)
            return (await keys.keys(checked, who)).model_dump(mode="json")
        finally:
            await store.aclose()

    try:
        return asyncio.run(direct())
    except InvalidParamsError as exc:
        raise CliError("; ".join(f"{path.removeprefix('params.')}: {why}" for path, why in exc.fields.items())
                       + ".") from None
    except OrchestratorError as exc:
        raise CliError(f"cannot use Redis at {local.redact_url(redis_url)}: {exc}.") from None
    except (ValueError, OSError) as exc:  # a malformed URL, a refused connection before any retry
        raise CliError(f"cannot use Redis at {local.redact_url(redis_url)}: {exc}.") from None


def _parse_duration(text: str, option: str = "--ttl") -> float:
    value, unit = text.strip(), ""
    if value and value[-1].lower() in _DURATION_UNITS_S:
        value, unit = value[:-1], value[-1].lower()
    try:
        seconds = float(value) * _DURATION_UNITS_S[unit]
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise CliError(f"{option} {text!r}: give a positive duration, e.g. 3600, 90m, 12h, 30d or 2w.")
    return seconds


def _parse_time(text: str) -> str:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise CliError(f"--expires-at {text!r}: give an ISO 8601 time with a time zone, e.g. 2030-01-31T00:00:00Z.")
    return moment.isoformat()


def _when(unix_s: float | None, never: str = "never") -> str:
    if unix_s is None:
        return never
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(unix_s))


def _keys_table(keys: list[dict[str, Any]]) -> Table:
    """Names and tenants on one line (names are what `revoke` takes); the rest folds on a narrow terminal.
    `--json` has every field (when and by whom each key was created)."""
    table = Table(title="API keys", title_justify="left")
    for column in ("name", "tenant"):
        table.add_column(column, no_wrap=True, min_width=max([len(k[column]) for k in keys] + [len(column)]))
    for column in ("scopes", "source", "status", "expires (UTC)"):
        table.add_column(column, overflow="fold")
    for k in keys:
        table.add_row(k["name"], k["tenant"], ",".join(k["scopes"]), k["source"], k["status"], _when(k["expires_at"]))
    return table


@keys_app.command("hash")
def keys_hash() -> None:
    """Read a key from standard input and print the hash to configure for it (auth.keys.<name>.hash)."""
    key = sys.stdin.readline().strip()
    if not key:
        raise CliError("no key on standard input.")
    out.print(auth.hash_key(key), markup=False)


def _key_toml(name: str, config: ApiKeySettings) -> str:
    scopes = ", ".join(json.dumps(s) for s in config.scopes)
    return (f"[auth.keys.{json.dumps(name)}]\nhash = {json.dumps(config.hash)}\ntenant = {json.dumps(config.tenant)}\n"
            f"scopes = [{scopes}]")


def main() -> None:
    """Entry point of the `orchestrator` console script."""
    try:
        app()  # click handles usage errors and typer.Exit; our own errors come out here
    except CliError as exc:
        err.print(str(exc), markup=False)
        sys.exit(1)


# ---------------------------------------------------------------- the daemon


def _serve_until_stopped(
    settings: Settings, stop: threading.Event, address: str | None, dashboard: bool, ray_temp_dir: str | None
) -> int:
    if address:
        # Ray 2.60 connects by address only with token auth announced before `import ray`.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.update(settings.http.ray_environment())  # read by Serve when imported; inherited by local Ray
    import ray
    from ray import serve

    from deployments.app import deploy, init_local_ray, teardown

    if address:
        context = ray.init(address=address, namespace=settings.namespace)
    else:
        context = init_local_ray(include_dashboard=dashboard, namespace=settings.namespace, _temp_dir=ray_temp_dir)
    logger.info("ray connected", extra={"address": context.address_info.get("gcs_address"),
                                        "dashboard_url": context.dashboard_url or None})
    _on_stop_signals(stop)  # ray.init replaced our SIGTERM handler with one that calls sys.exit
    started_serve = not (address and _serve_running())
    code = 0
    try:
        serve.start(http_options={"host": settings.http.host, "port": settings.http.port})
        deploy(settings)
        logger.info("orchestrator serving", extra={"host": settings.http.host, "port": settings.http.port,
                                                   "redis_url": _shown(settings.redis.url), "ray": address or "local"})
        while not stop.wait(1.0):
            continue
        logger.info("stop requested")
    except Exception:
        logger.exception("orchestrator failed")
        code = 1
    finally:
        steps: list[tuple[str, Callable[[], object]]] = [("teardown", lambda: teardown(settings))]
        if started_serve:  # on a cluster we only joined, Serve may serve other apps too
            steps.append(("serve shutdown", serve.shutdown))
        steps.append(("ray shutdown", ray.shutdown))  # only disconnects when we joined by address
        for step, call in steps:
            try:
                call()
            except Exception:
                logger.exception("shutdown step failed", extra={"step": step})
        logger.info("orchestrator stopped", extra={"exit_code": code})
    return code


def _serve_running() -> bool:
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True


def _on_stop_signals(stop: threading.Event) -> None:
    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


class _FieldsFormatter(logging.Formatter):
    """Appends the record's `extra` fields as key=value, so fixed messages still carry their context."""

    _standard = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = {k: v for k, v in record.__dict__.items() if k not in self._standard and not k.startswith("_")}
        if extra:
            text += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return text


# ---------------------------------------------------------------- the API


@contextmanager
def _api(url: str | None, api_key: str | None) -> Iterator[Client]:
    """A client of the orchestrator; its failures become what the CLI prints (a JSON-RPC error with its data,
    exit 1) or a CliError sentence."""
    from orchestrator.client import Client  # here: `up` and `down` need none of it

    base = _resolve_url(url)
    try:
        with Client(base, api_key=api_key or "") as client:
            yield client
    except (OrchestratorError, InvalidParamsError, RpcError) as exc:
        error = _wire_error(exc)
        err.print(f"error {error['code']}: {error['message']}", markup=False)
        if error.get("data") is not None:
            err.print(json.dumps(error["data"], indent=2), markup=False)
        raise typer.Exit(1) from None
    except httpx.ConnectError:
        raise CliError(f"no orchestrator answers at {base}: start it with `orchestrator up`.") from None
    except httpx.TimeoutException:
        raise CliError(f"{base} did not answer in time.") from None
    except httpx.HTTPError as exc:
        raise CliError(f"the request to {base} failed: {exc}.") from None
    except ProtocolError as exc:
        raise CliError(f"{base} answered HTTP {exc.status} without a JSON-RPC reply: is it the orchestrator?") from None


def _wire_error(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, RpcError):
        return {"code": exc.code, "message": exc.message, "data": exc.data}
    from orchestrator.jsonrpc import to_jsonrpc_error

    return to_jsonrpc_error(exc)


def _resolve_url(url: str | None) -> str:
    """--url, else ORCH_URL (as the client), else the URL `up` recorded, else the configured host and port."""
    url = url or os.environ.get("ORCH_URL")
    if url:
        return url.rstrip("/")
    settings = _load_settings()
    state = local.read_state(_layout(settings))
    if state is not None:
        return state.url
    return f"http://{local.connect_host(settings.http.host)}:{settings.http.port}"


def _parse_context(text: str) -> dict[str, Any]:
    try:
        value: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"--context is not valid JSON: {exc}.") from None
    if not isinstance(value, dict):
        raise CliError("--context must be a JSON object, e.g. '{\"steps\": 3}'.")
    return value  # pyright: ignore[reportUnknownVariableType]


def _print_status(result: dict[str, Any]) -> None:
    pools = result.get("pools", [])
    priorities = [str(p) for p in range(10, -1, -1)]
    matrix = result.get("matrix", {})
    out.print(_table("pools", ["type", "workers", "slots", "running", "queued", "scheduled", "paused"],
                     [[p["worker_type"], p["workers"], p["slots"], p["running"], p["queued"], p.get("scheduled", 0),
                       "paused" if p.get("paused") else ""] for p in pools]))
    sla = result.get("sla", {})
    if sla:
        out.print(_table("SLA", ["type", "workers", "target", "queue wait p95 s", "utilisation", "reason"],
                         [[t, s["workers"], s["target_workers"], s["queue_wait_p95_s"], s["utilisation"], s["reason"]]
                          for t, s in sorted(sla.items())]))
    out.print(_table("queued by priority", ["type", *priorities],
                     [[t, *(row.get(p, "") for p in priorities)] for t, row in matrix.items() if row]))
    out.print(_table("workers", ["name", "type", "slots", "running", "queued", "draining"],
                     [[w["name"], w["worker_type"], w["slots"], w["running"], w["queued"],
                       "draining" if w.get("draining") else ""] for w in result.get("workers", [])]))
    out.print(_table("running", ["task", "tool", "priority", "worker", "agent", "preemptions"],
                     [[r["task_id"], r["tool"], r["priority"], r["worker"], r.get("agent") or "", r["preemptions"]]
                      for r in result.get("running", [])]))
    out.print(_table("tools", ["name", "kind", "worker type"],
                     [[t["name"], t["kind"], t["worker_type"]] for t in result.get("tools", [])]))
    length = result.get("stream_length")
    out.print(f"stream: {length} entr{'y' if length == 1 else 'ies'}, {result.get('stream_pending')} pending; "
              f"active tasks: {result.get('active_tasks')}", markup=False)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    """A table whose first column is left-aligned text and the rest right-aligned values."""
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 or column in ("type", "tool", "worker", "kind", "worker type") else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    return table


# ---------------------------------------------------------------- settings


def _load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CliError(f"invalid settings: {where}: {first['msg']} (check the ORCH_* variables "
                       "and the config file).") from None
    except FileNotFoundError as exc:
        raise CliError(f"{exc}.") from None


def _layout(settings: Settings) -> Layout:
    """The data dir made absolute, so `down` finds what `up` wrote from any working directory."""
    return Layout(settings.data_dir.expanduser().resolve())


def _shown(url: str | list[str]) -> str | list[str]:
    """A Redis URL (or a cluster's) fit for a log: any password masked."""
    return local.redact_url(url) if isinstance(url, str) else [local.redact_url(u) for u in url]


def _with_endpoints(settings: Settings, *, redis_url: str, host: str, port: int) -> Settings:
    return settings.model_copy(update={
        "redis": settings.redis.model_copy(update={"url": redis_url}),
        "http": settings.http.model_copy(update={"host": host, "port": port}),
    })


if __name__ == "__main__":
    main()
