"""The client's protocol logic, without I/O: calls and their replies, retries, paging, following events.

Both clients drive the same procedures: a procedure is a generator that yields what it needs done (an HTTP
`Request`, a `Sleep`) and is sent the `Reply` (or has the transport's exception thrown in), so the retry rules,
the error mapping and waiting exist once, and each client only moves bytes (`Client` with httpx.Client,
`AsyncClient` with httpx.AsyncClient).
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypedDict, TypeVar, cast

import httpx
from pydantic import TypeAdapter

from orchestrator.analytics import AnalyticsResult
from orchestrator.errors import (
    ActorUnavailableError,
    OrchestratorError,
    ProtocolError,
    QueueFullError,
    QuotaExceededError,
    RpcError,
    StorageUnavailableError,
    from_wire,
)
from orchestrator.models import (
    FINISHED,
    CancelSagaResult,
    CancelTaskResult,
    ControlResult,
    DeleteScheduleResult,
    InjectResult,
    KeysResult,
    ListSchedulesResult,
    ProvideInputResult,
    RunSagaResult,
    RunTaskResult,
    ScheduleState,
    StatusResult,
    TaskRecord,
)
from orchestrator.resilience import RetryPolicy
from orchestrator.saga import SagaState, WorkflowDefinition

logger = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8000"
FINAL_EVENTS = frozenset(status.value for status in FINISHED)
# Refused before the server did anything: retrying is safe whatever the call.
_REFUSED = (QueueFullError, QuotaExceededError)
# The call may have had an effect: retried only when repeating it changes nothing.
_UNSURE = (StorageUnavailableError, ActorUnavailableError)
# Never reached the server: retrying is safe whatever the call.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
STREAM_READ_TIMEOUT_S = 60.0  # an event stream sends a keep-alive every 15 s: silent longer, it is dead


class StreamEnded(Exception):
    """The server closed an event stream before the task's final event (it caps a stream's duration)."""

    retry_after_s = 0.0  # reconnect at once


@dataclass(frozen=True, slots=True)
class Request:
    method: str  # GET or POST
    path: str  # after the base URL, e.g. /v2/rpc
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict[str, str])
    timeout_s: float | None = None  # None: the client's own


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


Effect = Request | Sleep
Procedure = Generator[Effect, Any, T]


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One JSON-RPC call: what to send, how to read its result, and whether repeating it is harmless."""

    method: str
    params: Mapping[str, Any]
    parse: Callable[[Any], T]
    idempotent: bool
    version: int = 2  # /v2/rpc; v1 only for run_task with a `prompt`
    timeout_s: float | None = None

    def envelope(self, request_id: int) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": request_id, "method": self.method, "params": dict(self.params)}


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One event of a task, as `events()` yields it: its id (1, 2, …), type and data."""

    id: int
    type: str  # queued, running, progress, preempted, …, succeeded, failed, cancelled
    data: Any

    @property
    def final(self) -> bool:
        return self.type in FINAL_EVENTS


@dataclass(frozen=True, slots=True)
class Retries:
    """How hard a client tries again: at most `max_retries` retries and `budget_s` seconds of waiting per call;
    the wait is the server's `retry_after_s` when it gives one, else full-jitter exponential backoff."""

    max_retries: int = 5
    budget_s: float = 60.0
    backoff_base_s: float = 0.1
    backoff_max_s: float = 5.0


class Retrier:
    """The retry decisions of one call (or one outage of an event stream)."""

    def __init__(self, retries: Retries, rng: random.Random | None = None) -> None:
        self._retries = retries
        self._policy = RetryPolicy(retries.max_retries, retries.backoff_base_s, retries.backoff_max_s)
        self._rng = rng or random.Random()
        self.retry = 0
        self.waited_s = 0.0

    def delay_s(self, exc: BaseException, idempotent: bool) -> float:
        """Seconds to wait before trying again after `exc`; raises `exc` when retrying cannot help or the budget is
        spent."""
        if not retryable(exc, idempotent) or self.retry >= self._retries.max_retries:
            raise exc
        asked = getattr(exc, "retry_after_s", None)
        delay = self._policy.delay_s(self.retry, float(asked) if isinstance(asked, int | float) else None, self._rng)
        if self.waited_s + delay > self._retries.budget_s:
            raise exc
        self.retry += 1
        self.waited_s += delay
        logger.info("retrying", extra={"retry": self.retry, "in_s": round(delay, 3), "reason": str(exc)[:200]})
        return delay

    def reset(self) -> None:
        self.retry, self.waited_s = 0, 0.0


