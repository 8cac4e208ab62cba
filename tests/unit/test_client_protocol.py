"""The client's protocol core without I/O: errors back from the wire, retry decisions, the submit procedure, SSE
parsing and resumption, paging."""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
import pytest

from orchestrator import errors
from orchestrator.client import protocol as p
from orchestrator.errors import (
    ForbiddenError,
    InvalidParamsError,
    OrchestratorError,
    ProtocolError,
    QueueFullError,
    QuotaExceededError,
    RpcError,
    StorageUnavailableError,
    TaskNotFoundError,
    ToolError,
    from_wire,
)
from orchestrator.jsonrpc import to_jsonrpc_error
from orchestrator.models import RunTaskResult

SAMPLES: list[Exception] = [
    TaskNotFoundError("0-abc"),
    QueueFullError(10, 10, 1.5),
    errors.TaskNotCancellableError("0-abc", "succeeded"),
    ToolError("provider said no", retryable=True),
    StorageUnavailableError("connection refused"),
    errors.ActorUnavailableError("router"),
    errors.DeadLetterError("gave up after 3 attempts"),
    errors.ParentFailedError("parent 0-x failed"),
    errors.SagaNotFoundError("s1"),
    errors.SagaFinishedError("s1", "succeeded"),
    errors.UnauthenticatedError("API key revoked"),
    ForbiddenError("control", "admin"),
    QuotaExceededError("acme", "submits_per_s", 5, 0.4),
    errors.ScheduleNotFoundError("7f3a"),
    errors.InputNotExpectedError("0-abc", "input_required", "go", ["approval"]),
    InvalidParamsError({"params.priority": "maximum: 11 is greater than 10"}),
]


def over_the_wire(exc: Exception) -> Exception:
    return from_wire(json.loads(json.dumps(to_jsonrpc_error(exc))))


@pytest.mark.parametrize("exc", SAMPLES, ids=lambda e: type(e).__name__)
def test_every_error_comes_back_as_its_own_class(exc: Exception) -> None:
    back = over_the_wire(exc)
    assert type(back) is type(exc) and back.args == exc.args and str(back) == str(exc)
    assert vars(back) == vars(exc)


def test_every_application_error_has_a_wire_class() -> None:
    def subclasses(cls: type[OrchestratorError]) -> set[type[OrchestratorError]]:
        return {c for sub in cls.__subclasses__() for c in {sub, *subclasses(sub)}}

    assert set(errors.BY_CODE.values()) == subclasses(OrchestratorError)
    assert len(errors.BY_CODE) == len(subclasses(OrchestratorError))  # one class per code
    assert {type(e) for e in SAMPLES} - {InvalidParamsError} == set(errors.BY_CODE.values())


def test_except_works_on_the_client_side() -> None:
    try:
        raise over_the_wire(QueueFullError(7, 7, 2.5))
    except QueueFullError as exc:
        assert exc.retry_after_s == 2.5 and exc.retryable


@pytest.mark.parametrize(("error", "code"), [
    ({"code": -32601, "message": "Method not found", "data": {"method": "x"}}, -32601),
    ({"code": -32099, "message": "from a newer server", "data": {"retryable": True}}, -32099),
    ({"code": -32002, "message": "queue full (an older server)", "data": {"retryable": True}}, -32002),
    ({"message": "no code"}, -32603),
])
def test_what_no_class_stands_for_is_an_rpc_error(error: dict[str, Any], code: int) -> None:
    back = from_wire(error)
    assert type(back) is RpcError and back.code == code and back.message == error["message"]


SENT = httpx.Request("POST", "http://x/v2/rpc")


@pytest.mark.parametrize(("exc", "idempotent", "retried"), [
    (QueueFullError(1, 1, 0.5), False, True),  # refused before anything happened
    (QuotaExceededError("t", "submits_per_s", 1, 0.5), False, True),
    (httpx.ConnectError("refused", request=SENT), False, True),  # never reached the server
    (httpx.ReadError("reset", request=SENT), True, True),  # may have been carried out: only if harmless
    (httpx.ReadError("reset", request=SENT), False, False),
    (httpx.RemoteProtocolError("no answer", request=SENT), False, False),
    (StorageUnavailableError("down"), True, True),
    (StorageUnavailableError("down"), False, False),
    (ProtocolError("/v2/rpc", 503), True, True),
    (ProtocolError("/v2/rpc", 503), False, False),
    (ProtocolError("/v2/rpc", 429), False, True),
    (ProtocolError("/v2/rpc", 404), True, False),
    (TaskNotFoundError("x"), True, False),
    (InvalidParamsError({"params.x": "bad"}), True, False),
])
def test_what_is_retried(exc: BaseException, idempotent: bool, retried: bool) -> None:
    assert p.retryable(exc, idempotent) is retried


def test_retries_honour_retry_after_within_the_budget() -> None:
    retrier = p.Retrier(p.Retries(max_retries=10, budget_s=2.0), random.Random(1))
    delays = [retrier.delay_s(QueueFullError(1, 1, 0.6), idempotent=False) for _ in range(3)]
    assert all(0.6 <= d <= 0.6 + 0.05 for d in delays)
    with pytest.raises(QueueFullError):  # a fourth wait would pass the 2 s budget
        retrier.delay_s(QueueFullError(1, 1, 0.6), idempotent=False)
    backoff = p.Retrier(p.Retries(max_retries=2, backoff_base_s=0.1), random.Random(1))
    error = httpx.ConnectError("refused", request=SENT)
    assert [backoff.delay_s(error, False) <= limit for limit in (0.1, 0.2)] == [True, True]
    with pytest.raises(httpx.ConnectError):
        backoff.delay_s(error, False)


