"""The saga API's behaviour: start, look up, cancel sagas, and list the workflows they can run."""

from __future__ import annotations

from typing import Any, Protocol

from orchestrator.adapters.saga_store import SagaStore
from orchestrator.auth import Principal, max_priority, quota_of
from orchestrator.errors import InvalidParamsError, SagaFinishedError, SagaNotFoundError
from orchestrator.intake import json_size, priority_refusal
from orchestrator.models import CancelSagaResult, RunSagaParams, RunSagaResult
from orchestrator.saga import SagaState, WorkflowDefinition
from orchestrator.settings import QuotaSettings, Settings
from orchestrator.tools.registry import schema_errors


class CoordinatorClient(Protocol):
    """What the API needs from the saga coordinator; the deployment implements it with actor calls."""

    async def run_saga(self, workflow: str, saga_input: dict[str, Any], priority: int,
                       idempotency_key: str | None, agent: str | None, tenant: str | None,
                       quota: QuotaSettings | None) -> tuple[str, bool]: ...

    async def cancel_saga(self, saga_id: str) -> None: ...


class SagaService:
    def __init__(self, settings: Settings, store: SagaStore, coordinator: CoordinatorClient) -> None:
        self._auth = settings.auth
        self._threshold = settings.router.preempt_threshold
        self._workflows = settings.all_workflows()
        self._max_input_bytes = settings.limits.max_context_bytes
        self._store = store
        self._coordinator = coordinator

    async def run_saga(self, params: RunSagaParams, who: Principal) -> RunSagaResult:
        """Start a saga of the caller's tenant (counted against its submit rate unless the caller is an admin)."""
        workflow = self._workflows.get(params.workflow)
        if workflow is None:
            known = ", ".join(sorted(self._workflows))
            raise InvalidParamsError({"params.workflow": f"unknown workflow {params.workflow!r}; known: {known}"})
        errors = schema_errors(workflow.input_schema, params.input, "params.input")
        if json_size(params.input) > (limit := self._max_input_bytes):
            errors["params.input"] = f"larger than {limit} bytes"
        quota = quota_of(who, self._auth)
        if params.priority > (most := max_priority(who, quota, self._threshold)):  # its steps run at it
            errors["params.priority"] = priority_refusal(params.priority, most)
        if errors:
            raise InvalidParamsError(errors)
        saga_id, duplicate = await self._coordinator.run_saga(
            params.workflow, params.input, params.priority, params.idempotency_key, params.agent, who.tenant, quota)
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
