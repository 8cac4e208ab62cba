"""The task API's behaviour, behind both protocol faces: submit, look up, cancel, report status."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Protocol

from pydantic import ValidationError

from orchestrator import inputs
from orchestrator.adapters.stats_store import StatsStore, finished_task, stats_arg
from orchestrator.adapters.task_store import Submission, TaskStore, accepted_status
from orchestrator.adapters.waiter import CompletionWaiter, Watch
from orchestrator.analytics import AnalyticsParams, AnalyticsResult, merge, series, summarize
from orchestrator.auth import Principal, max_priority, quota_of
from orchestrator.errors import InputNotExpectedError, InvalidParamsError, TaskNotFoundError
from orchestrator.intake import build_task
from orchestrator.models import (
    AuditEntry,
    CancelTaskResult,
    ControlParams,
    ControlResult,
    DeadLetter,
    InjectParams,
    InjectResult,
    ProvideInputParams,
    ProvideInputResult,
    RerunTaskParams,
    RouterOverview,
    RunTaskParams,
    RunTaskParamsV2,
    RunTaskResult,
    StatusResult,
    TaskRecord,
    TaskStatus,
)
from orchestrator.settings import Settings
from orchestrator.sla import SlaTargets
from orchestrator.submitter import Submitter
from orchestrator.tools import registry


class RouterClient(Protocol):
    """What the API needs from the router; the deployment implements it with actor calls."""

    async def overview(self) -> RouterOverview: ...

    async def interrupt(self, worker: str, task_id: str) -> None:
        """Cancel a task running on `worker` (reached directly: cancelling must not depend on the router)."""
        ...

    async def scale(self, worker_type: str, workers: int) -> None: ...

    async def drain(self, worker: str) -> bool: ...

    async def pause(self, worker_type: str, paused: bool) -> None: ...

    async def preempt_task(self, task_id: str) -> bool: ...


def _required(value: Any, field: str, action: str) -> Any:
    if value is None:
        raise InvalidParamsError({f"params.{field}": f"required for action {action!r}"})
    return value


class TaskService:
    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        waiter: CompletionWaiter,
        router: RouterClient,
        clock: Callable[[], float],
        stats: StatsStore | None = None,
        circuits: Callable[[], Awaitable[dict[str, str]]] | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._waiter = waiter
        self._router = router
        self._clock = clock
        self._stats = stats
        self._circuits = circuits  # the providers' circuit breakers, as the ingress reads them
        self._submitter = Submitter(store, settings, clock)

    async def run_task(self, params: RunTaskParams | RunTaskParamsV2, who: Principal,
                       rerun_of: str | None = None) -> RunTaskResult | TaskRecord:
        """Accept a task of the caller's tenant (durably, before answering; within the tenant's quota unless the
        caller is an admin); with `wait`, answer with the record once finished."""
        quota = quota_of(who, self._settings.auth)
        shard = self._submitter.shard_for(who.tenant, params.idempotency_key, quota)
        limit = max_priority(who, quota, self._settings.router.preempt_threshold)
        task, children = build_task(params, self._settings, self._clock(), who.tenant, shard, limit,
                                    operator=who.admin or who.internal)
        if rerun_of is not None:
            task = replace(task, rerun_of=rerun_of)
        limits = self._settings.limits
        submit = self._submitter.submit(Submission(task, children, quota))
        if not params.wait:
            task_id, duplicate = await submit
            status = accepted_status(task) if not duplicate else (await self._store.get(task_id)).status
            return RunTaskResult(task_id=task_id, status=status, duplicate=duplicate)
        timeout_s = min(params.wait, limits.max_wait_s)
        with self._waiter.watch(task.task_id) as watch:  # watching before submit: no finish slips by
            task_id, duplicate = await submit
            if not duplicate:
                record = await self._wait(watch, timeout_s, check_first=False)
        if duplicate:  # an earlier task with this idempotency key: it may have finished long ago
            with self._waiter.watch(task_id) as watch:
                record = await self._wait(watch, timeout_s, check_first=True)
        if record is not None and record.status.settled:
            return record
        status = record.status if record is not None else accepted_status(task)
        return RunTaskResult(task_id=task_id, status=status, duplicate=duplicate)

    async def keyed_task(self, idempotency_key: str, who: Principal) -> str | None:
        """The caller's task accepted with this idempotency key, if one was (where run_task would find it)."""
        shard = self._submitter.shard_for(who.tenant, idempotency_key, quota_of(who, self._settings.auth))
        return await self._store.keyed(shard, who.tenant, idempotency_key)

    async def rerun_task(self, params: RerunTaskParams, who: Principal) -> RunTaskResult:
        """Run a finished task the caller may see again, as a new task of the caller's, linked both ways. Its
        fanout children are not run again (the new task's own result is what counts)."""
        original = await self.get_task(params.task_id, who)
        if not original.status.finished:
            raise InvalidParamsError({"params.task_id": f"task {original.task_id} is {original.status.value}: only "
                                                        "a finished task can be re-run"})
        again = RunTaskParamsV2(
            tool=original.tool, input=original.input if params.input is None else params.input,
            priority=original.priority if params.priority is None else params.priority, context=original.context,
            idempotency_key=params.idempotency_key, agent=params.agent or original.agent)
        accepted = await self.run_task(again, who, rerun_of=original.task_id)
        assert isinstance(accepted, RunTaskResult)
        await self._store.link_rerun(original.task_id, accepted.task_id, self._clock())  # a retry links again
        return accepted

    async def get_task(self, task_id: str, who: Principal) -> TaskRecord:
        """The task's record, if the caller may see it: another tenant's task is "not found", like a missing one."""
        record = await self._store.get(task_id)
        if not who.sees(record.tenant):
            raise TaskNotFoundError(task_id)
        if record.trace_id is not None:
            record.trace_url = self._settings.tracing.url_of(record.trace_id)
        return record

    async def provide_input(self, params: ProvideInputParams, who: Principal) -> ProvideInputResult:
        """Answer a request for input of a task the caller may see: checked against the request's schema, stored,
        and the task queued again once nothing it asked for is pending. The same answer again changes nothing."""
        record = await self.get_task(params.task_id, who)
        pending = {key: request.model_dump(by_alias=True) for key, request in record.input_requests.items()}
        given = inputs.as_answer(params.input, params.action)
        key = inputs.pending_key(pending, params.key)
        if key is None and not pending:  # an answer delivered again names its key only if it had to
            key = next((k for k, answer in record.inputs.items() if answer == given), None)
        if key is None:
            if pending:
                raise InvalidParamsError({"params.key": "the task waits for several inputs; name one of: "
                                                        + ", ".join(sorted(pending))})
            raise InputNotExpectedError(record.task_id, record.status.value, "", [])
        if key not in pending:  # answered already (the same answer again is no error) or never asked
            if record.inputs.get(key) == given:
                return ProvideInputResult(task_id=record.task_id, key=key, status=record.status, duplicate=True)
            raise InputNotExpectedError(record.task_id, record.status.value, key, sorted(pending))
        answer = inputs.checked_answer(pending[key], params.input, params.action, "params.input")
        outcome, status, left = await self._store.provide_input(record.task_id, key, answer, self._clock())
        if outcome == "not_expected":  # answered or cancelled meanwhile
            raise InputNotExpectedError(record.task_id, status.value, key, left)
        return ProvideInputResult(task_id=record.task_id, key=key, status=status, duplicate=outcome == "duplicate")

    async def cancel_task(self, task_id: str, who: Principal) -> CancelTaskResult:
        """Cancel a queued or scheduled task at once; ask the router to interrupt a running one."""
        record = await self.get_task(task_id, who)
        now = self._clock()
        ending = record.model_copy(update={"status": TaskStatus.CANCELLED, "finished_at": now})
        status = await self._store.cancel(task_id, now, stats_arg([finished_task(ending)], now))
        if status is TaskStatus.RUNNING:
            record = await self._store.get(task_id)  # it may have started since: find its worker now
            if record.worker:  # if the worker is gone, the flag set above stops the task at its next start
                await self._router.interrupt(record.worker, task_id)
            status = (await self._store.get(task_id)).status
        return CancelTaskResult(task_id=task_id, status=status)

    async def control(self, params: ControlParams, who: Principal) -> ControlResult:
        """Operator actions; each one that changes something is recorded in the audit log with `who`."""
        action = params.action
        if action == "dead_letters":
            letters = [DeadLetter(**d) for d in await self._store.dead_letters(params.count)]
            return ControlResult(action=action, dead_letters=letters)
        if action == "audit_log":
            entries = [AuditEntry(**e) for e in await self._store.audit_log(params.count)]
            return ControlResult(action=action, audit_log=entries)
        result = await self._change(params, who)
        details = params.model_dump(exclude_none=True, exclude={"action", "count"})
        await self._store.audit(who.key_id, action, {**details, "done": result.done}, self._clock())
        return result

    async def inject(self, params: InjectParams, who: Principal) -> InjectResult:
        """Add a task by hand (for the caller's tenant, or the one named), or correct one that has not started;
        audited with `who`."""
        if params.action == "add":
            task = _required(params.task, "task", "add")
            owner = replace(who, tenant=params.tenant) if params.tenant else who
            accepted = await self.run_task(task.model_copy(update={"wait": None}), owner)
            assert isinstance(accepted, RunTaskResult)
            details = {"task_id": accepted.task_id, "tool": task.tool, "priority": task.priority,
                       "tenant": owner.tenant}
            await self._store.audit(who.key_id, "inject.add", details, self._clock())
            return InjectResult(action="add", task_id=accepted.task_id, status=accepted.status.value)
        task_id = _required(params.task_id, "task_id", "correct")
        if params.priority is None and params.input is None:
            raise InvalidParamsError({"params": "give priority and/or input to correct"})
        record = await self.get_task(task_id, who)
        if params.input is not None:
            errors = registry.input_errors(self._settings.tools[record.tool], params.input, "params.input")
            if errors:
                raise InvalidParamsError(errors)
        outcome = await self._store.correct(task_id, self._clock(), who.key_id, params.priority, params.input)
        if outcome != "corrected":
            raise InvalidParamsError({"params.task_id": f"the task is {outcome}: only a task that has not "
                                                        "started can be corrected"})
        requeued = True  # the queue is in Redis: the correction re-ordered it
        details = {"task_id": task_id, "priority": params.priority, "input": params.input}
        await self._store.audit(who.key_id, "inject.correct", {k: v for k, v in details.items() if v is not None},
                                self._clock())
        return InjectResult(action="correct", task_id=task_id, status=record.status.value, requeued=requeued)

    async def _sla_targets(self, worker_type: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Merge `changes` into the pool's SLA targets (set through control, else settings, else defaults)."""
        current = (await self._store.sla_targets()).get(worker_type)
        if current is None:
            current = self._settings.sla.pools.get(worker_type, SlaTargets()).model_dump()
        try:
            targets = SlaTargets.model_validate({**current, **changes})
        except ValidationError as exc:
            raise InvalidParamsError({".".join(["params.targets", *(str(p) for p in e["loc"])]): e["msg"]
                                      for e in exc.errors()}) from None
        if targets.max_workers < targets.min_workers:
            raise InvalidParamsError({"params.targets.max_workers": "less than min_workers"})
        await self._store.save_sla_targets(worker_type, targets.model_dump())
        return targets.model_dump()

    async def _change(self, params: ControlParams, who: Principal) -> ControlResult:
        action = params.action
        if action in ("scale", "pause", "resume", "sla"):
            worker_type = _required(params.worker_type, "worker_type", action)
            if worker_type not in self._settings.pools:
                known = ", ".join(sorted(self._settings.pools))
                raise InvalidParamsError({"params.worker_type": f"no pool {worker_type!r}; pools: {known}"})
            if action == "sla":
                targets = await self._sla_targets(worker_type, _required(params.targets, "targets", action))
                return ControlResult(action=action, sla_targets=targets)
            if action == "scale":
                await self._router.scale(worker_type, _required(params.workers, "workers", action))
            else:
                await self._router.pause(worker_type, action == "pause")
            return ControlResult(action=action)
        if action == "drain":
            done = await self._router.drain(_required(params.worker, "worker", action))
            if not done:
                raise InvalidParamsError({"params.worker": f"no worker {params.worker!r}"})
            return ControlResult(action=action)
        task_id = _required(params.task_id, "task_id", action)
        if action == "requeue":
            if not await self._store.requeue(task_id, self._clock()):
                raise InvalidParamsError({"params.task_id": "not a dead letter"})
            return ControlResult(action=action, requeued=task_id)
        if action == "preempt":
            return ControlResult(action=action, done=await self._router.preempt_task(task_id))
        cancelled = await self.cancel_task(task_id, who)
        return ControlResult(action=action, status=cancelled.status.value)

    async def status(self, who: Principal) -> StatusResult:
        """Pools, workers, queues and tools (system-wide figures), and the running tasks the caller may see."""
        overview = await self._router.overview()
        overview.running = [task for task in overview.running if who.sees(task.tenant)]
        counts = await self._store.counts()
        return StatusResult(**overview.model_dump(), tools=registry.describe(self._settings.tools), **counts,
                            sla=await self._store.sla_state(),
                            circuits={} if self._circuits is None else await self._circuits())

    async def analytics(self, params: AnalyticsParams, who: Principal) -> AnalyticsResult:
        """Latency percentiles, throughput, outcomes and tokens over the window, per worker type, tool and
        tenant — of every task for an admin, else of the caller's tenant's; and each pool's utilisation now."""
        if self._stats is None:
            raise RuntimeError("analytics needs a stats store")
        now = self._clock()
        minutes, since = await self._stats.minutes(now, params.window_s, None if who.admin else who.tenant)
        result = summarize(merge(minutes), params.window_s, since)
        if params.series:
            result.series = series(minutes, since)
        overview = await self._router.overview()
        slots: dict[str, list[int]] = {}
        for worker in overview.workers:
            busy, total = slots.setdefault(worker.worker_type, [0, 0])
            slots[worker.worker_type] = [busy + worker.running, total + worker.slots]
        result.utilisation = {pool: round(busy / total, 3) for pool, (busy, total) in slots.items() if total}
        return result

    async def _wait(self, watch: Watch, timeout_s: float, *, check_first: bool) -> TaskRecord | None:
        """The record once finished (or waiting for input), or the latest one read when `timeout_s` ran out (None if never read)."""
        record: TaskRecord | None = None

        async def finished() -> bool:
            nonlocal record
            record = await self._store.get(watch.task_id)
            return record.status.settled

        await watch.wait(timeout_s, finished, check_first=check_first)
        return record
