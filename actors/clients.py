"""Calls to the orchestrator's actors by name, as the API's protocols want them: bounded, and an
unreachable actor a retryable error."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ray.exceptions import RayActorError

from orchestrator.errors import ActorUnavailableError
from orchestrator.models import RouterOverview
from orchestrator.naming import ROUTER_NAME, SAGA_COORDINATOR_NAME
from orchestrator.settings import QuotaSettings, Settings

logger = logging.getLogger(__name__)


async def call_actor(namespace: str, timeout_s: float, actor: str, method: str, *args: Any) -> Any:
    try:
        handle = ray.get_actor(actor, namespace=namespace)
        async with asyncio.timeout(timeout_s):
            return await getattr(handle, method).remote(*args)
    except (ValueError, TimeoutError, RayActorError) as exc:
        logger.warning("actor call failed", extra={"actor": actor, "method": method, "error": repr(exc)})
        raise ActorUnavailableError(actor) from None


class ActorRouterClient:
    """The router and workers, reached by name; every call bounded, failures a retryable error."""

    def __init__(self, settings: Settings) -> None:
        self._namespace = settings.namespace
        self._timeout_s = settings.router.call_timeout_s

    async def _call(self, actor: str, method: str, *args: Any) -> Any:
        return await call_actor(self._namespace, self._timeout_s, actor, method, *args)

    async def overview(self) -> RouterOverview:
        return await self._call(ROUTER_NAME, "overview")  # type: ignore[no-any-return]

    async def interrupt(self, worker: str, task_id: str) -> None:
        await self._call(worker, "cancel", task_id)

    async def scale(self, worker_type: str, workers: int) -> None:
        await self._call(ROUTER_NAME, "scale", worker_type, workers)

    async def drain(self, worker: str) -> bool:
        return bool(await self._call(ROUTER_NAME, "drain", worker))

    async def pause(self, worker_type: str, paused: bool) -> None:
        await self._call(ROUTER_NAME, "pause", worker_type, paused)

    async def preempt_task(self, task_id: str) -> bool:
        return bool(await self._call(ROUTER_NAME, "preempt_task", task_id))

    async def correct(self, task_id: str, priority: int | None, task_input: dict[str, Any] | None) -> bool:
        return bool(await self._call(ROUTER_NAME, "correct", task_id, priority, task_input))

    async def ready(self) -> bool:
        return bool(await self._call(ROUTER_NAME, "ready"))




class ActorSagaCoordinatorClient:
    """The saga coordinator, reached by name."""

    def __init__(self, settings: Settings) -> None:
        self._namespace = settings.namespace
        self._timeout_s = settings.router.call_timeout_s

    async def run_saga(self, workflow: str, saga_input: dict[str, Any], priority: int,
                       idempotency_key: str | None, agent: str | None, tenant: str | None,
                       quota: QuotaSettings | None) -> tuple[str, bool]:
        return await call_actor(self._namespace, self._timeout_s, SAGA_COORDINATOR_NAME, "run_saga",  # type: ignore[no-any-return]
                                workflow, saga_input, priority, idempotency_key, agent, tenant, quota)

    async def cancel_saga(self, saga_id: str) -> None:
        await call_actor(self._namespace, self._timeout_s, SAGA_COORDINATOR_NAME, "cancel_saga", saga_id)
