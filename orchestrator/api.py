"""The JSON-RPC method tables of API versions 1 and 2, bound to a TaskService."""

from __future__ import annotations

from typing import Any, cast

from orchestrator.analytics import AnalyticsParams, AnalyticsResult
from orchestrator.auth import ADMIN, ANONYMOUS, READ, SUBMIT
from orchestrator.finder import Finder
from orchestrator.jsonrpc import Method, RequestContext
from orchestrator.key_service import KeyService
from orchestrator.models import (
    CancelSagaResult,
    CancelTaskResult,
    ControlParams,
    ControlResult,
    CreateScheduleParams,
    DeleteScheduleResult,
    InjectParams,
    InjectResult,
    KeysParams,
    KeysResult,
    ListSagasParams,
    ListSagasResult,
    ListSchedulesParams,
    ListSchedulesResult,
    ListTasksParams,
    ListTasksResult,
    ListWorkflowsParams,
    ProvideInputParams,
    ProvideInputResult,
    RerunSagaParams,
    RerunTaskParams,
    RunSagaParams,
    RunSagaResult,
    RunTaskParams,
    RunTaskParamsV2,
    RunTaskResult,
    SagaIdParams,
    ScheduleIdParams,
    ScheduleState,
    StatusParams,
    StatusResult,
    TaskIdParams,
    TaskRecord,
    WhoamiParams,
    WhoamiResult,
)
from orchestrator.saga import SagaState, WorkflowDefinition
from orchestrator.saga_service import SagaService
from orchestrator.schedule_service import ScheduleService
from orchestrator.service import TaskService
from orchestrator.settings import SCOPES

RUN_TASK_SUMMARY = (
    "Submit a task. Answers {task_id, status} once it is durably accepted, or, with `wait`, "
    "the finished task record if it finishes (or asks for input) within `wait` seconds. With `not_before` or `delay_s` it is "
    "`scheduled` until then."
)


def methods(service: TaskService, version: int, sagas: SagaService | None = None,
            keys: KeyService | None = None, schedules: ScheduleService | None = None,
            finder: Finder | None = None) -> list[Method]:
    """The methods of one API version; v2 differs only in `run_task`'s params."""
    return (_task_methods(service, version) + ([] if sagas is None else saga_methods(sagas))
            + ([] if keys is None else key_methods(keys)) + ([] if schedules is None else schedule_methods(schedules))
            + ([] if finder is None else finder_methods(finder)))


def finder_methods(finder: Finder) -> list[Method]:
    async def list_tasks(params: Any, ctx: RequestContext) -> ListTasksResult:
        return await finder.list_tasks(cast(ListTasksParams, params), ctx.principal)

    async def list_sagas(params: Any, ctx: RequestContext) -> ListSagasResult:
        return await finder.list_sagas(cast(ListSagasParams, params), ctx.principal)

    return [
        Method("list_tasks", ListTasksParams, ListTasksResult,
               "Find tasks, newest first: by status (one or several), tool, worker type, priority range, creation "
               "time, parent, saga and (admins) tenant; pages follow `next_cursor` until it is null.", list_tasks,
               READ),
        Method("list_sagas", ListSagasParams, ListSagasResult,
               "Find sagas, newest first: by status, workflow, creation time and (admins) tenant; pages follow "
               "`next_cursor` until it is null.", list_sagas, READ),
    ]


