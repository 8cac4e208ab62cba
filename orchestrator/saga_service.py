"""The saga API's behaviour: start, look up, cancel and re-run sagas, and list the workflows they can run."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from orchestrator import tracing
from orchestrator.adapters.saga_store import SagaStore
from orchestrator.auth import Principal, max_priority, quota_of
from orchestrator.errors import InvalidParamsError, SagaFinishedError, SagaNotFoundError
from orchestrator.intake import json_size, priority_refusal
from orchestrator.models import CancelSagaResult, RerunSagaParams, RunSagaParams, RunSagaResult
from orchestrator.saga import RERUNNABLE, SagaState, WorkflowDefinition, new_saga, rerun
from orchestrator.settings import QuotaSettings, Settings
from orchestrator.tools.registry import schema_errors


class CoordinatorClient(Protocol):
    """What the API needs from the saga coordinator; the deployment implements it with actor calls."""

    async def start_saga(self, state: SagaState, idempotency_key: str | None,
                         quota: QuotaSettings | None) -> tuple[str, bool]: ...

    async def cancel_saga(self, saga_id: str) -> None: ...


class SagaService:
    def __init__(self, settings: Settings, store: SagaStore, coordinator: CoordinatorClient,
                 clock: Callable[[], float] = time.time) -> None:
        self._auth = settings.auth
        self._threshold = settings.router.preempt_threshold
        self._workflows = settings.all_workflows()
        self._max_input_bytes = settings.limits.max_context_bytes
        self._store = store
        self._coordinator = coordinator
        self._clock = clock

    async def run_saga(self, params: RunSagaParams, who: Principal) -> RunSagaResult:
        """Start a saga of the caller's tenant (counted against its submit rate unless the caller is an admin)."""
        workflow = self._workflows.get(params.workflow)
        if workflow is None:
            known = ", ".join(sorted(self._workflows))
            raise InvalidParamsError({"params.workflow": f"unknown workflow {params.workflow!r}; known: {known}"})
        quota = quota_of(who, self._auth)
        self._check(workflow, params.input, params.priority, quota, who)
        state = new_saga(uuid.uuid4().hex, workflow, params.input, params.priority, self._clock(), params.agent,
                         who.tenant, quota_exempt=quota is None)
        return await self._start(state, params.idempotency_key, quota)

    async def rerun_saga(self, params: RerunSagaParams, who: Principal) -> RunSagaResult:
        """Start a new saga taking up a failed or cancelled one of the caller's where it stopped (see
        `saga.rerun`), linked both ways."""
        original = await self.get_saga(params.saga_id, who)
        if original.status not in RERUNNABLE:
            raise InvalidParamsError({"params.saga_id": f"saga {params.saga_id} is {original.status.value}: only a "
                                                        "failed or cancelled saga can be re-run"})
        quota = quota_of(who, self._auth)
        saga_input = original.input if params.input is None else params.input
        priority = original.priority if params.priority is None else params.priority
        self._check(original.definition, saga_input, priority, quota, who)
        state = rerun(original, uuid.uuid4().hex, self._clock(), saga_input=saga_input, priority=priority,
                      agent=params.agent, quota_exempt=quota is None)
        return await self._start(state, params.idempotency_key, quota)

    def _check(self, workflow: WorkflowDefinition, saga_input: dict[str, Any], priority: int,
               quota: QuotaSettings | None, who: Principal) -> None:
        errors = schema_errors(workflow.input_schema, saga_input, "params.input")
        if json_size(saga_input) > (limit := self._max_input_bytes):
            errors["params.input"] = f"larger than {limit} bytes"
        if priority > (most := max_priority(who, quota, self._threshold)):  # its steps run at it
            errors["params.priority"] = priority_refusal(priority, most)
        if errors:
            raise InvalidParamsError(errors)

    async def _start(self, state: SagaState, idempotency_key: str | None,
                     quota: QuotaSettings | None) -> RunSagaResult:
        traceparent = tracing.traceparent()
        if traceparent is not None:
            state = state.model_copy(update={"traceparent": traceparent})
        saga_id, duplicate = await self._coordinator.start_saga(state, idempotency_key, quota)
        status = (await self._store.load(saga_id)).status.value if duplicate else "running"
        return RunSagaResult(saga_id=saga_id, status=status, duplicate=duplicate)

    async def get_saga(self, saga_id: str, who: Principal) -> SagaState:
        """The saga, if the caller may see it: another tenant's saga is "not found", like a missing one."""
        state = await self._store.load(saga_id)
        if not who.sees(state.tenant):
            raise SagaNotFoundError(saga_id)
        return state

    async def cancel_saga(self, saga_id: str, who: Principal) -> CancelSagaResult:
        state = await self.get_saga(saga_id, who)
        if state.status.finished:
            raise SagaFinishedError(saga_id, state.status.value)
        await self._coordinator.cancel_saga(saga_id)
        return CancelSagaResult(saga_id=saga_id, status=state.status.value, cancel_requested=True)

    def list_workflows(self) -> list[WorkflowDefinition]:
        return [self._workflows[name] for name in sorted(self._workflows)]
