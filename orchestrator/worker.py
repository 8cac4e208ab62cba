"""A worker's loop: take queued tasks for its free slots, run their tools, and settle what they did — many
tasks per Redis call.

One cycle is one round trip: the progress, checkpoints, preemptions and final states gathered since the last
cycle (per shard, one `settle` script) and, for the free slots, one `take`. Nothing waits in the worker
beyond its slots: the queue stays in Redis, in priority order, for whichever worker has room. Redis going
away loses nothing: what is to be settled waits in memory and the running tools go on; the cycle is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator import inputs, tracing
from orchestrator.adapters.stats_store import stats_arg
from orchestrator.adapters.task_store import Held, Settlement, Taken, TakePolicy, TakeRequest, TakeResult, TaskStore
from orchestrator.analytics import FinishedTask
from orchestrator.errors import OrchestratorError, ToolError
from orchestrator.models import TaskStatus
from orchestrator.tools.base import Tool, ToolCall

logger = logging.getLogger(__name__)

POLL_S = 1.0  # an idle worker looks at the queue this often even without a wake-up (one may be lost)
INPUT_SIBLING_TURNS = 3  # loop turns an asking attempt leaves its sibling coroutines to ask too
MAX_PENDING_PROGRESS = 1000  # per attempt, while Redis is away: the oldest reports are dropped beyond it


class Superseded(Exception):
    """This attempt is no longer the task's current one (a newer attempt took over): stop."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_attempts: int
    max_checkpoint_bytes: int


@dataclass
class Attempt:
    taken: Taken
    started_at: float
    job: asyncio.Task[None] | None = None
    interrupt: TaskStatus | None = None  # cancel or preemption asked for
    pending: Settlement | None = None
    progress: list[Any] = field(default_factory=list)
    saved: list[asyncio.Future[None]] = field(default_factory=list)  # checkpoints waiting to be durable
    asked: dict[str, Any] = field(default_factory=dict)  # requests for input not answered yet, by key
    ending: asyncio.Task[None] | None = None  # ends the attempt for input (held here: the loop keeps tasks weakly)


Batched = tuple[Attempt, Settlement, list["asyncio.Future[None]"]]  # an attempt, its report, its checkpoints' futures


class AttemptContext:
    """A tool's reports: progress is sent with the worker's next cycle; a checkpoint returns once durable; a
    question (`ask`) is answered at once when the task holds its answer, else ends the attempt waiting for it."""

    def __init__(self, runner: Runner, attempt: Attempt, max_checkpoint_bytes: int) -> None:
        self._runner, self._attempt, self._max_checkpoint_bytes = runner, attempt, max_checkpoint_bytes

    async def progress(self, data: Mapping[str, Any]) -> None:
        self._runner.report(self._attempt, progress=dict(data))

    async def checkpoint(self, state: Mapping[str, Any], progress: Mapping[str, Any] | None = None) -> None:
        size = len(json.dumps(state))
        if size > self._max_checkpoint_bytes:
            raise ToolError(f"checkpoint of {size} bytes exceeds the limit of {self._max_checkpoint_bytes}")
        stored = self._runner.report(self._attempt, progress=None if progress is None else dict(progress),
                                     checkpoint=dict(state))
        if stored is not None:
            await stored

    async def ask(self, key: str, message: str, schema: Mapping[str, Any] | None = None) -> Any:
        """The answer to a request for input named `key` (it fits `schema`, default: any JSON object).

        Durable replay: when the task already holds an answer for `key`, it is returned at once; otherwise this
        attempt ends and the task waits (`input_required`, holding no slot) until `provide_input` answers, then
        runs again from its latest checkpoint — and this call returns the answer. Several asks made together
        (e.g. under `asyncio.gather`) wait together. A declined or cancelled request raises ToolError.
        """
        answer = self._attempt.taken.inputs.get(key)
        if answer is not None:
            return inputs.answer_of(key, answer)
        request = inputs.request(key, message, schema, self._runner.now())
        self._runner.ask(self._attempt, key, request)
        await asyncio.get_running_loop().create_future()  # never set: the attempt is ended for input


