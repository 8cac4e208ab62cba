"""Calls to the orchestrator's actors by name, as the API's protocols want them: bounded, and an
unreachable actor a retryable error. What Redis knows is read from Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from orchestrator.adapters.task_store import TaskStore
from orchestrator.errors import ActorUnavailableError, OrchestratorError
from orchestrator.models import RouterOverview
from orchestrator.naming import SAGA_COORDINATOR_NAME
from orchestrator.overview import overview
from orchestrator.saga import SagaState
from orchestrator.settings import QuotaSettings, Settings

logger = logging.getLogger(__name__)


async def call_actor(namespace: str, timeout_s: float, actor: str, method: str, *args: Any) -> Any:
    try:
        handle = ray.get_actor(actor, namespace=namespace)
        async with asyncio.timeout(timeout_s):
            return await getattr(handle, method).remote(*args)
    except RayTaskError as exc:  # the actor raised: our own error crosses as itself, not as Ray's wrapper of it
        if isinstance(exc.cause, OrchestratorError):
            raise exc.cause from None
        raise
    except (ValueError, TimeoutError, RayActorError) as exc:
        logger.warning("actor call failed", extra={"actor": actor, "method": method, "error": repr(exc)})
        raise ActorUnavailableError(actor) from None


def cluster_size() -> tuple[int, float]:
    """Alive Ray nodes and their CPUs."""
    alive = [node for node in ray.nodes() if node.get("Alive")]
    return len(alive), sum(node.get("Resources", {}).get("CPU", 0.0) for node in alive)


class ActorRouterClient:
    """The pool manager (whichever router holds the pools lease) and the workers, reached by name; every call
    bounded, failures a retryable error."""

    def __init__(self, settings: Settings, store: TaskStore) -> None:
        self._settings = settings
        self._store = store
        self._namespace = settings.namespace
        self._timeout_s = settings.router.call_timeout_s

    async def _manager(self) -> str:
        holder = await self._store.redis.get(self._store.keys.pool_lease)
        if not holder:
            raise ActorUnavailableError("router")
        return str(holder).rsplit(":", 1)[0].rsplit(".", 1)[0]  # `<router>.<incarnation>:<token>`

    async def _call(self, actor: str, method: str, *args: Any) -> Any:
        return await call_actor(self._namespace, self._timeout_s, actor, method, *args)

    async def overview(self) -> RouterOverview:
        nodes, cpus = await asyncio.to_thread(cluster_size)
        return await overview(self._store, self._settings, nodes, cpus)

    async def interrupt(self, worker: str, task_id: str) -> None:
        await self._call(worker, "cancel", task_id)

    async def scale(self, worker_type: str, workers: int) -> None:
        await self._call(await self._manager(), "scale", worker_type, workers)

    async def drain(self, worker: str) -> bool:
        return bool(await self._call(await self._manager(), "drain", worker))

    async def pause(self, worker_type: str, paused: bool) -> None:
        await self._call(await self._manager(), "pause", worker_type, paused)

    async def preempt_task(self, task_id: str) -> bool:
        claimed = await self._store.claim_victim(task_id, time.time())
        return claimed is not None and bool(await self._call(claimed[0], "preempt", task_id))

    async def ready(self) -> bool:
        """A router manages the pools."""
        return bool(await self._store.redis.exists(self._store.keys.pool_lease))


class ActorSagaCoordinatorClient:
    """The saga coordinator, reached by name."""

    def __init__(self, settings: Settings) -> None:
        self._namespace = settings.namespace
        self._timeout_s = settings.router.call_timeout_s

    async def start_saga(self, state: SagaState, idempotency_key: str | None,
                         quota: QuotaSettings | None) -> tuple[str, bool]:
        return await call_actor(self._namespace, self._timeout_s, SAGA_COORDINATOR_NAME, "start_saga",  # type: ignore[no-any-return]
                                state, idempotency_key, quota)

    async def cancel_saga(self, saga_id: str) -> None:
        await call_actor(self._namespace, self._timeout_s, SAGA_COORDINATOR_NAME, "cancel_saga", saga_id)