def retryable(exc: BaseException, idempotent: bool) -> bool:
    """Whether trying again may succeed without doing anything twice."""
    if isinstance(exc, (*_REFUSED, *_NOT_SENT, StreamEnded)):
        return True
    if isinstance(exc, ProtocolError):
        return exc.retryable and (idempotent or exc.status == 429)
    if isinstance(exc, (*_UNSURE, httpx.TransportError)):
        return idempotent
    return isinstance(exc, RpcError) and exc.retryable and idempotent


def send(call: Call[T], retries: Retries) -> Procedure[T]:
    """Make one call, retrying what `retryable` allows; the result parsed, or the server's exception raised."""
    request = _post(call.version, call.envelope(1), call.timeout_s)
    return (yield from _attempts(request, lambda reply: call.parse(result_of(reply, request.path)), call.idempotent,
                                 retries))


def send_batch(calls: Sequence[Call[Any]], retries: Retries) -> Procedure[list[Any]]:
    """The calls as one JSON-RPC batch (one HTTP request; submits share Redis round trips); each member's parsed
    result, or the exception its error stands for (returned, not raised). Retried as a whole only when every member
    may be repeated."""
    if len({call.version for call in calls}) > 1:
        raise TypeError("a batch goes to one endpoint: run_task with prompt (v1) and with input (v2) cannot mix")
    timeout_s = max((call.timeout_s or 0 for call in calls), default=0) or None
    request = _post(calls[0].version, [call.envelope(i) for i, call in enumerate(calls)], timeout_s)
    return (yield from _attempts(request, lambda reply: _members(calls, reply, request.path),
                                 all(call.idempotent for call in calls), retries))


def _post(version: int, body: Any, timeout_s: float | None) -> Request:
    return Request("POST", f"/v{version}/rpc", json.dumps(body, separators=(",", ":")).encode(),
                   {"content-type": "application/json"}, timeout_s)


def _attempts(request: Request, decode: Callable[[Reply], T], idempotent: bool, retries: Retries) -> Procedure[T]:
    retrier = Retrier(retries)
    while True:
        try:
            reply: Reply = yield request
            return decode(reply)
        except (OrchestratorError, RpcError, ProtocolError, httpx.TransportError) as exc:
            yield Sleep(retrier.delay_s(exc, idempotent))


def _members(calls: Sequence[Call[Any]], reply: Reply, path: str) -> list[Any]:
    payload = _payload(reply, path)
    answers = {m.get("id"): m for m in cast(list[dict[str, Any]], payload) if isinstance(m, dict)} \
        if isinstance(payload, list) else {}
    if set(answers) != set(range(len(calls))):
        raise ProtocolError(path, reply.status)
    results: list[Any] = []
    for i, call in enumerate(calls):
        error = answers[i].get("error")
        results.append(from_wire(error) if isinstance(error, dict) else call.parse(answers[i].get("result")))
    return results


def result_of(reply: Reply, path: str) -> Any:
    """The `result` of a JSON-RPC reply; raises the error it carries."""
    payload = _payload(reply, path)
    if not isinstance(payload, dict) or "result" not in payload:
        raise ProtocolError(path, reply.status, _retry_after(reply.headers))
    return cast(dict[str, Any], payload)["result"]


def _payload(reply: Reply, path: str) -> Any:
    """The reply's JSON; raises the error of a reply that is one error (a refused request or batch)."""
    try:
        payload: Any = json.loads(reply.body)
    except ValueError:
        raise ProtocolError(path, reply.status, _retry_after(reply.headers)) from None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        raise from_wire(cast(dict[str, Any], payload["error"]))
    return payload


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after", "")
    return float(value) if value.replace(".", "", 1).isdigit() else None


