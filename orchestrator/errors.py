"""Every error the orchestrator raises, with its JSON-RPC code; the one list of application codes.

Codes: -32700..-32600 belong to the JSON-RPC edge (see `jsonrpc.py`); application codes:
  -32001 task not found          -32002 queue full (retryable, carries retry_after_s)
  -32003 task not cancellable     -32004 tool failed
  -32005 storage unavailable (retryable)  -32006 actor unavailable, e.g. the router restarting (retryable)
  -32007 (a task's error) given up after max_attempts lost attempts: a dead letter
  -32008 (a task's error) a fanout child's parent did not succeed
  -32009 saga not found           -32010 saga already finished (nothing to cancel)
  -32011 unauthenticated: no or an unknown API key (HTTP 401)
  -32012 forbidden: the key lacks the scope the method needs
  -32013 tenant quota exceeded (retryable, carries retry_after_s)
  -32014 schedule not found
  -32015 input not expected: the task is not waiting for input under that key

An error's `data` carries its constructor's arguments, so `from_wire` rebuilds the very exception on the client
(`except QueueFullError:` works on both sides).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any, ClassVar


class OrchestratorError(Exception):
    code: ClassVar[int] = -32000
    retryable: ClassVar[bool] = False

    def data(self) -> dict[str, object]:
        """Extra fields for the JSON-RPC error's `data`: whether retrying can help, and the constructor's
        arguments (but `message`, which is the error's message itself)."""
        names = _parameters(type(self))
        return {"retryable": self.retryable, **{n: v for n, v in zip(names, self.args) if n != "message"}}


class TaskNotFoundError(OrchestratorError):
    code = -32001

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id)  # unpickling calls cls(*args)
        self.task_id = task_id

    def __str__(self) -> str:
        return f"task {self.task_id} not found"


class QueueFullError(OrchestratorError):
    code = -32002
    retryable = True

    def __init__(self, active: int, limit: int, retry_after_s: float) -> None:
        super().__init__(active, limit, retry_after_s)
        self.active, self.limit, self.retry_after_s = active, limit, retry_after_s

    def __str__(self) -> str:
        return f"queue full: {self.active} tasks active, limit {self.limit}; retry later"


class DeadLetterError(OrchestratorError):
    """Stored as a task's error by the script that gives up on it (the code is all the script needs)."""

    code = -32007
    retryable = True


class ParentFailedError(OrchestratorError):
    """Stored as a fanout child's error when its parent did not succeed."""

    code = -32008


class TaskNotCancellableError(OrchestratorError):
    code = -32003

    def __init__(self, task_id: str, status: str) -> None:
        super().__init__(task_id, status)
        self.task_id, self.status = task_id, status

    def __str__(self) -> str:
        return f"task {self.task_id} is already {self.status}"


class ToolError(OrchestratorError):
    """A tool failed in a way the user should read (provider error, bad tool input)."""

    code = -32004

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message, retryable)
        self.message = message
        self.tool_retryable = retryable

    def __str__(self) -> str:
        return self.message


class StorageUnavailableError(OrchestratorError):
    code = -32005
    retryable = True

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"task store unavailable: {self.reason}"


class ActorUnavailableError(OrchestratorError):
    code = -32006
    retryable = True

    def __init__(self, actor: str) -> None:
        super().__init__(actor)
        self.actor = actor

    def __str__(self) -> str:
        return f"{self.actor} is unavailable (restarting?); retry shortly"


class SagaNotFoundError(OrchestratorError):
    code = -32009

    def __init__(self, saga_id: str) -> None:
        super().__init__(saga_id)
        self.saga_id = saga_id

    def __str__(self) -> str:
        return f"saga {self.saga_id} not found"


class ScheduleNotFoundError(OrchestratorError):
    code = -32014

    def __init__(self, schedule_id: str) -> None:
        super().__init__(schedule_id)
        self.schedule_id = schedule_id

    def __str__(self) -> str:
        return f"schedule {self.schedule_id} not found"


class SagaFinishedError(OrchestratorError):
    code = -32010

    def __init__(self, saga_id: str, status: str) -> None:
        super().__init__(saga_id, status)
        self.saga_id, self.status = saga_id, status

    def __str__(self) -> str:
        return f"saga {self.saga_id} already finished ({self.status})"


class UnauthenticatedError(OrchestratorError):
    """No API key, or one that is not configured; the reason never quotes the key."""

    code = -32011

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"unauthenticated: {self.reason}"


class ForbiddenError(OrchestratorError):
    code = -32012

    def __init__(self, method: str, scope: str) -> None:
        super().__init__(method, scope)
        self.method, self.scope = method, scope

    def __str__(self) -> str:
        return f"forbidden: {self.method} needs an API key with scope {self.scope!r}"


