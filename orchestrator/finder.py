"""Finding tasks and sagas (`list_tasks`, `list_sagas`): the params checked, the caller's tenants, and the
indexes asked (see `adapters/lua/list_tasks.lua`).

What a listing costs does not depend on how many tasks are stored: per tenant it reads the sorted sets of the
statuses asked for from the page's position on, merged by creation time, and checks each record read against
the other filters (tool, worker type, priority); a call examines at most `LIST_BUDGET` records per shard, so a
rare match answers short pages with a cursor rather than scan on. A parent's or a saga's tasks are read directly
(the parent's record and the saga's state name them).
"""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar

from orchestrator import codec
from orchestrator.adapters.saga_store import SagaQuery, SagaStore
from orchestrator.adapters.task_store import TaskQuery, TaskStore
from orchestrator.auth import Principal
from orchestrator.errors import InvalidParamsError, SagaNotFoundError, TaskNotFoundError
from orchestrator.listing import END_MS, Position, decode_cursor, encode_cursor, page_of
from orchestrator.models import (
    ListSagasParams,
    ListSagasResult,
    ListTasksParams,
    ListTasksResult,
    TaskStatus,
    TaskSummary,
)
from orchestrator.saga import SagaStatus

NOT_YOURS = "only an admin key may list another tenant's work"


def tenants_of(asked: str | None, who: Principal) -> list[str | None] | None:
    """The tenants whose work `who` lists (None: every tenant's): an admin's choice, else its own tenant's;
    naming another tenant is an error rather than an empty page, so a mistake does not pass for "nothing"."""
    if who.admin:
        return None if asked is None else [asked]
    if asked is not None and asked != who.tenant:
        raise InvalidParamsError({"params.tenant": NOT_YOURS})
    return [who.tenant]


S = TypeVar("S", TaskStatus, SagaStatus)


def _statuses(asked: S | list[S] | None, every: type[S]) -> list[S]:
    if asked is None or asked == []:
        return list(every)
    return sorted(set(asked if isinstance(asked, list) else [asked]))


def _seconds(instant: float | datetime) -> float:
    return instant.timestamp() if isinstance(instant, datetime) else instant


def _created_ms(after: float | datetime | None, before: float | datetime | None) -> tuple[int, int]:
    return (0 if after is None else codec.to_ms(_seconds(after)),
            END_MS if before is None else codec.to_ms(_seconds(before)))


class Finder:
    def __init__(self, tasks: TaskStore, sagas: SagaStore) -> None:
        self._tasks = tasks
        self._sagas = sagas

    async def list_tasks(self, params: ListTasksParams, who: Principal) -> ListTasksResult:
        """A page of the tasks `who` may see that match every filter, newest first."""
        pmin, pmax = params.priority_min or 0, 10 if params.priority_max is None else params.priority_max
        if pmin > pmax:
            raise InvalidParamsError({"params.priority_max": f"less than priority_min ({pmin})"})
        tenants = tenants_of(params.tenant, who)
        after = decode_cursor(params.cursor) if params.cursor else None
        low, high = _created_ms(params.created_after, params.created_before)
        query = TaskQuery(tenants, _statuses(params.status, TaskStatus), params.tool, params.worker_type, pmin, pmax,
                          low, high, after, params.limit)
        if params.parent_id is None and params.saga_id is None:
            rows, position = await self._tasks.list_tasks(query)
        else:
            rows, position = await self._related(params, query, who)
        return ListTasksResult(tasks=rows, next_cursor=None if position is None else encode_cursor(position))

    async def _related(self, params: ListTasksParams, query: TaskQuery, who: Principal
                       ) -> tuple[list[TaskSummary], Position | None]:
        """The tasks of a parent (its fanout children) and/or a saga, named by its record or state, filtered."""
        ids: set[str] | None = None
        try:
            if params.parent_id is not None:
                parent = await self._tasks.get(params.parent_id)
                ids = set(parent.children) if who.sees(parent.tenant) else set()
            if params.saga_id is not None:
                state = await self._sagas.load(params.saga_id)
                steps = {a.task_id for step in state.steps for a in [*step.attempts, *step.compensation_attempts]
                         if a.task_id} if who.sees(state.tenant) else set()
                ids = steps if ids is None else ids & steps
        except (TaskNotFoundError, SagaNotFoundError):  # a filter that names nothing matches nothing
            ids = set()
        ordered = sorted(ids or ())
        found = [codec.summary_of(raw) for raw in await self._tasks.get_many(ordered) if raw is not None]
        rows = [((codec.to_ms(t.created_at), t.task_id), t) for t in found if _matches(t, query)]
        return page_of(rows, query.after, query.limit)

    async def list_sagas(self, params: ListSagasParams, who: Principal) -> ListSagasResult:
        """A page of the sagas `who` may see that match every filter, newest first."""
        low, high = _created_ms(params.created_after, params.created_before)
        query = SagaQuery(tenants_of(params.tenant, who), _statuses(params.status, SagaStatus), params.workflow,
                          low, high, decode_cursor(params.cursor) if params.cursor else None, params.limit)
        rows, position = await self._sagas.list(query)
        return ListSagasResult(sagas=rows, next_cursor=None if position is None else encode_cursor(position))


def _matches(task: TaskSummary, query: TaskQuery) -> bool:
    created = codec.to_ms(task.created_at)
    return ((query.tenants is None or task.tenant in query.tenants) and task.status in query.statuses
            and (query.tool is None or task.tool == query.tool)
            and (query.worker_type is None or task.worker_type == query.worker_type)
            and query.priority_min <= task.priority <= query.priority_max
            and query.created_min_ms <= created < query.created_max_ms)