def wait(task_id: str, timeout_s: float | None, retries: Retries, clock: Callable[[], float],
         poll_s: tuple[float, float] = (0.05, 1.0)) -> Procedure[TaskRecord]:
    """Poll `get_task` (backing off from poll_s[0] to poll_s[1]) until the task finished or waits for input (its
    record says what for: answer with `provide_input`, then wait again); raises TimeoutError with the last
    record's status once `timeout_s` passed."""
    ends = None if timeout_s is None else clock() + timeout_s
    pause = poll_s[0]
    while True:
        record = yield from send(get_task(task_id), retries)
        if record.status.settled:
            return record
        if ends is not None and clock() >= ends:
            raise TimeoutError(f"task {task_id} is still {record.status.value} after {timeout_s:g} s")
        yield Sleep(pause if ends is None else max(0.0, min(pause, ends - clock())))
        pause = min(poll_s[1], pause * 2)


# ---------------------------------------------------------------- the methods


class RunTaskOptions(TypedDict, total=False):
    """run_task's params besides `tool` and `prompt` (see RunTaskParams / RunTaskParamsV2)."""

    input: dict[str, Any]  # v2: the tool's input (else `prompt`, v1)
    priority: int
    context: dict[str, Any]
    wait: float  # seconds the server blocks for the result (capped by limits.max_wait_s)
    deadline: str  # v2, RFC 3339
    not_before: str  # RFC 3339 with a timezone: a delayed task (status `scheduled` until then)
    delay_s: float  # or: ready this many seconds from now
    idempotency_key: str  # default: one the client makes, so a retried submit is the same task
    agent: str
    children: list[dict[str, Any]]


class TaskFilters(TypedDict, total=False):
    """list_tasks's filters; `limit` is the page size (the iterator goes on to the next page)."""

    status: str | list[str]
    tool: str
    worker_type: str
    priority_min: int
    priority_max: int
    created_after: float | str
    created_before: float | str
    parent_id: str
    saga_id: str
    tenant: str
    limit: int


_REPLY_MARGIN_S = 30.0  # on top of a server-side wait, before the client gives up on the reply


def _model(model: Any) -> Callable[[Any], Any]:
    return TypeAdapter(model).validate_python