def reply(payload: Any, status: int = 200) -> p.Reply:
    return p.Reply(status, {}, json.dumps(payload).encode())


def test_a_retried_submit_carries_the_same_idempotency_key() -> None:
    call = p.run_task("echo", "hi", {}, timeout_s=30)
    procedure = p.send(call, p.Retries())
    first = next(procedure)
    assert isinstance(first, p.Request) and first.path == "/v1/rpc"  # a prompt: API v1
    lost = procedure.throw(httpx.RemoteProtocolError("no answer", request=SENT))
    assert isinstance(lost, p.Sleep)
    second = next(procedure)
    full = procedure.send(reply({"jsonrpc": "2.0", "id": 1, "error": to_jsonrpc_error(QueueFullError(5, 5, 0.25))}))
    assert isinstance(full, p.Sleep) and 0.25 <= full.seconds <= 0.3
    third = next(procedure)
    assert isinstance(second, p.Request) and isinstance(third, p.Request) and first.body == second.body == third.body
    key = json.loads(first.body or b"")["params"]["idempotency_key"]
    assert key.startswith("client-")
    with pytest.raises(StopIteration) as done:
        procedure.send(reply({"jsonrpc": "2.0", "id": 1, "result": {"task_id": "0-a", "status": "queued",
                                                                    "duplicate": True}}))
    assert done.value.value == RunTaskResult(task_id="0-a", status="queued", duplicate=True)


def test_run_task_takes_a_prompt_or_an_input() -> None:
    assert p.run_task("echo", None, {"input": {"prompt": "x"}}, 30).version == 2
    assert p.run_task("echo", None, {"input": {}, "wait": 10}, 30).timeout_s == 40
    assert p.run_task("echo", "x", {"idempotency_key": "mine"}, 30).params["idempotency_key"] == "mine"
    for prompt, options in ((None, {}), ("x", {"input": {"prompt": "x"}})):
        with pytest.raises(TypeError):
            p.run_task("echo", prompt, options, 30)  # type: ignore[arg-type]


def test_an_answer_that_is_no_json_rpc_reply() -> None:
    with pytest.raises(ProtocolError) as busy:
        p.result_of(p.Reply(503, {"retry-after": "2"}, b"<html>no replicas</html>"), "/v2/rpc")
    assert busy.value.retryable and busy.value.retry_after_s == 2.0
    with pytest.raises(ProtocolError):
        p.result_of(reply({"hello": "world"}), "/v2/rpc")


def feed(follower: p.EventFollower, text: str) -> list[p.TaskEvent]:
    return [e for line in text.split("\n") if (e := follower.feed(line)) is not None]


def test_events_resume_after_the_last_whole_event() -> None:
    follower = p.EventFollower("0-a", 0, p.Retries())
    assert "last-event-id" not in follower.request().headers
    got = feed(follower, 'id: 1\nevent: queued\ndata: {"priority": 5}\n\n: keep-alive\n\nid: 2\nevent: running\n'
                         'data: {}\n\nid: 3\nevent: progr')  # the connection broke inside event 3
    assert [(e.id, e.type, e.data) for e in got] == [(1, "queued", {"priority": 5}), (2, "running", {})]
    again = follower.request()
    assert again.headers["last-event-id"] == "2" and again.path == "/v1/tasks/0-a/events"
    # A server replaying from further back repeats nothing; the half event before the break is never delivered.
    got = feed(follower, 'data: {"step": 1}\n\nid: 2\nevent: running\ndata: {}\n\nid: 3\nevent: progress\n'
                         'data: {"step": 1}\n\nid: 4\nevent: succeeded\ndata: {"result": 1}\n\n')
    assert [(e.id, e.type) for e in got] == [(3, "progress"), (4, "succeeded")] and follower.done


def test_pages_follow_the_cursor_until_it_is_null() -> None:
    pager = p.Pager({"status": ["failed"], "limit": 2})
    assert pager.call().params == {"status": ["failed"], "limit": 2}
    record = {"task_id": "0-a", "status": "failed", "tool": "echo", "worker_type": "reasoning", "priority": 5,
              "created_at": 1.0}
    assert [t.task_id for t in pager.take({"tasks": [record], "next_cursor": "c1"})] == ["0-a"]
    assert pager.call().params["cursor"] == "c1" and not pager.done
    with pytest.raises(RpcError, match="returned the cursor it was given"):
        pager.take({"tasks": [], "next_cursor": "c1"})
    pager.take({"tasks": [], "next_cursor": None})
    assert pager.done


def test_a_batch_answers_each_member_in_order() -> None:
    calls = p.run_tasks([{"tool": "echo", "input": {"prompt": "a"}}, {"tool": "echo", "input": {"prompt": "b"}}], 30)
    procedure = p.send_batch(calls, p.Retries())
    request = next(procedure)
    assert isinstance(request, p.Request) and request.path == "/v2/rpc"
    sent = json.loads(request.body or b"")
    assert [m["id"] for m in sent] == [0, 1]
    assert len({m["params"]["idempotency_key"] for m in sent}) == 2  # one task each
    answers = [{"jsonrpc": "2.0", "id": 1, "error": to_jsonrpc_error(QueueFullError(1, 1, 1.0))},
               {"jsonrpc": "2.0", "id": 0, "result": {"task_id": "0-a", "status": "queued"}}]
    with pytest.raises(StopIteration) as done:
        procedure.send(reply(answers))
    first, second = done.value.value
    assert first == RunTaskResult(task_id="0-a", status="queued") and isinstance(second, QueueFullError)
    with pytest.raises(TypeError):  # v1 and v2 members cannot share a request
        next(p.send_batch(p.run_tasks([{"tool": "echo", "prompt": "a"}, {"tool": "echo", "input": {}}], 30),
                          p.Retries()))
