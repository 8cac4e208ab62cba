"""Running one task attempt: start it (fenced), run its tool, store exactly one final state."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.adapters.stats_store import StatsStore, finished_task
from orchestrator.adapters.task_store import TaskStore
from orchestrator.errors import OrchestratorError, StorageUnavailableError, ToolError
from orchestrator.models import TaskStatus
from orchestrator.tasks import TaskSpec
from orchestrator.tools.base import Tool, ToolCall

logger = logging.getLogger(__name__)


class RunningTasks:
    """The tool calls running in one worker, so they can be interrupted (even one about to start).

    An interruption is either a cancel (the task ends `cancelled`) or a preemption (it is requeued).
    """

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Future[Any]] = {}
        self._interrupts: dict[str, TaskStatus] = {}

    def register(self, task_id: str, inner: asyncio.Future[Any]) -> None:
        self._tasks[task_id] = inner
        if task_id in self._interrupts:  # interrupted before it started
            inner.cancel()

    def unregister(self, task_id: str) -> TaskStatus | None:
        """Forget the task; returns why it was interrupted, if it was."""
        self._tasks.pop(task_id, None)
        return self._interrupts.pop(task_id, None)

    def interrupt(self, task_id: str, why: TaskStatus) -> bool:
        """Cancel or preempt the task's tool; True if it was running here."""
        self._interrupts.setdefault(task_id, why)  # a cancel that came first wins over a later preemption
        inner = self._tasks.get(task_id)
        if inner is None:
            return False
        inner.cancel()
        return True

    def __len__(self) -> int:
        return len(self._tasks)


class AttemptContext:
    """A tool's progress and checkpoints, written to the task while this attempt is current."""

    def __init__(self, store: TaskStore, task_id: str, attempt: int, clock: Callable[[], float],
                 max_checkpoint_bytes: int) -> None:
        self._store, self._task_id, self._attempt, self._clock = store, task_id, attempt, clock
        self._max_checkpoint_bytes = max_checkpoint_bytes

    async def progress(self, data: Mapping[str, Any]) -> None:
        await self._store.update(self._task_id, self._attempt, self._clock(), progress=dict(data))

    async def checkpoint(self, state: Mapping[str, Any], progress: Mapping[str, Any] | None = None) -> None:
        size = len(json.dumps(state))
        if size > self._max_checkpoint_bytes:
            raise ToolError(f"checkpoint of {size} bytes exceeds the limit of {self._max_checkpoint_bytes}")
        await self._store.update(self._task_id, self._attempt, self._clock(), checkpoint=dict(state),
                                 progress=None if progress is None else dict(progress))


@dataclass(frozen=True, slots=True)
class Limits:
    max_attempts: int
    max_checkpoint_bytes: int


async def execute(
    task: TaskSpec,
    tool: Tool | None,
    store: TaskStore,
    worker: str,
    clock: Callable[[], float],
    running: RunningTasks,
    limits: Limits,
    stats: StatsStore | None = None,
) -> TaskStatus | None:
    """Run one attempt of `task`; returns its final status, or None if it was not ours to run or finish."""
    resumable = tool is not None and tool.resumable
    started = await store.start(task.task_id, worker, clock(), resumable, limits.max_attempts, task.children)
    if started is None:
        running.unregister(task.task_id)
        return None
    attempt = started.attempt
    tool_input = started.corrected_input if started.corrected_input is not None else task.input
    call = ToolCall(task_id=task.task_id, attempt=attempt, input=tool_input, context=task.context,
                    deadline=task.deadline, checkpoint=started.checkpoint)
    ctx = AttemptContext(store, task.task_id, attempt, clock, limits.max_checkpoint_bytes)
    status, fields = await _run(task, tool, call, ctx, clock, running)
    if status is TaskStatus.PREEMPTED:
        stored = await store.preempt(task.task_id, attempt, clock())
    else:
        stored = await store.finish(task.task_id, attempt, status, clock(), children=task.children, **fields)
    if not stored:
        logger.warning("stale attempt's result refused", extra={"task_id": task.task_id, "attempt": attempt})
        return None
    if status is not TaskStatus.PREEMPTED and stats is not None:
        await stats.record(finished_task(await store.get(task.task_id)), clock())
    return status


async def _run(
    task: TaskSpec,
    tool: Tool | None,
    call: ToolCall,
    ctx: AttemptContext,
    clock: Callable[[], float],
    running: RunningTasks,
) -> tuple[TaskStatus, dict[str, Any]]:
    """Run the tool as its own asyncio task, registered in `running` so cancel_task can interrupt it."""
    if tool is None:
        running.unregister(task.task_id)
        return _failed(ToolError(f"tool {task.tool!r} is not configured on this worker"))
    if task.deadline is not None and clock() >= task.deadline:
        running.unregister(task.task_id)
        return _failed(ToolError("deadline passed before the task could start"))
    inner = asyncio.ensure_future(tool.run(call, ctx))
    running.register(task.task_id, inner)
    try:
        timeout = None if task.deadline is None else task.deadline - clock()
        async with asyncio.timeout(timeout):
            result = await inner
    except TimeoutError:
        return _failed(ToolError("deadline exceeded while running"))
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():  # we are shutting down, not interrupted
            inner.cancel()
            raise
        why = running.unregister(task.task_id) or TaskStatus.CANCELLED
        return why, {}
    except StorageUnavailableError:
        raise  # the task store is away, not the tool at fault: the attempt is lost and the task requeued
    except OrchestratorError as exc:
        return _failed(exc)
    except Exception as exc:
        logger.exception("tool crashed", extra={"task_id": task.task_id, "tool": task.tool})
        return _failed(ToolError(f"tool {task.tool!r} failed unexpectedly ({type(exc).__name__})"))
    finally:
        running.unregister(task.task_id)
    return TaskStatus.SUCCEEDED, {"result": result}


def _failed(exc: OrchestratorError) -> tuple[TaskStatus, dict[str, Any]]:
    error = {"code": exc.code, "message": str(exc), "retryable": bool(exc.data().get("retryable", False))}
    return TaskStatus.FAILED, {"error": error}