def _given(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _task(result: Any) -> RunTaskResult | TaskRecord:
    """run_task answers the finished record (with `wait`) or {task_id, status, duplicate}."""
    return TaskRecord.model_validate(result) if "created_at" in result else RunTaskResult.model_validate(result)


def run_task(tool: str, prompt: str | None, options: RunTaskOptions, timeout_s: float) -> Call[RunTaskResult | TaskRecord]:
    if (prompt is None) == ("input" not in options):
        raise TypeError("run_task takes a prompt (API v1) or input= (API v2), one of them")
    params: dict[str, Any] = {"tool": tool, "prompt": prompt, **options}
    params.setdefault("idempotency_key", f"client-{uuid.uuid4().hex}")  # so that a retry is never a second task
    wait_s = float(options.get("wait") or 0)
    return Call("run_task", _given(params), _task, idempotent=True, version=1 if prompt is not None else 2,
                timeout_s=(wait_s + _REPLY_MARGIN_S) if wait_s else None)


def run_tasks(tasks: Sequence[Mapping[str, Any]], timeout_s: float) -> list[Call[RunTaskResult | TaskRecord]]:
    """Each task as run_task's params (`tool`, `prompt` or `input`, …)."""
    return [run_task(t["tool"], t.get("prompt"), cast(RunTaskOptions, {k: v for k, v in t.items()
                                                                      if k not in ("tool", "prompt")}), timeout_s)
            for t in tasks]


def get_task(task_id: str) -> Call[TaskRecord]:
    return Call("get_task", {"task_id": task_id}, TaskRecord.model_validate, idempotent=True)


def cancel_task(task_id: str) -> Call[CancelTaskResult]:
    return Call("cancel_task", {"task_id": task_id}, CancelTaskResult.model_validate, idempotent=True)


def provide_input(task_id: str, input: Any, key: str | None, action: str) -> Call[ProvideInputResult]:
    """Repeating it changes nothing: the same answer again is answered `duplicate`."""
    params = {"task_id": task_id, "input": input, "key": key, "action": action}
    return Call("provide_input", _given(params) | {"input": input}, ProvideInputResult.model_validate,
                idempotent=True)


def run_saga(workflow: str, input: Mapping[str, Any] | None, priority: int | None, idempotency_key: str | None,
             agent: str | None) -> Call[RunSagaResult]:
    params = {"workflow": workflow, "input": input, "priority": priority, "agent": agent,
              "idempotency_key": idempotency_key or f"client-{uuid.uuid4().hex}"}
    return Call("run_saga", _given(params), RunSagaResult.model_validate, idempotent=True)


def get_saga(saga_id: str) -> Call[SagaState]:
    return Call("get_saga", {"saga_id": saga_id}, SagaState.model_validate, idempotent=True)


def cancel_saga(saga_id: str) -> Call[CancelSagaResult]:
    return Call("cancel_saga", {"saga_id": saga_id}, CancelSagaResult.model_validate, idempotent=True)


def rerun_task(task_id: str, input: Mapping[str, Any] | None, priority: int | None,
               idempotency_key: str | None, agent: str | None) -> Call[RunTaskResult]:
    params = {"task_id": task_id, "input": input, "priority": priority, "agent": agent,
              "idempotency_key": idempotency_key or f"client-{uuid.uuid4().hex}"}
    return Call("rerun_task", _given(params), RunTaskResult.model_validate, idempotent=True)


def rerun_saga(saga_id: str, input: Mapping[str, Any] | None, priority: int | None, idempotency_key: str | None,
               agent: str | None) -> Call[RunSagaResult]:
    params = {"saga_id": saga_id, "input": input, "priority": priority, "agent": agent,
              "idempotency_key": idempotency_key or f"client-{uuid.uuid4().hex}"}
    return Call("rerun_saga", _given(params), RunSagaResult.model_validate, idempotent=True)


def create_schedule(tool: str, input: Mapping[str, Any], options: Mapping[str, Any]) -> Call[ScheduleState]:
    """Not retried once sent: a lost answer could mean a schedule made twice (list_schedules tells)."""
    return Call("create_schedule", _given({"tool": tool, "input": input, **options}), ScheduleState.model_validate,
                idempotent=False)


def schedule_action(method: str, schedule_id: str) -> Call[ScheduleState]:
    """get_schedule, pause_schedule, resume_schedule: repeating one changes nothing."""
    return Call(method, {"schedule_id": schedule_id}, ScheduleState.model_validate, idempotent=True)


def list_schedules(tenant: str | None) -> Call[list[ScheduleState]]:
    return Call("list_schedules", _given({"tenant": tenant}),
                lambda result: ListSchedulesResult.model_validate(result).schedules, idempotent=True)


def delete_schedule(schedule_id: str) -> Call[DeleteScheduleResult]:
    return Call("delete_schedule", {"schedule_id": schedule_id}, DeleteScheduleResult.model_validate,
                idempotent=True)


def list_workflows() -> Call[list[WorkflowDefinition]]:
    return Call("list_workflows", {}, _model(list[WorkflowDefinition]), idempotent=True)


def status() -> Call[StatusResult]:
    return Call("status", {}, StatusResult.model_validate, idempotent=True)


def analytics(window_s: int | None) -> Call[AnalyticsResult]:
    return Call("analytics", _given({"window_s": window_s}), AnalyticsResult.model_validate, idempotent=True)


def control(action: str, params: Mapping[str, Any]) -> Call[ControlResult]:
    """Operator actions change things (scale, requeue, …): never repeated on a lost reply."""
    return Call("control", _given({"action": action, **params}), ControlResult.model_validate, idempotent=False)


def inject(action: str, params: Mapping[str, Any]) -> Call[InjectResult]:
    return Call("inject", _given({"action": action, **params}), InjectResult.model_validate, idempotent=False)


def keys(action: str, params: Mapping[str, Any]) -> Call[KeysResult]:
    return Call("keys", _given({"action": action, **params}), KeysResult.model_validate,
                idempotent=action == "list")


def discover() -> Call[dict[str, Any]]:
    return Call("rpc.discover", {}, _model(dict[str, Any]), idempotent=True)


def any_method(name: str, params: Mapping[str, Any], idempotent: bool) -> Call[Any]:
    """A method by name, its result as it came."""
    return Call(name, dict(params), _model(Any), idempotent=idempotent)


# ---------------------------------------------------------------- list_tasks


class Pager:
    """Walks list_tasks's pages: each page's `next_cursor` asks for the next one, until it is null."""

    def __init__(self, filters: TaskFilters) -> None:
        self._filters = dict(filters)
        self._cursor: str | None = None
        self.done = False

    def call(self) -> Call[dict[str, Any]]:
        params = {**self._filters, **({"cursor": self._cursor} if self._cursor else {})}
        return Call("list_tasks", _given(params), _model(dict[str, Any]), idempotent=True)

    def take(self, page: Mapping[str, Any]) -> list[TaskRecord]:
        """The page's tasks; remembers where the next page starts."""
        cursor = page.get("next_cursor")
        if cursor is not None and cursor == self._cursor:  # a server that repeats itself would loop forever
            raise RpcError(-32603, f"list_tasks returned the cursor it was given ({cursor!r})", None)
        self._cursor, self.done = cursor, cursor is None
        return [TaskRecord.model_validate(task) for task in page.get("tasks", [])]


# ---------------------------------------------------------------- events (SSE)


class EventFollower:
    """Follows a task's Server-Sent Events across dropped connections: each reconnection asks for what came
    after the last complete event (`Last-Event-ID`), so nothing is lost or repeated; done after the final event."""

    def __init__(self, task_id: str, after: int, retries: Retries) -> None:
        self.task_id, self.last_id = task_id, after
        self.done = False
        self._retrier = Retrier(retries)
        self._fields: dict[str, str] = {}

    def request(self) -> Request:
        headers = {"accept": "text/event-stream"}
        if self.last_id:
            headers["last-event-id"] = str(self.last_id)
        self._fields = {}  # a partial event of a dropped connection is never delivered
        return Request("GET", f"/v1/tasks/{self.task_id}/events", None, headers)

    def refused(self, reply: Reply) -> None:
        """A stream that did not open (404, 429, 503): raises the server's error."""
        result_of(reply, f"/v1/tasks/{self.task_id}/events")
        raise ProtocolError(f"/v1/tasks/{self.task_id}/events", reply.status)

    def feed(self, line: str) -> TaskEvent | None:
        """One line of the stream; the event it completes, if any."""
        if line:
            if not line.startswith(":"):  # a comment: the keep-alive
                name, _, value = line.partition(":")
                self._fields[name] = value.removeprefix(" ")
            return None
        fields, self._fields = self._fields, {}
        if "id" not in fields:
            return None
        event = TaskEvent(int(fields["id"]), fields.get("event", "message"), json.loads(fields.get("data") or "null"))
        if event.id <= self.last_id:  # never repeated, even by a server that replays from further back
            return None
        self.last_id, self.done = event.id, event.final
        self._retrier.reset()  # the budget is per outage, not per stream
        return event

    def delay_s(self, exc: BaseException) -> float:
        """After the stream failed or ended early: seconds before reconnecting; raises when it should not."""
        return self._retrier.delay_s(exc, idempotent=True)



# ---------------------------------------------------------------- connection


USER_AGENT = "mcp-orchestrator-client/0.1"


def connection(base_url: str | None, api_key: str | None, environ: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The base URL (given, else ORCH_URL, else the local default) and the headers every request carries (the
    API key given, else ORCH_API_KEY)."""
    url = (base_url or environ.get("ORCH_URL") or DEFAULT_URL).rstrip("/")
    key = api_key if api_key is not None else environ.get("ORCH_API_KEY")
    headers = {"user-agent": USER_AGENT}
    if key:
        headers["authorization"] = f"Bearer {key}"
    return url, headers
