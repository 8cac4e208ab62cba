"""Worker actor: a priority mailbox feeding N slots that run tasks' tools."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time

import ray
from ray.util import metrics

from actors.offload import RayOffload
from orchestrator.adapters.artifact_store import ArtifactStore
from orchestrator.adapters.keys import ROUTER_CONSUMER
from orchestrator.adapters.provider_gate import RedisProviderGate
from orchestrator.adapters.stats_store import StatsStore
from orchestrator.adapters.task_store import TaskStore
from orchestrator.execution import Limits, RunningTasks, execute
from orchestrator.models import TaskStatus
from orchestrator.settings import Settings
from orchestrator.tasks import TaskSpec
from orchestrator.tools.base import Tool
from orchestrator.tools.registry import ToolDeps, build_tools

logger = logging.getLogger(__name__)

Mail = tuple[int, float, int, TaskSpec, "asyncio.Future[TaskStatus | None]"]


@ray.remote
class WorkerActor:
    def __init__(self, settings: Settings, name: str, worker_type: str) -> None:
        # Ray runs an async actor's __init__ inside its event loop, so the slots can start here.
        self._name = name
        self._store = TaskStore.from_settings(settings.redis)
        self._stats = StatsStore(self._store.redis, settings.redis.prefix)
        self._tools: dict[str, Tool] = build_tools(settings, worker_type, self._tool_deps(settings, worker_type))
        self._slots = settings.pools[worker_type].slots
        self._limits = Limits(settings.router.max_attempts, settings.redis.max_checkpoint_bytes)
        self._mailbox: asyncio.PriorityQueue[Mail] = asyncio.PriorityQueue()
        self._seq = itertools.count()
        self._running = RunningTasks()
        self._held: dict[str, asyncio.Future[TaskStatus | None]] = {}  # in the mailbox or running
        self._entries: dict[str, str] = {}  # task id → stream entry id, for heartbeats
        self._heartbeat_s = settings.router.heartbeat_interval_s
        self._node = ray.get_runtime_context().get_node_id()
        # Also in the Ray dashboard's metrics (Ray's Prometheus endpoint, prefixed `ray_`).
        self._tags = {"worker": name, "worker_type": worker_type}
        self._finished_metric = metrics.Counter("orchestrator_worker_tasks_finished",
                                                description="Task attempts this worker ended, by status.",
                                                tag_keys=("worker", "worker_type", "status"))
        self._busy_metric = metrics.Gauge("orchestrator_worker_busy_slots", description="Slots running a task.",
                                          tag_keys=("worker", "worker_type"))
        self._loops = [asyncio.create_task(self._slot_loop(), name=f"slot-{i}") for i in range(self._slots)]
        self._loops.append(asyncio.create_task(self._heartbeat_loop(), name="heartbeat"))

    def _tool_deps(self, settings: Settings, worker_type: str) -> ToolDeps:
        kinds = {tool.kind for tool in settings.tools.values() if tool.worker_type == worker_type}
        mcp = None
        if "mcp" in kinds:  # the SDK is a heavy import: only where an mcp tool runs
            from orchestrator.tools.mcp import McpConnections

            mcp = McpConnections()
        gate = RedisProviderGate(self._store.redis, settings.redis.prefix)
        artifacts = ArtifactStore(self._store.redis, settings.redis.prefix)
        return ToolDeps(gate=gate, offload=RayOffload(), mcp=mcp, artifacts=artifacts)

    async def run(self, task: TaskSpec) -> TaskStatus | None:
        """Queue a task in the mailbox (priority, then age) and return its final status once run."""
        future = self._held.get(task.task_id)
        if future is None:  # a redelivery of a task we already hold joins the running attempt
            future = self._held[task.task_id] = asyncio.get_running_loop().create_future()
            if task.entry_id:
                self._entries[task.task_id] = task.entry_id
            future.add_done_callback(lambda _: self._forget(task.task_id))
            await self._mailbox.put((-task.priority, task.created_at, next(self._seq), task, future))
        return await asyncio.shield(future)

    async def held(self) -> list[str]:
        """Ids of the tasks queued in the mailbox or running: a restarted router adopts them."""
        return list(self._held)

    async def wait_for(self, task_id: str) -> TaskStatus | None:
        """Wait for a task this worker holds (a restarted router re-attaching to it)."""
        future = self._held.get(task_id)
        return None if future is None else await asyncio.shield(future)

    async def cancel(self, task_id: str) -> bool:
        return task_id in self._held and self._running.interrupt(task_id, TaskStatus.CANCELLED)

    async def preempt(self, task_id: str) -> bool:
        """Interrupt a task for urgent work: its tool stops, its checkpoint stays, it returns `preempted`."""
        return task_id in self._held and self._running.interrupt(task_id, TaskStatus.PREEMPTED)

    def _forget(self, task_id: str) -> None:
        self._held.pop(task_id, None)
        self._entries.pop(task_id, None)

    async def _heartbeat_loop(self) -> None:
        """Keep the stream entries of held tasks fresh; the router's sweep takes back silent ones."""
        while True:
            await asyncio.sleep(self._heartbeat_s)  # a period, not synchronisation
            try:
                where = {"pid": os.getpid(), "node": self._node, "time": time.time()}
                await self._store.heartbeat(ROUTER_CONSUMER, list(self._entries.values()), self._name, where)
            except Exception:
                logger.warning("heartbeat failed", exc_info=True)

    async def _slot_loop(self) -> None:
        while True:
            *_, task, future = await self._mailbox.get()
            try:
                self._busy_metric.set(len(self._running) + 1, tags=self._tags)
                status = await execute(task, self._tools.get(task.tool), self._store, self._name, time.time,
                                       self._running, self._limits, self._stats)
                self._busy_metric.set(len(self._running), tags=self._tags)
                if status is not None:
                    self._finished_metric.inc(tags={**self._tags, "status": status.value})
                if not future.done():
                    future.set_result(status)
            except Exception as exc:  # Redis down after retries: the router requeues the task
                logger.warning("task attempt failed to complete", extra={"task_id": task.task_id}, exc_info=True)
                if not future.done():
                    future.set_exception(exc)
