"""Saga coordinator actor: drives every saga through `orchestrator.saga`, one asyncio task per saga.

Sagas are admitted from a priority mailbox (at most `sagas.max_running` driven at once, highest
priority first). Each step runs as an ordinary task, so it gets priorities, preemption, retries and
recovery; the saga's state is persisted after every transition, and a restarted coordinator
resumes every unfinished saga from it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import ray

from actors.clients import ActorRouterClient
from orchestrator import auth, saga
from orchestrator.adapters.saga_store import SagaStore
from orchestrator.adapters.task_store import TaskStore
from orchestrator.adapters.waiter import CompletionWaiter
from orchestrator.errors import (
    InvalidParamsError,
    QueueFullError,
    SagaFinishedError,
    StorageUnavailableError,
)
from orchestrator.models import RunTaskParamsV2, TaskRecord
from orchestrator.service import TaskService
from orchestrator.settings import QuotaSettings, Settings

logger = logging.getLogger(__name__)

RESUBMIT_DELAY_S = 1.0  # after a retryable refusal (queue full, Redis away)
WAIT_SLICE_S = 1.0  # how often a wait for a task looks at the saga's cancel flag


@ray.remote
class SagaCoordinatorActor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._store = TaskStore.from_settings(settings.redis)
        redis = settings.redis
        self._sagas = SagaStore(self._store.redis, redis.prefix, redis.retention_s, redis.idempotency_ttl_s, redis.shards)
        self._waiter = CompletionWaiter(self._store.redis, self._store.keys.finished)
        self._tasks = TaskService(settings, self._store, self._waiter, ActorRouterClient(settings, self._store), time.time)
        self._clock = time.time
        self._mailbox: asyncio.PriorityQueue[tuple[int, int, str]] = asyncio.PriorityQueue()
        self._seq = itertools.count()
        self._running = asyncio.Semaphore(settings.sagas.max_running)
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._cancels: set[str] = set()
        self._started = asyncio.Event()
        self._admission = asyncio.create_task(self._admit(), name="admission")
        self._resumption = asyncio.create_task(self._resume(), name="resume")

    async def ready(self) -> bool:
        await self._started.wait()
        return True

    async def pid(self) -> int:
        return os.getpid()

    async def run_saga(self, workflow: str, saga_input: dict[str, Any], priority: int,
                       idempotency_key: str | None, agent: str | None, tenant: str | None = None,
                       quota: QuotaSettings | None = None) -> tuple[str, bool]:
        """Persist a new saga of `tenant` (within its submit quota) and queue it by priority; (saga id, whether
        the key named an earlier one)."""
        definition = self._settings.all_workflows().get(workflow)
        if definition is None:
            known = ", ".join(sorted(self._settings.all_workflows()))
            raise InvalidParamsError({"params.workflow": f"unknown workflow {workflow[:128]!r}; known: {known}"})
        state = saga.new_saga(uuid.uuid4().hex, definition, saga_input, priority, self._clock(), agent, tenant)
        saga_id, duplicate = await self._sagas.create(state, idempotency_key, quota)
        if not duplicate:
            await self._mailbox.put((-priority, next(self._seq), saga_id))
        return saga_id, duplicate

    async def cancel_saga(self, saga_id: str) -> None:
        """Ask a saga to stop: its running step is cancelled, then its completed steps compensated."""
        state = await self._sagas.load(saga_id)
        if state.status.finished:
            raise SagaFinishedError(saga_id, state.status.value)
        await self._sagas.request_cancel(saga_id)
        self._cancels.add(saga_id)

    async def _resume(self) -> None:
        """Queue every unfinished saga (after a restart: from its persisted state)."""
        while True:
            try:
                for saga_id in await self._sagas.active():
                    state = await self._sagas.load(saga_id)
                    await self._mailbox.put((-state.priority, next(self._seq), saga_id))
                break
            except StorageUnavailableError:
                await asyncio.sleep(RESUBMIT_DELAY_S)  # Redis away: try again
        self._started.set()

    async def _admit(self) -> None:
        while True:
            *_, saga_id = await self._mailbox.get()
            if saga_id in self._drivers:
                continue
            await self._running.acquire()
            self._drivers[saga_id] = asyncio.create_task(self._drive_safely(saga_id), name=f"saga-{saga_id}")

    async def _drive_safely(self, saga_id: str) -> None:
        try:
            while True:
                try:
                    await self._drive(saga_id)
                    return
                except StorageUnavailableError:
                    logger.warning("saga paused: task store unavailable", extra={"saga_id": saga_id})
                    await asyncio.sleep(RESUBMIT_DELAY_S)
                except Exception:
                    logger.exception("saga driver failed; restarting it", extra={"saga_id": saga_id})
                    await asyncio.sleep(RESUBMIT_DELAY_S)
        finally:
            self._drivers.pop(saga_id, None)
            self._cancels.discard(saga_id)
            self._running.release()

    async def _drive(self, saga_id: str) -> None:
        state = await self._sagas.load(saga_id)
        while True:
            if not state.cancel_requested and (saga_id in self._cancels or await self._sagas.cancel_requested(saga_id)):
                state = saga.on_cancel_requested(state, self._clock())
                await self._sagas.save(state)
            command = saga.next_command(state, self._clock())
            if command is None:
                return
            state = await self._apply(state, command)

    async def _apply(self, state: saga.SagaState, command: saga.Command) -> saga.SagaState:
        now = self._clock()
        if isinstance(command, saga.Submit):
            state = saga.on_submitting(state, command, now)
            await self._sagas.save(state)
            try:
                task_id = await self._submit(state, command)
            except InvalidParamsError as exc:  # the rendered input does not fit the tool: the step fails
                fail = saga.Fail(command.step, command.compensation, f"invalid input for {command.tool}: {exc}")
                return await self._failed_to_render(state, fail)
            state = saga.on_submitted(state, command.step, command.compensation, task_id, self._clock())
            await self._sagas.save(state)
            return await self._finished(state, command.step, command.compensation, task_id, interruptible=True)
        if isinstance(command, saga.Cancel):
            await self._tasks.cancel_task(command.task_id, auth.system(state.tenant))
            return await self._finished(state, command.step, False, command.task_id, interruptible=False)
        if isinstance(command, saga.Fail):
            return await self._failed_to_render(state, command)
        if isinstance(command, saga.Sleep):
            await self._sleep_until(state.saga_id, command.until)
            return state
        state = saga.on_settled(state, command.status, now)
        await self._sagas.save(state)
        logger.info("saga settled", extra={"saga_id": state.saga_id, "status": command.status.value})
        return state

    async def _submit(self, state: saga.SagaState, command: saga.Submit) -> str:
        """Submit the step's task by its idempotency key: a resubmission after a crash finds the same task."""
        deadline = None
        if command.timeout_s is not None:
            deadline = datetime.fromtimestamp(self._clock() + command.timeout_s, tz=UTC)
        params = RunTaskParamsV2(tool=command.tool, input=command.input, priority=state.priority,
                                 idempotency_key=command.key, agent=state.agent, deadline=deadline)
        while True:
            try:
                return (await self._tasks.run_task(params, auth.system(state.tenant))).task_id
            except (QueueFullError, StorageUnavailableError):
                await asyncio.sleep(RESUBMIT_DELAY_S)  # retryable refusals: the step is not lost, only later

    async def _finished(self, state: saga.SagaState, step: str, compensation: bool, task_id: str, *,
                        interruptible: bool) -> saga.SagaState:
        """Wait for the task and record how it ended; returns early (unchanged) when the saga is cancelled."""
        record = await self._wait(state.saga_id, task_id, interruptible)
        if record is None:
            return state
        error = None if record.error is None else record.error.message
        state = saga.on_task_finished(state, step, compensation, record.status.value, record.result, error,
                                      self._clock())
        await self._sagas.save(state)
        undone = next(s for s in state.steps if s.name == step)
        if compensation and undone.compensation is saga.CompensationStatus.FAILED:
            await self._sagas.dead_letter(state.saga_id, step, error or "compensation failed", self._clock())
        return state

    async def _failed_to_render(self, state: saga.SagaState, command: saga.Fail) -> saga.SagaState:
        state = saga.on_failed_to_render(state, command, self._clock())
        await self._sagas.save(state)
        if command.compensation:
            await self._sagas.dead_letter(state.saga_id, command.step, command.error, self._clock())
        return state

    async def _wait(self, saga_id: str, task_id: str, interruptible: bool) -> TaskRecord | None:
        record: TaskRecord | None = None

        async def finished() -> bool:
            nonlocal record
            record = await self._tasks.get_task(task_id, auth.system(None))
            return record.status.finished

        with self._waiter.watch(task_id) as watch:
            while not await watch.wait(WAIT_SLICE_S, finished, check_first=True):
                if interruptible and saga_id in self._cancels:
                    return None
        return record

    async def _sleep_until(self, saga_id: str, until: float) -> None:
        while self._clock() < until and saga_id not in self._cancels:
            await asyncio.sleep(min(WAIT_SLICE_S, until - self._clock()))  # a backoff, not synchronisation
