"""Saga coordinator actor: drives every saga through `orchestrator.saga`, one asyncio task per saga (and one
per step of a parallel stage while it runs).

Sagas are admitted in priority order (`saga.Admission`): at most `sagas.max_running` driven at once, and at
most its tenant's quota `max_running_sagas` per tenant. Each step runs as an ordinary task of the saga's
tenant (held to its `max_active_tasks`), so it gets priorities, preemption, retries and recovery; the saga's
state is persisted after every transition, and a restarted coordinator resumes every unfinished saga from it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial

import ray

from actors.clients import ActorRouterClient
from orchestrator import auth, saga, tracing
from orchestrator.adapters.saga_store import SagaStore
from orchestrator.adapters.task_store import Submission, TaskStore
from orchestrator.adapters.waiter import CompletionWaiter
from orchestrator.errors import (
    ActorUnavailableError,
    InvalidParamsError,
    QueueFullError,
    QuotaExceededError,
    SagaFinishedError,
    StorageUnavailableError,
    TaskNotCancellableError,
    TaskNotFoundError,
)
from orchestrator.intake import build_task
from orchestrator.models import RunTaskParamsV2, TaskRecord
from orchestrator.service import TaskService
from orchestrator.settings import QuotaSettings, Settings
from orchestrator.submitter import Submitter
from orchestrator.tasks import new_task_id, shard_of

logger = logging.getLogger(__name__)

RESUBMIT_DELAY_S = 1.0  # after a retryable refusal (the tenant's quota, queue full, Redis away)
WAIT_SLICE_S = 1.0  # how often a wait for a task looks at the saga's cancel flag


class _Run:
    """A saga being driven: its latest state, changed by one transition at a time (steps of a parallel stage run
    concurrently) and saved after each — in order, so the saved state never goes back."""

    def __init__(self, state: saga.SagaState, save: Callable[[saga.SagaState], Awaitable[None]]) -> None:
        self.state = state
        self._save = save
        self._saving = asyncio.Lock()

    async def update(self, change: Callable[[saga.SagaState], saga.SagaState]) -> saga.SagaState:
        """Apply a transition and persist it before returning (a caller acts only on a saved state)."""
        self.state = change(self.state)
        async with self._saving:
            await self._save(self.state)  # the latest: it includes every transition applied so far
        return self.state


@ray.remote
class SagaCoordinatorActor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        tracing.configure(settings.tracing.env, "saga-coordinator")
        self._store = TaskStore.from_settings(settings.redis)
        redis = settings.redis
        self._sagas = SagaStore(self._store.redis, redis.prefix, redis.retention_s, redis.idempotency_ttl_s, redis.shards)
        self._waiter = CompletionWaiter(self._store.redis, self._store.keys.finished)
        self._tasks = TaskService(settings, self._store, self._waiter, ActorRouterClient(settings, self._store), time.time)
        self._submitter = Submitter(self._store, settings, time.time)
        self._clock = time.time
        self._admission = saga.Admission(settings.sagas.max_running, self._running_limit)
        self._admissible = asyncio.Event()  # a saga was queued or one stopped running
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._cancels: set[str] = set()
        self._started = asyncio.Event()
        self._admitter = asyncio.create_task(self._admit(), name="admission")
        self._resumption = asyncio.create_task(self._resume(), name="resume")

    async def ready(self) -> bool:
        await self._started.wait()
        return True

    async def pid(self) -> int:
        return os.getpid()

    async def start_saga(self, state: saga.SagaState, idempotency_key: str | None,
                         quota: QuotaSettings | None = None) -> tuple[str, bool]:
        """Persist a new saga (within its tenant's submit quota) and queue it by priority; (saga id, whether the
        key named an earlier one).

        Args:
            quota: the one the caller is held to; None (an admin, or auth off): the saga is exempt from its
                tenant's quotas, like the caller (`state.quota_exempt` says so too).
        """
        saga_id, duplicate = await self._sagas.create(state, idempotency_key, quota)
        if not duplicate:
            self._queue(state)
        return saga_id, duplicate

    async def cancel_saga(self, saga_id: str) -> None:
        """Ask a saga to stop: its running step is cancelled, then its completed steps compensated."""
        if not await self._sagas.request_cancel(saga_id):  # settled already (atomically: no stale request left)
            raise SagaFinishedError(saga_id, (await self._sagas.load(saga_id)).status.value)
        self._cancels.add(saga_id)
        if self._admission.withdraw(saga_id):  # still waiting for room: it settles now (compensating what it did)
            self._start(saga_id)

    def _queue(self, state: saga.SagaState) -> None:
        held = state.tenant if state.tenant is not None and not state.quota_exempt else None
        self._admission.put(state.saga_id, state.priority, held)
        self._admissible.set()

    def _running_limit(self, tenant: str) -> int | None:
        return self._settings.auth.quota_for(tenant).max_running_sagas

    def _step_quota(self, state: saga.SagaState) -> QuotaSettings | None:
        """What a saga's tasks are held to: its tenant's `max_active_tasks` (not the submit rate: `run_saga` was
        counted against it once); None for an exempt saga."""
        if state.tenant is None or state.quota_exempt:
            return None
        quota = self._settings.auth.quota_for(state.tenant)
        return quota.model_copy(update={"submits_per_s": None}) if quota.submits_per_s else quota

    def _new_task_id(self, state: saga.SagaState, command: saga.Submit, quota: QuotaSettings | None) -> str:
        """An id for the attempt's task, in the shard a submit with its key goes to. An intent saved by a version
        that learned ids from the submit (none saved) goes where that version sent it — its key's shard, the
        tenant's quota aside — so the key still finds the task if it was accepted."""
        step = next(s for s in state.steps if s.name == command.step)
        attempts = step.compensation_attempts if command.compensation else step.attempts
        earlier_intent = bool(attempts) and attempts[-1].key == command.key
        return new_task_id(self._submitter.shard_for(state.tenant, command.key, None if earlier_intent else quota))

    async def _resume(self) -> None:
        """Queue every unfinished saga (after a restart: from its persisted state)."""
        while True:
            try:
                for saga_id in await self._sagas.active():
                    self._queue(await self._sagas.load(saga_id))
                break
            except StorageUnavailableError:
                await asyncio.sleep(RESUBMIT_DELAY_S)  # Redis away: try again
        self._started.set()

    async def _admit(self) -> None:
        while True:
            await self._admissible.wait()
            self._admissible.clear()
            for saga_id in self._admission.admit():
                self._start(saga_id)

    def _start(self, saga_id: str) -> None:
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
            self._admission.finished(saga_id)
            self._admissible.set()

    async def _drive(self, saga_id: str) -> None:
        """Run the saga's commands — every step of a parallel stage at once — until it is finished."""
        run = _Run(await self._sagas.load(saga_id), self._sagas.save)
        with tracing.span(f"saga {run.state.workflow}", parent=run.state.traceparent) as span:
            if span.is_recording():
                span.set_attributes({"orchestrator.saga.id": saga_id, "orchestrator.saga.workflow": run.state.workflow})
            await self._drive_commands(run)
            if span.is_recording():
                span.set_attribute("orchestrator.saga.status", run.state.status.value)

    async def _drive_commands(self, run: _Run) -> None:
        saga_id = run.state.saga_id
        in_flight: dict[tuple[str, bool], asyncio.Task[None]] = {}
        try:
            while True:
                if not run.state.cancel_requested and (saga_id in self._cancels
                                                       or await self._sagas.cancel_requested(saga_id)):
                    await run.update(lambda state: saga.on_cancel_requested(state, self._clock()))
                if run.state.cancel_requested:  # also when only the durable request survived a restart
                    self._cancels.add(saga_id)
                commands = {saga.command_key(c): c for c in saga.next_commands(run.state, self._clock())}
                if not commands:
                    return
                for key, task in in_flight.items():
                    if key not in commands:  # a backoff of a step the saga no longer runs
                        task.cancel()
                for key, command in commands.items():
                    if key not in in_flight:
                        in_flight[key] = asyncio.create_task(self._apply(run, command))
                await asyncio.wait(in_flight.values(), return_when=asyncio.FIRST_COMPLETED)
                for key in [key for key, task in in_flight.items() if task.done()]:
                    task = in_flight.pop(key)
                    if not task.cancelled():
                        task.result()  # a failure ends the driver (restarted from the saved state)
        finally:
            for task in in_flight.values():
                task.cancel()
            await asyncio.gather(*in_flight.values(), return_exceptions=True)

    def _unwanted(self, run: _Run) -> bool:
        """Whether the saga no longer wants its running steps: it was cancelled, or a step beside them failed."""
        return run.state.saga_id in self._cancels or run.state.status is not saga.SagaStatus.RUNNING

    async def _apply(self, run: _Run, command: saga.Command) -> None:
        """Do one command; a step's submit and wait (its task's spans beneath) is a span of the saga's."""
        if not isinstance(command, saga.Submit | saga.Await):
            return await self._do(run, command)
        kind = "compensation" if command.compensation else "step"
        with tracing.span(f"saga {kind} {command.step}") as span:
            if span.is_recording():
                span.set_attributes({"orchestrator.saga.id": run.state.saga_id, "orchestrator.saga.step": command.step,
                                     "orchestrator.saga.compensation": command.compensation})
            await self._do(run, command)
            if span.is_recording():
                attempt = saga.attempt_of(run.state, command.step, command.compensation)
                span.set_attribute("orchestrator.saga.attempt_status", attempt.status)

    async def _do(self, run: _Run, command: saga.Command) -> None:
        now = self._clock()
        if isinstance(command, saga.Submit):
            quota = self._step_quota(run.state)
            task_id = command.task_id or self._new_task_id(run.state, command, quota)
            # The intent, with the id, saved: from here on the task is found by its id.
            await run.update(lambda state: saga.on_submitting(state, command, task_id, now))
            await self._submit(run, command, quota)
        elif isinstance(command, saga.Await):
            await self._finished(run, command.step, command.compensation, command.task_id)
        elif isinstance(command, saga.Cancel):
            try:
                await self._tasks.cancel_task(command.task_id, auth.system(run.state.tenant))
            except TaskNotCancellableError:
                pass  # it finished as the cancel came: its outcome stands (a success is a step to compensate)
            except TaskNotFoundError:
                pass  # its record is gone: `_finished` records it as lost
            except ActorUnavailableError:
                pass  # its worker is unreachable: the cancel flag stands, the task stops at its next start
            await self._finished(run, command.step, False, command.task_id, interruptible=False)
        elif isinstance(command, saga.Fail):
            await self._failed_to_render(run, command)
        elif isinstance(command, saga.Sleep):  # a backoff; a cancel cuts short only a step's (a compensation's stands)
            await self._sleep_until(run, command.until, interruptible=not command.compensation)
        else:
            await run.update(lambda state: saga.on_settled(state, command.status, now))
            logger.info("saga settled", extra={"saga_id": run.state.saga_id, "status": command.status.value})

    async def _submit(self, run: _Run, command: saga.Submit, quota: QuotaSettings | None) -> None:
        """Submit the task of the intent just saved, under its saved id and key (a resubmission finds the task if
        it was accepted), then wait for it. A refusal that passes (the tenant's quota, a full store) holds it:
        tried again until accepted, or withdrawn if the saga no longer wants the step (nothing was written)."""
        current = saga.attempt_of(run.state, command.step, command.compensation)
        assert current.task_id is not None
        deadline = None
        if command.timeout_s is not None:
            deadline = datetime.fromtimestamp(self._clock() + command.timeout_s, tz=UTC)
        try:
            params = RunTaskParamsV2(tool=command.tool, input=command.input, priority=run.state.priority,
                                     idempotency_key=command.key, agent=run.state.agent, deadline=deadline,
                                     context={} if command.approval is None else {"approval": command.approval})
            # The orchestrator itself submits: any priority the saga was allowed, and operator-only actions (an
            # artifact's restore as a compensation).
            task, children = build_task(params, self._settings, self._clock(), run.state.tenant,
                                        shard_of(current.task_id, self._store.shards) or 0, operator=True)
        except InvalidParamsError as exc:  # the rendered input does not fit the tool: the step fails
            fail = saga.Fail(command.step, command.compensation, f"invalid input for {command.tool}: {exc}")
            return await self._failed_to_render(run, fail)
        submission = Submission(replace(task, task_id=current.task_id, saga=run.state.saga_id), children, quota)
        while True:
            try:
                task_id, _ = await self._submitter.submit(submission)
                break
            except (QuotaExceededError, QueueFullError) as exc:  # refused: nothing was written
                if not command.compensation and self._unwanted(run):
                    cancelled = run.state.saga_id in self._cancels
                    await run.update(partial(saga.on_withdrawn, step_name=command.step, cancelled=cancelled,
                                             now=self._clock()))
                    return
                if saga.attempt_of(run.state, command.step, command.compensation).status != saga.AttemptStatus.HELD:
                    await run.update(partial(saga.on_held, step_name=command.step, compensation=command.compensation,
                                             reason=str(exc), now=self._clock()))
            except StorageUnavailableError:
                pass  # maybe accepted: the same id finds it
            await self._sleep_until(run, self._clock() + RESUBMIT_DELAY_S, interruptible=not command.compensation)
        await run.update(lambda state: saga.on_submitted(state, command.step, command.compensation, task_id,
                                                         self._clock()))
        await self._finished(run, command.step, command.compensation, task_id)

    async def _finished(self, run: _Run, step: str, compensation: bool, task_id: str, *,
                        interruptible: bool | None = None) -> None:
        """Wait for the task and record how it ended; returns early (unchanged) when the saga no longer wants the
        step (`interruptible`, by default a step's wait: a compensation's never is)."""
        stop = (lambda: self._unwanted(run)) if (not compensation if interruptible is None else interruptible) else None

        async def shown(record: TaskRecord) -> None:  # the saga shows what its step waits for, while it waits
            requests = {k: r.model_dump(by_alias=True) for k, r in record.input_requests.items()}
            if requests != _step_of(run.state, step).input_requests:
                await run.update(lambda state: saga.on_input_required(state, step, requests, self._clock()))

        try:
            record = await self._wait(task_id, stop, shown)
        except TaskNotFoundError:
            logger.warning("saga task lost", extra={"saga_id": run.state.saga_id, "step": step, "task_id": task_id})
            await run.update(lambda state: saga.on_task_lost(state, step, compensation, self._clock()))
            if compensation:
                await self._sagas.dead_letter(run.state.saga_id, step, f"task {task_id} is gone", self._clock())
            return
        if record is None:
            return
        error = None if record.error is None else record.error.message
        state = await run.update(lambda state: saga.on_task_finished(
            state, step, compensation, record.status.value, record.result, error, self._clock()))
        undone = next(s for s in state.steps if s.name == step)
        if compensation and undone.compensation is saga.CompensationStatus.FAILED:
            await self._sagas.dead_letter(state.saga_id, step, error or "compensation failed", self._clock())

    async def _failed_to_render(self, run: _Run, command: saga.Fail) -> None:
        await run.update(lambda state: saga.on_failed_to_render(state, command, self._clock()))
        if command.compensation:
            await self._sagas.dead_letter(run.state.saga_id, command.step, command.error, self._clock())

    async def _wait(self, task_id: str, stop: Callable[[], bool] | None,
                    seen: Callable[[TaskRecord], Awaitable[None]]) -> TaskRecord | None:
        """The task's record once it finished (each one read on the way handed to `seen`: a task waiting for input
        holds nothing here but this wait); None as soon as `stop` says so."""
        record: TaskRecord | None = None

        async def finished() -> bool:
            nonlocal record
            record = await self._tasks.get_task(task_id, auth.system(None))
            if not record.status.finished:
                await seen(record)
            return record.status.finished

        with self._waiter.watch(task_id) as watch:
            while not await watch.wait(WAIT_SLICE_S, finished, check_first=True):
                if stop is not None and stop():
                    return None
        return record

    async def _sleep_until(self, run: _Run, until: float, *, interruptible: bool) -> None:
        """Until `until`, or (`interruptible`) until the saga no longer wants its running steps."""
        while self._clock() < until and not (interruptible and self._unwanted(run)):
            await asyncio.sleep(min(WAIT_SLICE_S, until - self._clock()))  # a backoff, not synchronisation


def _step_of(state: saga.SagaState, name: str) -> saga.StepState:
    return next(s for s in state.steps if s.name == name)
