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
"""

from __future__ import annotations

from typing import ClassVar


class OrchestratorError(Exception):
    code: ClassVar[int] = -32000
    retryable: ClassVar[bool] = False

    def data(self) -> dict[str, object]:
        """Extra fields for the JSON-RPC error's `data`."""
        return {"retryable": self.retryable}


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

    def data(self) -> dict[str, object]:
        return {"retryable": True, "retry_after_s": self.retry_after_s}


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

    def data(self) -> dict[str, object]:
        return {"retryable": self.tool_retryable}


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

    def data(self) -> dict[str, object]:
        return {"retryable": False, "scope": self.scope}


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

    def data(self) -> dict[str, object]:
        return {"retryable": True, "retry_after_s": self.retry_after_s, "quota": self.quota, "limit": self.limit}


class InvalidParamsError(Exception):
    """Params failed validation at the edge; `fields` maps a field path to why."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(fields)
        self.fields = fields

    def __str__(self) -> str:
        return "; ".join(f"{path}: {why}" for path, why in self.fields.items())