class Runner:
    """One worker: `slots` tasks of one worker type at once, taken from every shard in queue order."""

    def __init__(self, store: TaskStore, tools: Mapping[str, Tool], name: str, worker_type: str, slots: int,
                 policy: TakePolicy, limits: Limits, clock: Callable[[], float],
                 on_settled: Callable[[Counter[str], int], None] | None = None) -> None:
        self._store, self._tools, self.name, self.worker_type = store, tools, name, worker_type
        self._slots, self._policy, self._limits, self._clock = slots, policy, limits, clock
        self._on_settled = on_settled
        self._running: dict[str, Attempt] = {}
        self._settling: dict[str, Attempt] = {}  # ended, their final settlement not yet stored
        self._finished: dict[int, list[FinishedTask]] = defaultdict(list)
        self._wake = asyncio.Event()
        self._seq = itertools.count(int(clock() * 1000))  # take sequence numbers, unique across restarts
        self.paused = False
        self.draining = False
        self.idle = asyncio.Event()  # set while it holds nothing

    # --- what the actor exposes -------------------------------------------------------------------

    def wake(self) -> None:
        """Tasks may be waiting (a wake-up message, or the pool resumed)."""
        self._wake.set()

    def held(self) -> list[str]:
        return list(self._running) + [t for t in self._settling if t not in self._running]

    def entries(self) -> dict[int, list[str]]:
        """Delivery entries of the attempts held, per shard: what heartbeats keep fresh."""
        found: dict[int, list[str]] = defaultdict(list)
        for attempt in [*self._running.values(), *self._settling.values()]:
            found[attempt.taken.shard].append(attempt.taken.entry_id)
        return found

    def free_slots(self) -> int:
        return 0 if self.paused or self.draining else max(0, self._slots - len(self._running))

    def interrupt(self, task_id: str, why: TaskStatus) -> bool:
        """Cancel or preempt a running task's tool, or end it to wait for input; True if it runs here. A cancel
        wins over the others, a wait for input over a preemption (either way it leaves its slot)."""
        attempt = self._running.get(task_id)
        if attempt is None or attempt.job is None:
            return False
        if attempt.interrupt is None or why is TaskStatus.CANCELLED:
            attempt.interrupt = why
        attempt.job.cancel()
        return True

    def now(self) -> float:
        return self._clock()

    def ask(self, attempt: Attempt, key: str, request: Mapping[str, Any]) -> None:
        """Note a request for input; the attempt ends waiting for input once its other asks made at the same
        time (siblings under `gather`) had their turn to be noted too."""
        attempt.asked[key] = dict(request)
        if attempt.ending is None:
            attempt.ending = asyncio.create_task(self._end_for_input(attempt), name=f"ask-{attempt.taken.task.task_id}")

    async def _end_for_input(self, attempt: Attempt) -> None:
        for _ in range(INPUT_SIBLING_TURNS):
            await asyncio.sleep(0)  # yield to sibling coroutines that are about to ask too (not a timed wait)
        self.interrupt(attempt.taken.task.task_id, TaskStatus.INPUT_REQUIRED)

    # --- the loop ---------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Recover what a previous incarnation held, then cycle until cancelled; a failed cycle (Redis away) is
        retried with backoff, its reports kept."""
        backoff_s = 0.05
        recovered = adopt = False
        self._wake.set()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await self._wake.wait()
            self._wake.clear()
            try:
                if not recovered:
                    await self._recover()
                    recovered = True
                if adopt:  # a take may have gone through with its reply lost
                    await self._adopt()
                    adopt = False
                await self._cycle()
                backoff_s = 0.05
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("worker cycle failed; retrying", extra={"worker": self.name}, exc_info=True)
                await asyncio.sleep(backoff_s)  # backoff while Redis is away, not synchronisation
                backoff_s = min(backoff_s * 2, 2.0)
                self._wake.set()
                adopt = recovered

    def report(self, attempt: Attempt, *, progress: Any = None,
               checkpoint: Any = None) -> asyncio.Future[None] | None:
        """Queue a report of a running attempt for the next cycle; with a checkpoint, a future done once it is
        stored (failed with Superseded if the attempt is no longer current)."""
        pending = attempt.pending or Settlement(attempt.taken.task.task_id, attempt.taken.attempt)
        attempt.pending = pending
        if progress is not None:
            attempt.progress.append(progress)
            del attempt.progress[:-MAX_PENDING_PROGRESS]
        future = None
        if checkpoint is not None:
            pending.checkpoint = checkpoint
            future = asyncio.get_running_loop().create_future()
            attempt.saved.append(future)
        self._wake.set()
        return future

    async def _cycle(self) -> None:
        """One round trip: settle what the attempts did since the last cycle, take tasks for the free slots."""
        batches: dict[int, list[Batched]] = defaultdict(list)
        for attempt in [*self._running.values(), *self._settling.values()]:
            if attempt.pending is not None:
                pending, attempt.pending = attempt.pending, None
                pending.progress, attempt.progress = attempt.progress or None, []
                batches[attempt.taken.shard].append((attempt, pending, attempt.saved))
                attempt.saved = []
        finished = {shard: self._finished.pop(shard, []) for shard in set(batches) | set(self._finished)}
        now = self._clock()
        free = self.free_slots()
        take = None
        if free > 0 and self._store.shards == 1:
            take = TakeRequest(0, self.worker_type, self.name, free, next(self._seq), self._policy)
        settles = {shard: ([s for _a, s, _f in batches.get(shard, [])], stats_arg(finished[shard], now))
                   for shard in finished}
        try:
            replies, taken = await self._store.cycle(settles, take, now)
        except BaseException:
            for batch in batches.values():  # kept for the next try, merged with what came meanwhile
                for attempt, pending, saved in batch:
                    attempt.progress[:0] = pending.progress or []
                    attempt.pending = _merge(pending, attempt.pending)
                    attempt.saved[:0] = saved
            for shard, samples in finished.items():
                self._finished[shard][:0] = samples
            raise
        for shard, batch in batches.items():
            self._settled(batch, replies[shard])
        if taken is not None:
            await self._started(0, taken, free, now)
        elif free > 0 and self._store.shards > 1:
            await self._take(free)
        self._update_idle()

    def _settled(self, batch: list[Batched], replies: list[int]) -> None:
        statuses: Counter[str] = Counter()
        for (attempt, settlement, saved), reply in zip(batch, replies, strict=True):
            for future in saved:  # the checkpoints this settlement carried
                if not future.done():
                    if reply:
                        future.set_result(None)
                    else:
                        future.set_exception(Superseded())
            if settlement.outcome is not None:
                self._settling.pop(settlement.task_id, None)
                if reply:
                    statuses[settlement.outcome.value] += 1
                else:
                    logger.warning("stale attempt's result refused",
                                   extra={"task_id": settlement.task_id, "attempt": settlement.attempt})
            elif reply == 0 and attempt.job is not None:  # superseded: stop the tool
                attempt.interrupt = TaskStatus.PREEMPTED
                attempt.job.cancel()
        if self._on_settled is not None and statuses:
            self._on_settled(statuses, len(self._running))

    async def _take(self, free: int) -> None:
        """With several shards: take from the one whose next task ranks best, then the next best."""
        now = self._clock()
        for shard, _rank in await self._store.peek(self.worker_type, now, self._policy.aging_interval_s):
            request = TakeRequest(shard, self.worker_type, self.name, free, next(self._seq), self._policy)
            free -= await self._started(shard, await self._store.take(request, now), free, now)
            if free <= 0:
                break

    async def _started(self, shard: int, result: TakeResult, asked: int, began: float) -> int:
        """Start what a take (sent at `began`) returned; how many were started."""
        if result.duplicate:
            await self._adopt()
        now = self._clock()
        for record in result.settled:
            self._count(shard, record.status.value, record, now)
        for taken in result.taken:
            if tracing.enabled() and taken.task.traceparent is not None:  # not one accepted before tracing was on
                self._trace_take(taken, began, now)
            self._start(taken)
        if len(result.taken) >= asked:
            self._wake.set()  # the queue may hold more: take again once slots free up
        return len(result.taken)

    def _trace_take(self, taken: Taken, began: float, now: float) -> None:
        """The task's queue wait (before its first attempt) and its take, as spans made after the fact."""
        task = taken.task

        def attributes() -> tracing.Attributes:
            return {"orchestrator.task.id": task.task_id, "orchestrator.attempt": taken.attempt,
                    "orchestrator.worker": self.name, "orchestrator.shard": taken.shard}

        if taken.attempt == 1:
            tracing.record("queue wait", task.traceparent, task.ready_at, taken.first_started_at, attributes)
        tracing.record("take", task.traceparent, began, now, attributes)

    def _start(self, taken: Taken) -> None:
        task_id = taken.task.task_id
        if task_id in self._running:
            return
        attempt = self._running[task_id] = Attempt(taken, self._clock())
        attempt.job = asyncio.create_task(self._run(attempt), name=f"task-{task_id}")

    async def _run(self, attempt: Attempt) -> None:
        taken = attempt.taken
        with tracing.span("attempt", parent=taken.task.traceparent, kind=tracing.SpanKind.CONSUMER) as span:
            if span.is_recording():
                span.set_attributes({
                    "orchestrator.task.id": taken.task.task_id, "orchestrator.task.tool": taken.task.tool,
                    "orchestrator.attempt": taken.attempt, "orchestrator.worker": self.name,
                    "orchestrator.attempt.retry": taken.retries > 0,
                    "orchestrator.attempt.resumed": taken.checkpoint is not None})
            outcome, fields = await self._outcome(attempt)
            if span.is_recording():
                span.set_attribute("orchestrator.attempt.outcome", outcome.value)
                if "error" in fields:
                    tracing.failed(span, fields["error"]["message"])
        task = attempt.taken.task
        self._running.pop(task.task_id, None)
        pending = attempt.pending or Settlement(task.task_id, attempt.taken.attempt)
        pending.outcome = outcome
        if "result" in fields:
            pending.result, pending.has_result = fields["result"], True
        pending.error = fields.get("error")
        pending.asked = fields.get("asked")
        attempt.pending = pending
        self._settling[task.task_id] = attempt
        if outcome not in (TaskStatus.PREEMPTED, TaskStatus.INPUT_REQUIRED):
            self._count(attempt.taken.shard, outcome.value, None, self._clock(), attempt)
        self._wake.set()

    async def _outcome(self, attempt: Attempt) -> tuple[TaskStatus, dict[str, Any]]:
        """Run the tool of one attempt; its outcome and result or error."""
        task = attempt.taken.task
        tool = self._tools.get(task.tool)
        if tool is None:
            return _failed(ToolError(f"tool {task.tool!r} is not configured on this worker"))
        if task.deadline is not None and self._clock() >= task.deadline:
            when = "while it waited for input" if attempt.taken.input_rounds else "before the task could start"
            return _failed(ToolError(f"deadline passed {when}"))
        call = ToolCall(task_id=task.task_id, attempt=attempt.taken.attempt, input=task.input, context=task.context,
                        deadline=task.deadline, checkpoint=attempt.taken.checkpoint, tenant=task.tenant)
        ctx = AttemptContext(self, attempt, self._limits.max_checkpoint_bytes)
        try:
            timeout = None if task.deadline is None else task.deadline - self._clock()
            async with asyncio.timeout(timeout):
                if isinstance(task.context.get("approval"), str):  # a gate before any tool: a saga step's
                    await inputs.approve(ctx, task.context["approval"])
                result = await tool.run(call, ctx)
        except TimeoutError:
            return _failed(ToolError("deadline exceeded while running"))
        except (asyncio.CancelledError, Superseded):
            current = asyncio.current_task()
            if attempt.interrupt is None and current is not None and current.cancelling():
                raise  # the worker is shutting down, not an interruption
            if current is not None and current.cancelling():
                current.uncancel()
            if attempt.interrupt is TaskStatus.INPUT_REQUIRED:
                return TaskStatus.INPUT_REQUIRED, {"asked": dict(attempt.asked)}
            return attempt.interrupt or TaskStatus.CANCELLED, {}
        except OrchestratorError as exc:
            return _failed(exc)
        except Exception as exc:
            logger.exception("tool crashed", extra={"task_id": task.task_id, "tool": task.tool})
            return _failed(ToolError(f"tool {task.tool!r} failed unexpectedly ({type(exc).__name__})"))
        if attempt.interrupt is not None:  # asked to stop as it finished: the result stands
            attempt.interrupt = None
        return TaskStatus.SUCCEEDED, {"result": result}

    def _count(self, shard: int, status: str, record: Any, now: float, attempt: Attempt | None = None) -> None:
        """Remember a finished task's analytics sample; it is stored with the shard's next settle."""
        if attempt is not None:
            taken, task = attempt.taken, attempt.taken.task
            result = attempt.pending.result if attempt.pending else None
            usage = result.get("usage") if isinstance(result, dict) else None
            tokens = usage.get("total_tokens", 0) if isinstance(usage, dict) else 0
            self._finished[shard].append(FinishedTask(
                worker_type=task.worker_type, tool=task.tool, tenant=task.tenant, agent=task.agent, status=status,
                e2e_ms=(now - task.ready_at) * 1000, wait_ms=(taken.first_started_at - task.ready_at) * 1000,
                run_ms=(now - attempt.started_at) * 1000, preemptions=taken.preemptions,
                retries=taken.retries,
                tokens=tokens if isinstance(tokens, int) else 0))
        elif record is not None:
            from orchestrator.adapters.stats_store import finished_task

            self._finished[shard].append(finished_task(record))

    def _update_idle(self) -> None:
        if self._running or self._settling:
            self.idle.clear()
        else:
            self.idle.set()

    # --- recovery ---------------------------------------------------------------------------------

    async def _recover(self) -> None:
        """A restarted worker lost whatever its previous incarnation ran: back to the queue with it."""
        for shard in range(self._store.shards):
            lost = [(h, f"worker {self.name} died or was restarted") for h in await self._store.held(shard, self.name)]
            if lost:
                logger.warning("requeueing attempts lost with a previous incarnation",
                               extra={"worker": self.name, "tasks": len(lost)})
                await self._store.requeue_lost(shard, lost, self._clock())

    async def _adopt(self) -> None:
        """After a take whose reply was lost: run the attempts Redis says we hold but we do not know of."""
        known = {a.taken.entry_id for a in [*self._running.values(), *self._settling.values()]}
        for shard in range(self._store.shards):
            unknown = [h for h in await self._store.held(shard, self.name) if h.entry_id not in known]
            for raw, held in zip(await self._store.get_many([h.task_id for h in unknown]), unknown, strict=True):
                taken = _adoptable(shard, held, raw, self.name)
                if taken is not None:
                    self._start(taken)
                else:  # an entry nobody runs: acknowledge it (the task moved on)
                    await self._store.requeue_lost(shard, [(held, "its delivery was orphaned")], self._clock())


def _adoptable(shard: int, held: Held, raw: str | None, worker: str) -> Taken | None:
    from orchestrator.adapters.task_store import taken_of

    if raw is None:
        return None
    stored = json.loads(raw)
    if stored.get("s") != "running" or stored.get("at") != held.attempt or stored.get("wk") != worker:
        return None
    return taken_of(shard, held.entry_id, raw, "")


def _merge(older: Settlement, newer: Settlement | None) -> Settlement:
    """A settlement that failed to be stored, combined with what the attempt reported since."""
    if newer is None:
        return older
    newer.checkpoint = newer.checkpoint if newer.checkpoint is not None else older.checkpoint
    if newer.outcome is None:
        newer.outcome, newer.result, newer.error, newer.has_result = (older.outcome, older.result, older.error,
                                                                      older.has_result)
    return newer


def _failed(exc: OrchestratorError) -> tuple[TaskStatus, dict[str, Any]]:
    error = {"code": exc.code, "message": str(exc), "retryable": bool(exc.data().get("retryable", False))}
    return TaskStatus.FAILED, {"error": error}