class QuotaExceededError(OrchestratorError):
    """A tenant is over its quota: too many unfinished tasks, or submitting faster than its rate."""

    code = -32013
    retryable = True

    def __init__(self, tenant: str, quota: str, limit: float, retry_after_s: float) -> None:
        super().__init__(tenant, quota, limit, retry_after_s)
        self.tenant, self.quota, self.limit, self.retry_after_s = tenant, quota, limit, retry_after_s

    def __str__(self) -> str:
        if self.quota == "max_active_tasks":
            what = f"has {self.limit:g} unfinished tasks, its limit"
        elif self.quota == "max_schedules":
            what = f"has {self.limit:g} schedules, its limit (delete one first)"
        elif self.quota in ("max_event_streams", "max_mcp_sessions"):
            what = f"has {self.limit:g} {self.quota.removeprefix('max_').replace('_', ' ')} open, its limit"
        else:
            what = f"submits faster than its limit of {self.limit:g} per second"
        return f"quota exceeded: tenant {self.tenant} {what}; retry in {self.retry_after_s:g} s"


class InputNotExpectedError(OrchestratorError):
    """`provide_input` for a task that is not waiting for input, or under a key it did not ask for (or answered
    differently already); nothing was stored."""

    code = -32015

    def __init__(self, task_id: str, status: str, key: str, pending: list[str]) -> None:
        super().__init__(task_id, status, key, pending)
        self.task_id, self.status, self.key, self.pending = task_id, status, key, pending

    def __str__(self) -> str:
        if self.status != "input_required":
            return f"task {self.task_id} is {self.status}: it is not waiting for input"
        return f"task {self.task_id} is not waiting for input {self.key!r}; it waits for: {', '.join(self.pending)}"


class InvalidParamsError(Exception):
    """Params failed validation at the edge; `fields` maps a field path to why."""

    code: ClassVar[int] = -32602

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(fields)
        self.fields = fields

    def __str__(self) -> str:
        return "; ".join(f"{path}: {why}" for path, why in self.fields.items())


class RpcError(Exception):
    """A JSON-RPC error no class here stands for: the protocol's own (-32700, -32600, -32601, -32603) or a code
    this version does not know."""

    def __init__(self, code: int, message: str, data: object = None) -> None:
        super().__init__(code, message, data)
        self.code, self.message, self.data = code, message, data
        self.retryable = isinstance(data, dict) and data.get("retryable") is True  # pyright: ignore[reportUnknownMemberType]

    def __str__(self) -> str:
        return f"error {self.code}: {self.message}"


class ProtocolError(Exception):
    """An HTTP answer that is no JSON-RPC reply (a proxy's 502, Serve's 503, not the orchestrator at all)."""

    RETRYABLE_STATUSES: ClassVar[frozenset[int]] = frozenset({429, 502, 503, 504})

    def __init__(self, url: str, status: int, retry_after_s: float | None = None) -> None:
        super().__init__(url, status, retry_after_s)
        self.url, self.status, self.retry_after_s = url, status, retry_after_s
        self.retryable = status in self.RETRYABLE_STATUSES

    def __str__(self) -> str:
        return f"{self.url} answered HTTP {self.status} without a JSON-RPC reply: is it the orchestrator?"


_WIRE_CLASSES: tuple[type[OrchestratorError], ...] = (
    TaskNotFoundError, QueueFullError, TaskNotCancellableError, ToolError, StorageUnavailableError,
    ActorUnavailableError, DeadLetterError, ParentFailedError, SagaNotFoundError, SagaFinishedError,
    UnauthenticatedError, ForbiddenError, QuotaExceededError, ScheduleNotFoundError, InputNotExpectedError,
)
BY_CODE: Mapping[int, type[OrchestratorError]] = {cls.code: cls for cls in _WIRE_CLASSES}


def from_wire(error: Mapping[str, Any]) -> Exception:
    """The exception a JSON-RPC error object stands for: the server's own class with its fields, when the code
    names one and `data` holds its arguments; else an RpcError carrying what came."""
    code, message, data = error.get("code"), str(error.get("message", "")), error.get("data")
    details: Mapping[str, Any] = data if isinstance(data, Mapping) else {}  # pyright: ignore[reportUnknownVariableType]
    if code == InvalidParamsError.code and isinstance(details.get("fields"), Mapping):
        return InvalidParamsError({str(k): str(v) for k, v in details["fields"].items()})
    cls = BY_CODE.get(code) if isinstance(code, int) else None
    if cls is not None:
        given = {**details, "message": message}
        names = _parameters(cls)
        if all(n in given for n in names):
            return cls(*(given[n] for n in names)) if names else cls(message)
    return RpcError(code if isinstance(code, int) else -32603, message, data)


@functools.cache
def _parameters(cls: type[Exception]) -> tuple[str, ...]:
    """The names of the constructor's parameters, in order (none for a class without a constructor of its own)."""
    if cls.__init__ is Exception.__init__:
        return ()
    return tuple(inspect.signature(cls.__init__).parameters)[1:]
