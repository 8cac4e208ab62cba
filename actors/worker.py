"""Worker actor: a Ray shell around `orchestrator.worker.Runner` — it takes tasks from Redis for its free
slots, runs their tools and settles them in batches; here are its heartbeats, wake-ups and the calls the
router and the API make (cancel, preempt, drain)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from typing import Any

import ray
from ray.util import metrics

from actors.offload import RayOffload
from orchestrator import tracing
from orchestrator.adapters.artifact_store import ArtifactStore
from orchestrator.adapters.provider_gate import RedisProviderGate
from orchestrator.adapters.task_store import TakePolicy, TaskStore
from orchestrator.models import TaskStatus
from orchestrator.settings import Settings
from orchestrator.tools import code
from orchestrator.tools.base import Tool
from orchestrator.tools.registry import ToolDeps, build_tools
from orchestrator.worker import Limits, Runner

logger = logging.getLogger(__name__)


def _exit_if_failed(loop: asyncio.Task[None]) -> None:
    """A loop that ends (a bug) would leave a worker that looks alive and takes nothing: exit, so that Ray
    restarts it and its attempts go back to the queue."""
    if not loop.cancelled():
        logger.critical("worker loop ended; exiting", extra={"loop": loop.get_name()}, exc_info=loop.exception())
        os._exit(1)


@ray.remote
class WorkerActor:
    def __init__(self, settings: Settings, name: str, worker_type: str) -> None:
        # Ray runs an async actor's __init__ inside its event loop, so the loops can start here.
        self._name, self._worker_type = name, worker_type
        tracing.configure(settings.tracing.env, "worker")
        code.configure(settings.sandbox)  # before any sandbox tool runs
        self._store = TaskStore.from_settings(settings.redis)
        self._tools: dict[str, Tool] = build_tools(settings, worker_type, self._tool_deps(settings, worker_type))
        pool = settings.pools[worker_type]
        router = settings.router
        tools = {n: t for n, t in settings.tools.items() if t.worker_type == worker_type}
        policy = TakePolicy(
            max_attempts=router.max_attempts, max_preemptions=router.max_preemptions,
            aging_interval_s=router.aging_interval_s,
            fixed_tools=frozenset(n for n, t in tools.items() if not t.preemptible or not self._tools[n].preemptible),
            restarting_tools=frozenset(n for n, tool in self._tools.items() if not tool.resumable),
            urgent_priority=router.preempt_threshold)
        self._slots = pool.slots
        self._heartbeat_s = router.heartbeat_interval_s
        self._node = ray.get_runtime_context().get_node_id()
        # Also in the Ray dashboard's metrics (Ray's Prometheus endpoint, prefixed `ray_`).
        self._tags = {"worker": name, "worker_type": worker_type}
        self._finished_metric = metrics.Counter("orchestrator_worker_tasks_finished",
                                                description="Task attempts this worker ended, by status.",
                                                tag_keys=("worker", "worker_type", "status"))
        self._busy_metric = metrics.Gauge("orchestrator_worker_busy_slots", description="Slots running a task.",
                                          tag_keys=("worker", "worker_type"))
        self._runner = Runner(self._store, self._tools, name, worker_type, pool.slots, policy,
                              Limits(router.max_attempts, settings.redis.max_checkpoint_bytes), time.time,
                              self._settled)
        self._loops = [asyncio.create_task(self._runner.serve(), name="serve"),
                       asyncio.create_task(self._heartbeats(), name="heartbeat"),
                       asyncio.create_task(self._listen(), name="wake-ups")]
        for loop in self._loops:
            loop.add_done_callback(_exit_if_failed)

    def _tool_deps(self, settings: Settings, worker_type: str) -> ToolDeps:
        kinds = {tool.kind for tool in settings.tools.values() if tool.worker_type == worker_type}
        mcp = None
        if "mcp" in kinds:  # the SDK is a heavy import: only where an mcp tool runs
            from orchestrator.tools.mcp import McpConnections

            mcp = McpConnections()
        gate = RedisProviderGate(self._store.redis, settings.redis.prefix)
        artifacts = ArtifactStore(self._store.redis, settings.redis.prefix, settings.redis.artifact_retention_s)
        return ToolDeps(gate=gate, offload=RayOffload(), mcp=mcp, artifacts=artifacts)

    def _settled(self, statuses: Counter[str], busy: int) -> None:
        for status, n in statuses.items():
            self._finished_metric.inc(n, tags={**self._tags, "status": status})
        self._busy_metric.set(busy, tags=self._tags)

    async def ready(self) -> bool:
        """Constructed (and so placed by Ray): the pool manager waits for this before counting on it."""
        return True

    async def held(self) -> list[str]:
        """Ids of the tasks it runs or has yet to settle."""
        return self._runner.held()

    async def cancel(self, task_id: str) -> bool:
        return self._runner.interrupt(task_id, TaskStatus.CANCELLED)

    async def preempt(self, task_id: str) -> bool:
        """Interrupt a task for urgent work: its tool stops, its checkpoint stays, it goes back to the queue."""
        return self._runner.interrupt(task_id, TaskStatus.PREEMPTED)

    async def free(self) -> int:
        """Slots it could fill now (0 while paused or draining)."""
        return self._runner.free_slots()

    async def undrain(self) -> None:
        """Back in the pool (it was draining, and the pool grew again)."""
        self._runner.draining = False
        self._runner.wake()

    async def drain(self) -> None:
        """Take nothing more; return once everything held is settled (then the pool manager retires it)."""
        self._runner.draining = True
        await self._beat()
        await self._runner.idle.wait()
        tracing.flush()  # the pool manager kills a drained worker: no exit handler would run

    def _state(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "node": self._node, "time": time.time()}

    async def _beat(self) -> None:
        await self._store.heartbeat(self._name, self._state(), self._runner.entries())

    async def _heartbeats(self) -> None:
        """Keep the delivery entries of held attempts fresh (the router's sweep takes back silent ones) and the
        worker's state current."""
        while True:
            try:
                await self._beat()
            except Exception:
                logger.warning("heartbeat failed", exc_info=True)
            await asyncio.sleep(self._heartbeat_s)  # a period, not synchronisation

    async def _listen(self) -> None:
        """Wake-ups: tasks queued for this worker type, or pools paused/resumed."""
        keys = self._store.keys
        channels = (keys.wake(self._worker_type), keys.control)
        while True:
            pubsub = self._store.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*channels)
                self._runner.paused = self._worker_type in await self._store.paused()
                self._runner.wake()
                async for message in pubsub.listen():
                    if message["channel"] == keys.control:
                        self._runner.paused = self._worker_type in await self._store.paused()
                    self._runner.wake()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("wake-up subscription lost; reconnecting", exc_info=True)
                await asyncio.sleep(1.0)  # backoff before reconnecting; the runner polls meanwhile
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
