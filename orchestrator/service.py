"""The task API's behaviour, behind both protocol faces: submit, look up, cancel, report status."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from orchestrator.adapters.task_store import TaskStore
from orchestrator.adapters.waiter import CompletionWaiter
from orchestrator.errors import InvalidParamsError
from orchestrator.models import (
    CancelTaskResult,
    PoolStatus,
    RunTaskParams,
    RunTaskParamsV2,
    RunTaskResult,
    StatusResult,
    TaskRecord,
    TaskStatus,
    WorkerStatus,
)
from orchestrator.settings import Settings, ToolSettings
from orchestrator.tasks import TaskSpec, new_task_id
from orchestrator.tools import registry


class RouterClient(Protocol):
    """What the API needs from the router; the deployment implements it with actor calls."""

    async def pools(self) -> tuple[list[PoolStatus], list[WorkerStatus]]: ...

    async def cancel_running(self, task_id: str) -> None: ...


class TaskService:
    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        waiter: CompletionWaiter,
        router: RouterClient,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._store = store
        self._waiter = waiter
        self._router = router
        self._clock = clock

    async def run_task(self, params: RunTaskParams | RunTaskParamsV2) -> RunTaskResult | TaskRecord:
        """Accept a task (durably, before answering); with `wait`, answer with the record once finished."""
        task = self._spec(params)
        limits = self._settings.limits
        task_id, duplicate = await self._store.submit(task, limits.max_active_tasks, limits.queue_full_retry_after_s)
        if params.wait:
            record = await self._wait(task_id, min(params.wait, limits.max_wait_s))
            if record.status.finished:
                return record
            return RunTaskResult(task_id=task_id, status=record.status, duplicate=duplicate)
        status = TaskStatus.QUEUED if not duplicate else (await self._store.get(task_id)).status
        return RunTaskResult(task_id=task_id, status=status, duplicate=duplicate)

    async def get_task(self, task_id: str) -> TaskRecord:
        return await self._store.get(task_id)

    async def cancel_task(self, task_id: str) -> CancelTaskResult:
        """Cancel a queued task at once; ask the router to interrupt a running one."""
        status = await self._store.cancel(task_id, self._clock())
        if status is TaskStatus.RUNNING:
            await self._router.cancel_running(task_id)
            status = (await self._store.get(task_id)).status
        return CancelTaskResult(task_id=task_id, status=status)

    async def status(self) -> StatusResult:
        pools, workers = await self._router.pools()
        counts = await self._store.counts()
        return StatusResult(pools=pools, workers=workers, tools=registry.describe(self._settings.tools), **counts)

    async def _wait(self, task_id: str, timeout_s: float) -> TaskRecord:
        record: TaskRecord | None = None

        async def finished() -> bool:
            nonlocal record
            record = await self._store.get(task_id)
            return record.status.finished

        await self._waiter.wait(task_id, timeout_s, finished)
        assert record is not None
        return record

    def _spec(self, params: RunTaskParams | RunTaskParamsV2) -> TaskSpec:
        """Check params against the tool and the limits, and build the task; InvalidParamsError names the field."""
        tool = self._tool(params.tool)
        limits = self._settings.limits
        if len(json.dumps(params.context)) > limits.max_context_bytes:
            raise InvalidParamsError({"params.context": f"larger than {limits.max_context_bytes} bytes"})
        if isinstance(params, RunTaskParams):
            prompt, tool_input, where = params.prompt, _v1_input(params, tool), "params.context"
            deadline = None
        else:
            prompt, tool_input, where = None, dict(params.input), "params.input"
            deadline = params.deadline.timestamp() if params.deadline else None
            if len(json.dumps(tool_input)) > limits.max_context_bytes:
                raise InvalidParamsError({"params.input": f"larger than {limits.max_context_bytes} bytes"})
        text = prompt if prompt is not None else tool_input.get("prompt")
        if isinstance(text, str) and len(text) > limits.max_prompt_chars:
            field = "params.prompt" if prompt is not None else "params.input.prompt"
            raise InvalidParamsError({field: f"longer than {limits.max_prompt_chars} characters"})
        errors = registry.input_errors(tool, tool_input, where)
        if prompt is not None:  # v1: the prompt is a top-level param, not a context key
            errors = {("params.prompt" if k == "params.context.prompt" else k): v for k, v in errors.items()}
        if errors:
            raise InvalidParamsError(errors)
        return TaskSpec(
            task_id=new_task_id(), tool=params.tool, worker_type=tool.worker_type, priority=params.priority,
            input=tool_input, context=params.context, prompt=prompt, agent=params.agent, deadline=deadline,
            idempotency_key=params.idempotency_key, created_at=self._clock(),
        )

    def _tool(self, name: str) -> ToolSettings:
        tool = self._settings.tools.get(name)
        if tool is None:
            known = ", ".join(sorted(self._settings.tools))
            raise InvalidParamsError({"params.tool": f"unknown tool {name[:128]!r}; known tools: {known}"})
        return tool


def _v1_input(params: RunTaskParams, tool: ToolSettings) -> dict[str, Any]:
    """v1 carries tool options in `context`: take the keys the tool's schema names, plus the prompt."""
    known = registry.input_schema(tool).get("properties", {})
    options = {k: v for k, v in params.context.items() if k in known and k != "prompt"}
    return {"prompt": params.prompt, **options}