def schedule_methods(schedules: ScheduleService) -> list[Method]:
    async def create_schedule(params: Any, ctx: RequestContext) -> ScheduleState:
        return await schedules.create_schedule(cast(CreateScheduleParams, params), ctx.principal)

    async def get_schedule(params: Any, ctx: RequestContext) -> ScheduleState:
        return await schedules.get_schedule(cast(ScheduleIdParams, params).schedule_id, ctx.principal)

    async def list_schedules(params: Any, ctx: RequestContext) -> ListSchedulesResult:
        return await schedules.list_schedules(cast(ListSchedulesParams, params), ctx.principal)

    async def pause_schedule(params: Any, ctx: RequestContext) -> ScheduleState:
        return await schedules.pause_schedule(cast(ScheduleIdParams, params).schedule_id, ctx.principal)

    async def resume_schedule(params: Any, ctx: RequestContext) -> ScheduleState:
        return await schedules.resume_schedule(cast(ScheduleIdParams, params).schedule_id, ctx.principal)

    async def delete_schedule(params: Any, ctx: RequestContext) -> DeleteScheduleResult:
        return await schedules.delete_schedule(cast(ScheduleIdParams, params).schedule_id, ctx.principal)

    return [
        Method("create_schedule", CreateScheduleParams, ScheduleState,
               "Fire a task on a cron expression (with a timezone) or an interval; each tick exactly once, as the "
               "caller would submit it. Overlap (skip, queue, cancel_previous) and catch-up (none, latest, all) "
               "policies.", create_schedule, SUBMIT),
        Method("get_schedule", ScheduleIdParams, ScheduleState,
               "A schedule: its definition, next ticks, counts and latest fires.", get_schedule, READ),
        Method("list_schedules", ListSchedulesParams, ListSchedulesResult,
               "The caller's tenant's schedules (an admin: every tenant's, or `tenant`'s), newest first.",
               list_schedules, READ),
        Method("pause_schedule", ScheduleIdParams, ScheduleState,
               "Stop firing (the ticks that fall while paused never fire).", pause_schedule, SUBMIT),
        Method("resume_schedule", ScheduleIdParams, ScheduleState,
               "Fire again, from the next tick after now.", resume_schedule, SUBMIT),
        Method("delete_schedule", ScheduleIdParams, DeleteScheduleResult,
               "Delete a schedule: it fires no more (its tasks stay).", delete_schedule, SUBMIT),
    ]


def key_methods(keys: KeyService) -> list[Method]:
    async def manage_keys(params: Any, ctx: RequestContext) -> KeysResult:
        return await keys.keys(cast(KeysParams, params), ctx.principal)

    return [
        Method("keys", KeysParams, KeysResult,
               "Admin: API keys kept in Redis — create (the key is answered once; only its hash is kept), list, "
               "revoke (refused on every replica within a second). Settings keys are listed, not revocable. "
               "Audited.", manage_keys, ADMIN),
    ]


def saga_methods(sagas: SagaService) -> list[Method]:
    async def run_saga(params: Any, ctx: RequestContext) -> RunSagaResult:
        return await sagas.run_saga(cast(RunSagaParams, params), ctx.principal)

    async def get_saga(params: Any, ctx: RequestContext) -> SagaState:
        return await sagas.get_saga(cast(SagaIdParams, params).saga_id, ctx.principal)

    async def cancel_saga(params: Any, ctx: RequestContext) -> CancelSagaResult:
        return await sagas.cancel_saga(cast(SagaIdParams, params).saga_id, ctx.principal)

    async def rerun_saga(params: Any, ctx: RequestContext) -> RunSagaResult:
        return await sagas.rerun_saga(cast(RerunSagaParams, params), ctx.principal)

    async def list_workflows(params: Any, ctx: RequestContext) -> list[WorkflowDefinition]:
        return sagas.list_workflows()

    return [
        Method("run_saga", RunSagaParams, RunSagaResult,
               "Start a saga of a workflow; answers {saga_id, status} once it is durably accepted.", run_saga,
               SUBMIT),
        Method("get_saga", SagaIdParams, SagaState,
               "The saga: status, and every step with its attempts, output, timings and compensation.", get_saga,
               READ),
        Method("cancel_saga", SagaIdParams, CancelSagaResult,
               "Cancel a saga: its running steps are cancelled and its completed steps compensated.", cancel_saga,
               SUBMIT),
        Method("rerun_saga", RerunSagaParams, RunSagaResult,
               "Re-run a failed or cancelled saga as a new one linked both ways (rerun_of / reruns): completed "
               "steps that were not undone keep their outputs, the rest run again.", rerun_saga, SUBMIT),
        Method("list_workflows", ListWorkflowsParams, list[WorkflowDefinition],
               "The workflows sagas can run, with their definitions.", list_workflows, READ),
    ]


