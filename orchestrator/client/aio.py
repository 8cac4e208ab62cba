"""The asyncio client: the protocol's procedures driven over httpx.AsyncClient."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, Unpack

import httpx

from orchestrator.analytics import AnalyticsResult
from orchestrator.client import protocol as p
from orchestrator.client.protocol import Procedure, Reply, Request, Retries, RunTaskOptions, TaskEvent, TaskFilters
from orchestrator.errors import OrchestratorError, ProtocolError, RpcError
from orchestrator.models import (
    CancelSagaResult,
    CancelTaskResult,
    ControlResult,
    DeleteScheduleResult,
    InjectResult,
    KeysResult,
    ProvideInputResult,
    RunSagaResult,
    RunTaskResult,
    ScheduleState,
    StatusResult,
    TaskRecord,
)
from orchestrator.saga import SagaState, WorkflowDefinition

T = TypeVar("T")


class AsyncClient:
    """The orchestrator's API from Python, for asyncio. Each JSON-RPC error is raised as the server's own exception
    (orchestrator.errors); retryable failures are retried within `retries` (see README, "The Python client")."""

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None, timeout_s: float = 30.0,
                 retries: Retries | None = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        """Args: base_url: default ORCH_URL, else http://127.0.0.1:8000; api_key: default ORCH_API_KEY."""
        self.base_url, headers = p.connection(base_url, api_key, os.environ)
        self._retries, self._timeout_s = retries or Retries(), timeout_s
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------ tasks

    async def run_task(self, tool: str, prompt: str | None = None, **options: Unpack[RunTaskOptions]
                       ) -> RunTaskResult | TaskRecord:
        """Submit a task: `prompt` (API v1) or `input=` (v2). With `wait=`, the finished record if it finished in
        time. An idempotency key is made unless given, so a retried submit is never a second task."""
        return await self._do(p.run_task(tool, prompt, options, self._timeout_s))

    async def run_tasks(self, tasks: Sequence[Mapping[str, Any]]) -> list[RunTaskResult | TaskRecord | Exception]:
        """Submit several tasks in one JSON-RPC batch, each given as run_task's params (`tool`, `prompt` or
        `input`, …; all of one API version); each one's answer, or the exception that refused it."""
        return await self._run(p.send_batch(p.run_tasks(tasks, self._timeout_s), self._retries))

    async def get_task(self, task_id: str) -> TaskRecord:
        return await self._do(p.get_task(task_id))

    async def wait(self, task_id: str, timeout_s: float | None = None) -> TaskRecord:
        """The task's record once finished, or once it waits for input (status `input_required`: answer with
        `provide_input`, then wait again); TimeoutError after `timeout_s` (None: no limit)."""
        return await self._run(p.wait(task_id, timeout_s, self._retries, time.monotonic))

    async def rerun_task(self, task_id: str, input: Mapping[str, Any] | None = None, *, priority: int | None = None,
                   idempotency_key: str | None = None, agent: str | None = None) -> RunTaskResult:
        """Run a finished task again as a new task linked both ways."""
        return await self._do(p.rerun_task(task_id, input, priority, idempotency_key, agent))

    async def cancel_task(self, task_id: str) -> CancelTaskResult:
        return await self._do(p.cancel_task(task_id))

    async def provide_input(self, task_id: str, input: Any, *, key: str | None = None,
                      action: str = "accept") -> ProvideInputResult:
        """Answer a task waiting for input (`wait` returned it `input_required`; its `input_requests` say what, by
        key — name the key when several are pending); the task resumes once nothing is pending."""
        return await self._do(p.provide_input(task_id, input, key, action))

    async def list_tasks(self, **filters: Unpack[TaskFilters]) -> AsyncIterator[TaskRecord]:
        """Every task the filters match, newest first, fetching the next page as the iteration reaches it."""
        pager = p.Pager(filters)
        while not pager.done:
            for task in pager.take(await self._do(pager.call())):
                yield task

    async def events(self, task_id: str, after: int = 0) -> AsyncIterator[TaskEvent]:
        """The task's events after event `after` (0: from its start), live, until its final event; a dropped
        connection resumes where it broke (Last-Event-ID), so none is lost or repeated."""
        follower = p.EventFollower(task_id, after, self._retries)
        while not follower.done:
            request = follower.request()
            try:
                timeout = httpx.Timeout(self._timeout_s, read=p.STREAM_READ_TIMEOUT_S)
                async with self._http.stream(request.method, request.path, headers=dict(request.headers),
                                             timeout=timeout) as answer:
                    if answer.status_code != 200:
                        follower.refused(Reply(answer.status_code, answer.headers, await answer.aread()))
                    async for line in answer.aiter_lines():
                        if (event := follower.feed(line)) is not None:
                            yield event
                if not follower.done:
                    raise p.StreamEnded()
            except (OrchestratorError, RpcError, ProtocolError, httpx.TransportError, p.StreamEnded) as exc:
                await asyncio.sleep(follower.delay_s(exc))

    # ------------------------------------------------------------ sagas

    async def run_saga(self, workflow: str, input: Mapping[str, Any] | None = None, *, priority: int | None = None,
                       idempotency_key: str | None = None, agent: str | None = None) -> RunSagaResult:
        return await self._do(p.run_saga(workflow, input, priority, idempotency_key, agent))

    async def get_saga(self, saga_id: str) -> SagaState:
        return await self._do(p.get_saga(saga_id))

    async def cancel_saga(self, saga_id: str) -> CancelSagaResult:
        return await self._do(p.cancel_saga(saga_id))

    async def rerun_saga(self, saga_id: str, input: Mapping[str, Any] | None = None, *, priority: int | None = None,
                   idempotency_key: str | None = None, agent: str | None = None) -> RunSagaResult:
        """A new saga taking up a failed or cancelled one where it stopped."""
        return await self._do(p.rerun_saga(saga_id, input, priority, idempotency_key, agent))

    async def list_workflows(self) -> list[WorkflowDefinition]:
        return await self._do(p.list_workflows())

    # ------------------------------------------------------------ schedules

    async def create_schedule(self, tool: str, input: Mapping[str, Any], **options: Any) -> ScheduleState:
        """`cron` (+ `timezone`) or `interval_s`; `priority`, `name`, `overlap`, `catch_up`, `grace_s`,
        `max_catch_up` as the server documents them."""
        return await self._do(p.create_schedule(tool, input, options))

    async def get_schedule(self, schedule_id: str) -> ScheduleState:
        return await self._do(p.schedule_action("get_schedule", schedule_id))

    async def list_schedules(self, tenant: str | None = None) -> list[ScheduleState]:
        return await self._do(p.list_schedules(tenant))

    async def pause_schedule(self, schedule_id: str) -> ScheduleState:
        return await self._do(p.schedule_action("pause_schedule", schedule_id))

    async def resume_schedule(self, schedule_id: str) -> ScheduleState:
        return await self._do(p.schedule_action("resume_schedule", schedule_id))

    async def delete_schedule(self, schedule_id: str) -> DeleteScheduleResult:
        return await self._do(p.delete_schedule(schedule_id))

    # ------------------------------------------------------------ operations

    async def status(self) -> StatusResult:
        return await self._do(p.status())

    async def analytics(self, window_s: int | None = None) -> AnalyticsResult:
        return await self._do(p.analytics(window_s))

    async def control(self, action: str, **params: Any) -> ControlResult:
        """Admin: scale, drain, pause, resume, preempt, cancel, requeue, dead_letters, audit_log, sla."""
        return await self._do(p.control(action, params))

    async def inject(self, action: str, **params: Any) -> InjectResult:
        return await self._do(p.inject(action, params))

    async def keys(self, action: str, **params: Any) -> KeysResult:
        return await self._do(p.keys(action, params))

    async def discover(self) -> dict[str, Any]:
        """The OpenRPC document: every method with its params and result schemas."""
        return await self._do(p.discover())

    async def call(self, method: str, params: Mapping[str, Any] | None = None, *, idempotent: bool = False) -> Any:
        """Any method by name; its result as it came."""
        return await self._do(p.any_method(method, params or {}, idempotent))

    # ------------------------------------------------------------ the driver

    async def _do(self, call: p.Call[T]) -> T:
        return await self._run(p.send(call, self._retries))

    async def _run(self, procedure: Procedure[T]) -> T:
        """Carry out what the procedure asks (requests, sleeps) until it returns."""
        outcome: Reply | None = None
        failure: httpx.TransportError | None = None
        while True:
            try:
                effect = procedure.send(outcome) if failure is None else procedure.throw(failure)
            except StopIteration as done:
                return done.value  # pyright: ignore[reportUnknownVariableType, reportUnknownMemberType]
            outcome, failure = None, None
            if isinstance(effect, p.Sleep):
                await asyncio.sleep(effect.seconds)
                continue
            try:
                outcome = await self._exchange(effect)
            except httpx.TransportError as exc:
                failure = exc

    async def _exchange(self, request: Request) -> Reply:
        timeout = httpx.USE_CLIENT_DEFAULT if request.timeout_s is None else request.timeout_s
        answer = await self._http.request(request.method, request.path, content=request.body,
                                          headers=dict(request.headers), timeout=timeout)
        return Reply(answer.status_code, answer.headers, answer.content)
