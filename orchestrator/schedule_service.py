"""The schedules API's behaviour (create, look up, list, pause, resume, delete) and the firer, which the router
holding the pools lease runs: each due tick fires as an ordinary task of the schedule's tenant, submitted as its
creator would (`TaskService.run_task`: quotas, priority rights), with the idempotency key of the schedule and
the tick — then the schedule is advanced only where the firer read it (see schedule_advance.lua)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from orchestrator.adapters.schedule_store import ScheduleStore
from orchestrator.auth import Principal, max_priority, quota_of, system
from orchestrator.errors import (
    InvalidParamsError,
    QueueFullError,
    QuotaExceededError,
    ScheduleNotFoundError,
    StorageUnavailableError,
    TaskNotCancellableError,
    TaskNotFoundError,
)
from orchestrator.intake import build_task
from orchestrator.models import (
    CreateScheduleParams,
    DeleteScheduleResult,
    ListSchedulesParams,
    ListSchedulesResult,
    RunTaskParamsV2,
    ScheduleRun,
    ScheduleSpec,
    ScheduleState,
)
from orchestrator.schedules import Timing, fire_key, plan, timing_problem
from orchestrator.service import TaskService
from orchestrator.settings import Settings

logger = logging.getLogger(__name__)

DUE_BATCH = 100  # schedules fired per pass
UPCOMING = 5  # next ticks shown by get_schedule


class FencedError(Exception):
    """The firer lost the pools lease: another router fires now."""


def timing_of(state: ScheduleState) -> Timing:
    spec = state.spec
    return Timing(spec.cron, spec.timezone, spec.interval_s, state.created_at)


class ScheduleService:
    def __init__(self, settings: Settings, store: ScheduleStore, tasks: TaskService,
                 clock: Callable[[], float]) -> None:
        self._settings = settings
        self._store = store
        self._tasks = tasks
        self._clock = clock

    # --- the API ------------------------------------------------------------------------------------

    async def create_schedule(self, params: CreateScheduleParams, who: Principal) -> ScheduleState:
        errors = timing_problem(params.cron, params.timezone, params.interval_s)
        quota = quota_of(who, self._settings.auth)
        try:  # what run_task would refuse at each fire is refused now
            build_task(RunTaskParamsV2(tool=params.tool, input=params.input, priority=params.priority),
                       self._settings, self._clock(), who.tenant,
                       max_priority=max_priority(who, quota, self._settings.router.preempt_threshold),
                       operator=who.admin)
        except InvalidParamsError as exc:
            errors.update(exc.fields)
        if errors:
            raise InvalidParamsError(errors)
        now = self._clock()
        spec = ScheduleSpec(**params.model_dump(), tenant=who.tenant, scopes=sorted(who.scopes),
                            created_by=who.key_id)
        schedule_id = uuid.uuid4().hex[:16]  # 64 random bits: ids stay short in listings
        first = Timing(spec.cron, spec.timezone, spec.interval_s, now).after(now)
        await self._store.create(schedule_id, spec, first, now, self._settings.limits.max_schedules_per_tenant)
        return await self.get_schedule(schedule_id, who)

    async def get_schedule(self, schedule_id: str, who: Principal) -> ScheduleState:
        """The schedule, if the caller may see it (another tenant's is "not found"), with its next ticks."""
        state = await self._store.get(schedule_id)
        if not who.sees(state.spec.tenant):
            raise ScheduleNotFoundError(schedule_id)
        if not state.paused:
            first = state.next_ms / 1000
            state.upcoming = [first, *timing_of(state).upcoming(first, UPCOMING - 1)]
        return state

    async def list_schedules(self, params: ListSchedulesParams, who: Principal) -> ListSchedulesResult:
        if params.tenant is not None and not who.admin and params.tenant != who.tenant:
            raise InvalidParamsError({"params.tenant": "only an admin key lists another tenant's schedules"})
        tenants = None if who.admin and params.tenant is None else [params.tenant or who.tenant]
        states = []
        for schedule_id in await self._store.listed(tenants):
            try:
                states.append(await self.get_schedule(schedule_id, who))
            except ScheduleNotFoundError:
                continue  # deleted meanwhile
        return ListSchedulesResult(schedules=states)

    async def pause_schedule(self, schedule_id: str, who: Principal) -> ScheduleState:
        await self.get_schedule(schedule_id, who)
        await self._store.pause(schedule_id)
        return await self.get_schedule(schedule_id, who)

    async def resume_schedule(self, schedule_id: str, who: Principal) -> ScheduleState:
        """Active again from its next tick after now: the ticks that fell while it was paused never fire."""
        state = await self.get_schedule(schedule_id, who)
        if state.paused:
            await self._store.resume(schedule_id, timing_of(state).after(self._clock()))
        return await self.get_schedule(schedule_id, who)

    async def delete_schedule(self, schedule_id: str, who: Principal) -> DeleteScheduleResult:
        await self._store.delete(await self.get_schedule(schedule_id, who))
        return DeleteScheduleResult(schedule_id=schedule_id)

    # --- the firer ----------------------------------------------------------------------------------

    async def fire_due(self, holder: str) -> int:
        """Fire every due tick of the schedules due now; how many fired. Raises FencedError when `holder` no
        longer holds the pools lease."""
        due = await self._store.due(self._clock(), DUE_BATCH)
        if due and not await self._store.holds(holder):
            raise FencedError(holder)
        fired = 0
        for schedule_id in due:
            try:
                fired += await self._fire(await self._store.get(schedule_id), holder)
            except ScheduleNotFoundError:
                continue  # deleted meanwhile
        return fired

    async def _fire(self, state: ScheduleState, holder: str) -> int:
        spec, now = state.spec, self._clock()
        todo = plan(timing_of(state), state.next_ms / 1000, now, spec.catch_up, spec.grace_s, spec.max_catch_up)
        runs: list[ScheduleRun] = []
        overlapping, next_tick, last = 0, todo.next_tick, state.last_task
        for tick in todo.fire:
            if spec.overlap != "queue" and last is not None and not await self._finished(last):
                if spec.overlap == "skip":
                    fired = await self._tasks.keyed_task(fire_key(state.schedule_id, tick), self._creator(state))
                    if fired is None:  # not fired by a firer that died before recording it: skipped
                        overlapping += 1
                        continue
                    runs.append(ScheduleRun(tick=tick, task_id=fired))
                    last = fired
                    continue
                await self._cancel(last)
            try:
                task_id = await self._submit(state, tick)
            except (QuotaExceededError, QueueFullError, StorageUnavailableError) as exc:
                logger.info("schedule held: its tick fires later", extra={"schedule_id": state.schedule_id,
                                                                           "reason": str(exc)})
                next_tick = tick  # due again from here
                break
            if task_id is None:
                overlapping += 1  # refused for good (its tool is gone): counted as skipped
                continue
            runs.append(ScheduleRun(tick=tick, task_id=task_id))
            last = task_id
        skipped = todo.skipped_before(next_tick) + overlapping
        if await self._store.advance(state, next_tick, runs, skipped, holder) < 0:
            raise FencedError(holder)
        return len(runs)

    async def _submit(self, state: ScheduleState, tick: float) -> str | None:
        """The tick's task, as the schedule's creator would submit it (found again if it was submitted)."""
        spec = state.spec
        params = RunTaskParamsV2(tool=spec.tool, input=spec.input, priority=spec.priority,
                                 idempotency_key=fire_key(state.schedule_id, tick),
                                 agent=f"schedule:{state.schedule_id}")
        try:
            accepted = await self._tasks.run_task(params, self._creator(state))
        except InvalidParamsError as exc:
            logger.warning("schedule tick refused", extra={"schedule_id": state.schedule_id, "reason": str(exc)})
            return None
        return accepted.task_id

    @staticmethod
    def _creator(state: ScheduleState) -> Principal:
        spec = state.spec
        return Principal(spec.created_by, spec.tenant, frozenset(spec.scopes))

    async def _finished(self, task_id: str) -> bool:
        try:
            return (await self._tasks.get_task(task_id, system(None))).status.finished
        except TaskNotFoundError:
            return True  # expired long ago

    async def _cancel(self, task_id: str) -> None:
        try:
            await self._tasks.cancel_task(task_id, system(None))
        except (TaskNotCancellableError, TaskNotFoundError):
            pass  # it finished meanwhile