def _task_methods(service: TaskService, version: int) -> list[Method]:
    async def run_task(params: Any, ctx: RequestContext) -> RunTaskResult | TaskRecord:
        return await service.run_task(params, ctx.principal)

    async def get_task(params: Any, ctx: RequestContext) -> TaskRecord:
        return await service.get_task(cast(TaskIdParams, params).task_id, ctx.principal)

    async def cancel_task(params: Any, ctx: RequestContext) -> CancelTaskResult:
        return await service.cancel_task(cast(TaskIdParams, params).task_id, ctx.principal)

    async def provide_input(params: Any, ctx: RequestContext) -> ProvideInputResult:
        return await service.provide_input(cast(ProvideInputParams, params), ctx.principal)

    async def rerun_task(params: Any, ctx: RequestContext) -> RunTaskResult:
        return await service.rerun_task(cast(RerunTaskParams, params), ctx.principal)

    async def status(params: Any, ctx: RequestContext) -> StatusResult:
        return await service.status(ctx.principal)

    async def control(params: Any, ctx: RequestContext) -> ControlResult:
        return await service.control(cast(ControlParams, params), ctx.principal)

    async def inject(params: Any, ctx: RequestContext) -> InjectResult:
        return await service.inject(cast(InjectParams, params), ctx.principal)

    async def analytics(params: Any, ctx: RequestContext) -> AnalyticsResult:
        return await service.analytics(cast(AnalyticsParams, params), ctx.principal)

    async def whoami(params: Any, ctx: RequestContext) -> WhoamiResult:
        who = ctx.principal
        return WhoamiResult(key=who.key_id, tenant=who.tenant, admin=who.admin, auth=who != ANONYMOUS,
                            scopes=[s for s in SCOPES if who.can(s)])

    return [
        Method("run_task", RunTaskParams if version == 1 else RunTaskParamsV2, RunTaskResult | TaskRecord,
               RUN_TASK_SUMMARY, run_task, SUBMIT),
        Method("get_task", TaskIdParams, TaskRecord, "The task's record: status, result or error, timings.",
               get_task, READ),
        Method("cancel_task", TaskIdParams, CancelTaskResult,
               "Cancel a queued task at once, or interrupt a running one.", cancel_task, SUBMIT),
        Method("provide_input", ProvideInputParams, ProvideInputResult,
               "Answer a task waiting for input (status input_required; its record's `input_requests` say what "
               "and with which schema): checked, stored, and the task resumes once nothing else is pending.",
               provide_input, SUBMIT),
        Method("rerun_task", RerunTaskParams, RunTaskResult,
               "Run a finished task again as a new task linked both ways (rerun_of / reruns); input and priority "
               "may change.", rerun_task, SUBMIT),
        Method("status", StatusParams, StatusResult, "Pools, workers, queue depths and tools.", status, READ),
        Method("control", ControlParams, ControlResult,
               "Operator actions: scale, drain, pause/resume a pool, preempt or cancel a task, dead letters, "
               "audit log. Every change is audited.", control, ADMIN),
        Method("inject", InjectParams, InjectResult,
               "Admin: add a task by hand, or correct the priority or input of one not yet started. Audited.",
               inject, ADMIN),
        Method("analytics", AnalyticsParams, AnalyticsResult,
               "Latency p50/p95/p99 (end to end, queue wait, run), throughput, outcomes, retries, preemptions "
               "and tokens over the last window_s seconds, per worker type, tool and tenant; pool utilisation.",
               analytics, READ),
        Method("whoami", WhoamiParams, WhoamiResult,
               "The calling key: its name, tenant and scopes, and whether auth is on (what the console may offer).",
               whoami),
    ]
