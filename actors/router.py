"""Router actor: the consumer-group reader of `mcp_tasks`; holds the priority matrix, fills worker slots, preempts."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError

from actors.worker import WorkerActor
from orchestrator.adapters.keys import ROUTER_CONSUMER as CONSUMER
from orchestrator.adapters.task_store import TaskStore
from orchestrator.models import (
    PoolStatus,
    RouterOverview,
    RunningTask,
    TaskStatus,
    WorkerStatus,
)
from orchestrator.naming import worker_name
from orchestrator.recovery import Held, sweep
from orchestrator.routing import (
    Aging,
    ReadyQueues,
    Running,
    WorkerLoad,
    choose_victim,
    choose_worker,
)
from orchestrator.settings import Settings
from orchestrator.tasks import TaskSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Assignment:
    task: TaskSpec
    since: float


@dataclass
class WorkerSlot:
    name: str
    worker_type: str
    handle: Any
    slots: int
    capacity: int  # slots + prefetch
    assigned: dict[str, Assignment] = field(default_factory=dict)
    draining: bool = False  # takes no new tasks; retired once its tasks are done
    ready: bool = False  # placed and constructed: a new worker may wait for a node for a while


@ray.remote
class RouterActor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._store = TaskStore.from_settings(settings.redis)
        self._ready = ReadyQueues(Aging(settings.router.aging_interval_s))
        self._workers: dict[str, WorkerSlot] = {}
        self._preemptions: dict[str, int] = {}  # task id → times preempted (bounds cascades)
        self._preempting: set[str] = set()  # victims told to stop, not yet returned
        self._paused: set[str] = set()  # worker types not dispatched
        self._clock = time.time
        self._started = asyncio.Event()
        # Ray runs an async actor's __init__ in its event loop: a restarted router resumes by itself.
        self._background: list[asyncio.Task[None]] = [
            asyncio.create_task(self._consume(), name="consume"),
            asyncio.create_task(self._trim_loop(), name="trim"),
            asyncio.create_task(self._sweep_loop(), name="sweep"),
        ]

    async def start(self) -> None:
        """Wait until the pools are up and consumption has begun."""
        await self._started.wait()

    async def ready(self) -> bool:
        await self._started.wait()
        return True

    async def overview(self) -> RouterOverview:
        workers = [
            WorkerStatus(name=w.name, worker_type=w.worker_type, slots=w.slots,
                         running=min(len(w.assigned), w.slots), queued=max(len(w.assigned) - w.slots, 0),
                         draining=w.draining)
            for w in self._workers.values()
        ]
        pools = [
            PoolStatus(
                worker_type=worker_type,
                workers=sum(1 for w in workers if w.worker_type == worker_type),
                slots=sum(w.slots for w in workers if w.worker_type == worker_type),
                running=sum(w.running for w in workers if w.worker_type == worker_type),
                queued=self._ready.depth(worker_type),
                paused=worker_type in self._paused,
            )
            for worker_type in self._settings.pools
        ]
        running = [
            RunningTask(task_id=a.task.task_id, tool=a.task.tool, priority=a.task.priority, worker=w.name,
                        agent=a.task.agent, tenant=a.task.tenant, since=a.since,
                        preemptions=self._preemptions.get(a.task.task_id, 0))
            for w in self._workers.values() for a in w.assigned.values()
        ]
        matrix = {t: {str(p): n for p, n in self._ready.depth_by_priority(t).items()} for t in self._settings.pools}
        alive = [node for node in ray.nodes() if node.get("Alive")]
        cpus = sum(node.get("Resources", {}).get("CPU", 0.0) for node in alive)
        return RouterOverview(pools=pools, workers=workers, matrix=matrix, running=running, nodes=len(alive),
                              cluster_cpus=cpus)

    # --- internals ------------------------------------------------------------------------------

    async def scale(self, worker_type: str, workers: int) -> None:
        """Resize a pool: new workers start at once; surplus ones drain (no new tasks, finish theirs, exit)."""
        await self._store.save_pool_size(worker_type, workers)
        self._resize(worker_type, workers)
        self._dispatch()

    async def drain(self, worker: str) -> bool:
        """Take one worker out of its pool: it finishes what it holds, then exits; False if unknown."""
        slot = self._workers.get(worker)
        if slot is None:
            return False
        slot.draining = True
        live = sum(1 for w in self._workers.values() if w.worker_type == slot.worker_type and not w.draining)
        await self._store.save_pool_size(slot.worker_type, live)
        self._retire_idle()
        return True

    async def pause(self, worker_type: str, paused: bool) -> None:
        """Stop (or resume) dispatching a worker type's queued tasks; running ones go on."""
        await self._store.save_paused(worker_type, paused)
        (self._paused.add if paused else self._paused.discard)(worker_type)
        self._dispatch()

    async def correct(self, task_id: str, priority: int | None, task_input: dict[str, Any] | None) -> bool:
        """A queued task was corrected (inject): requeue our copy with its new priority and input."""
        task = self._ready.get(task_id)
        if task is None:
            return False
        changes: dict[str, Any] = {"priority": priority} if priority is not None else {}
        if task_input is not None:
            changes["input"] = task_input
        self._ready.replace(dataclasses.replace(task, **changes))
        self._dispatch()
        return True

    async def preempt_task(self, task_id: str) -> bool:
        """Preempt a running task by hand: it is checkpointed and requeued; False if it is not running."""
        for worker in self._workers.values():
            if task_id in worker.assigned:
                self._background.append(asyncio.create_task(self._preempt(worker, task_id)))
                return True
        return False

    def _resize(self, worker_type: str, workers: int) -> None:
        pool = sorted((w for w in self._workers.values() if w.worker_type == worker_type),
                      key=lambda w: _index(w.name))
        live = [w for w in pool if not w.draining]
        for surplus in live[workers:]:
            surplus.draining = True
        for revived in [w for w in pool if w.draining][: max(0, workers - len(live))]:
            revived.draining = False  # a draining worker is the cheapest new one
        missing = workers - sum(1 for w in pool if not w.draining)
        taken = {_index(w.name) for w in pool}
        free = (i for i in itertools.count() if i not in taken)
        for _ in range(max(0, missing)):
            self._spawn(worker_type, next(free))
        self._retire_idle()

    def _spawn(self, worker_type: str, index: int, draining: bool = False) -> None:
        pool = self._settings.pools[worker_type]
        name = worker_name(worker_type, index)
        handle = WorkerActor.options(  # type: ignore[attr-defined]
            name=name, namespace=self._settings.namespace, lifetime="detached", get_if_exists=True,
            max_restarts=-1, max_concurrency=10_000, num_cpus=pool.num_cpus,
        ).remote(self._settings, name, worker_type)
        slot = WorkerSlot(name, worker_type, handle, pool.slots, pool.slots + pool.prefetch, draining=draining)
        self._workers[name] = slot
        self._background.append(asyncio.create_task(self._await_ready(slot), name=f"ready-{name}"))

    async def _await_ready(self, worker: WorkerSlot) -> None:
        """Give a worker tasks only once it runs: until Ray places it (maybe on a node the autoscaler is
        still adding), tasks assigned to it would wait behind it while other workers are free."""
        while not worker.ready and self._workers.get(worker.name) is worker:
            try:
                await worker.handle.held.remote()
                worker.ready = True
            except RayActorError:
                await asyncio.sleep(1.0)  # it died while starting; Ray restarts it
        self._dispatch()

    def _retire_idle(self) -> None:
        """Workers that were draining and hold nothing exit (for good: no restart)."""
        for worker in [w for w in self._workers.values() if w.draining and not w.assigned]:
            logger.info("worker drained; retiring it", extra={"worker": worker.name})
            del self._workers[worker.name]
            with contextlib.suppress(Exception):
                ray.kill(worker.handle, no_restart=True)

    async def _spawn_workers(self) -> None:
        """The pools as last planned (operators and the SLA policy may have resized them), adopting the
        surplus workers a previous router was draining so that their tasks are not run twice."""
        sizes, self._paused = await self._store.pool_plan()
        for worker_type, pool in self._settings.pools.items():
            wanted = sizes.get(worker_type, pool.workers)
            for index in range(wanted):
                self._spawn(worker_type, index)
            for index in itertools.count(wanted):
                try:
                    ray.get_actor(worker_name(worker_type, index), namespace=self._settings.namespace)
                except ValueError:
                    break
                self._spawn(worker_type, index, draining=True)

    async def _consume(self) -> None:
        backoff_s = 0.2
        while True:  # Redis may be away when we (re)start: wait for it rather than crash-loop
            try:
                if not self._workers:
                    await self._spawn_workers()
                await self._store.ensure_group()
                await self._recover()
                self._retire_idle()
                break
            except Exception:
                logger.warning("cannot reach the task store yet; retrying", exc_info=True)
                await asyncio.sleep(backoff_s)  # backoff, not synchronisation
                backoff_s = min(backoff_s * 2, 5.0)
        self._started.set()
        self._dispatch()
        router = self._settings.router
        while True:
            try:
                tasks = await self._store.read(CONSUMER, count=router.read_count, block_ms=router.read_block_ms)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("reading the task stream failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)  # backoff while Redis is away
                continue
            for task in tasks:
                self._ready.push(task)
            self._dispatch()

    async def _recover(self) -> None:
        """After a restart: re-attach to tasks live workers still hold, requeue the rest of our pending entries."""
        held: dict[str, WorkerSlot] = {}
        for worker in self._workers.values():
            try:
                async with asyncio.timeout(self._settings.router.call_timeout_s):
                    for task_id in await worker.handle.held.remote():
                        held[task_id] = worker
                worker.ready = True
            except (RayActorError, TimeoutError):
                logger.warning("worker did not report its tasks", extra={"worker": worker.name})
        for task in await self._store.read(CONSUMER, count=1_000_000, block_ms=None, pending=True):
            worker = held.get(task.task_id)
            if worker is None:
                self._ready.push(task)
            else:
                self._assign(worker, task, adopt=True)

    def _dispatch(self) -> None:
        """Fill free worker capacity from the ready queues; urgent tasks preempt when no slot is free."""
        now = self._clock()
        for worker_type in self._settings.pools:
            if worker_type in self._paused:
                continue
            pool = [w for w in self._workers.values() if w.worker_type == worker_type and w.ready and not w.draining]
            while (task := self._ready.peek(worker_type, now)) is not None:
                name = choose_worker(WorkerLoad(w.name, w.capacity, len(w.assigned)) for w in pool)
                if name is None and task.priority >= self._settings.router.preempt_threshold:
                    name = self._preempt_for(task, pool)
                if name is None:
                    break
                self._ready.pop(worker_type, now)
                self._assign(self._workers[name], task)
        self._background = [t for t in self._background if not t.done()]

    def _preempt_for(self, urgent: TaskSpec, pool: list[WorkerSlot]) -> str | None:
        """Tell the chosen victim's worker to preempt it; the urgent task takes its slot (worker name)."""
        tools = self._settings.tools
        running = [
            Running(task_id=a.task.task_id, worker=w.name, priority=a.task.priority,
                    preemptible=a.task.tool in tools and tools[a.task.tool].preemptible,
                    preemptions=self._preemptions.get(a.task.task_id, 0), dispatched_at=a.since)
            for w in pool for a in w.assigned.values() if a.task.task_id not in self._preempting
        ]
        victim = choose_victim(running, urgent.priority, self._settings.router.max_preemptions)
        if victim is None:
            return None
        self._preempting.add(victim.task_id)
        worker = self._workers[victim.worker]
        logger.info("preempting", extra={"victim": victim.task_id, "for": urgent.task_id, "worker": worker.name})
        self._background.append(asyncio.create_task(self._preempt(worker, victim.task_id)))
        return worker.name

    async def _preempt(self, worker: WorkerSlot, task_id: str) -> None:
        with contextlib.suppress(RayActorError):
            await worker.handle.preempt.remote(task_id)

    def _assign(self, worker: WorkerSlot, task: TaskSpec, adopt: bool = False) -> None:
        worker.assigned[task.task_id] = Assignment(task, self._clock())
        self._background.append(asyncio.create_task(self._run_on(worker, task, adopt)))

    async def _run_on(self, worker: WorkerSlot, task: TaskSpec, adopt: bool) -> None:
        status: TaskStatus | None = None
        try:
            if adopt:
                status = await worker.handle.wait_for.remote(task.task_id)
            else:
                status = await worker.handle.run.remote(task)
        except RayActorError:
            # The worker died mid-task: Ray restarts it; the task goes back to the queue and its next
            # attempt supersedes the lost one (fencing by attempt number).
            logger.warning("worker died; requeueing its task", extra={"worker": worker.name, "task_id": task.task_id})
            await self._requeue_lost(task, f"worker {worker.name} died or was restarted")
        except Exception:
            logger.warning("task attempt did not complete; requeueing", extra={"task_id": task.task_id},
                           exc_info=True)
            await self._requeue_lost(task, "the attempt did not complete")
        finally:
            worker.assigned.pop(task.task_id, None)
            self._preempting.discard(task.task_id)
        if status is TaskStatus.PREEMPTED:
            self._preemptions[task.task_id] = self._preemptions.get(task.task_id, 0) + 1
            self._ready.push(task)  # keeps its place by age; resumes from its checkpoint
        else:
            self._preemptions.pop(task.task_id, None)
        self._retire_idle()
        self._dispatch()

    async def _requeue_lost(self, task: TaskSpec, reason: str) -> None:
        """Queue a task whose attempt was lost, noting why (named in its dead letter if attempts run out)."""
        with contextlib.suppress(Exception):  # Redis may be what failed; the task is requeued regardless
            await self._store.note_failure(task.task_id, reason, self._clock())
        self._ready.push(task)

    async def _sweep_loop(self) -> None:
        interval_s = max(self._settings.router.visibility_timeout_s / 3, 0.5)
        while True:
            await asyncio.sleep(interval_s)  # a period, not synchronisation
            try:
                await self._sweep()
            except Exception:
                logger.warning("stuck-task sweep failed", exc_info=True)

    async def _sweep(self) -> None:
        """Act on entries silent past the visibility timeout (XPENDING IDLE); the policy is `recovery.sweep`."""
        timeout_s = self._settings.router.visibility_timeout_s
        idle = await self._store.idle_entries(int(timeout_s * 1000))
        if not idle:
            return
        held = [Held(a.task.entry_id or "", w.name, a.since) for w in self._workers.values() for a in w.assigned.values()]
        locations = {w: await self._store.worker_location(w) for w in {h.worker for h in held}}
        beats = {w: float(where["time"]) for w, where in locations.items() if where}
        decision = sweep(idle, held, beats, self._clock(), timeout_s)
        for name in decision.restart:
            await self._restart_silent(self._workers[name], locations.get(name))
        for task in await self._store.claim(CONSUMER, decision.claim):  # claiming resets their idle time
            if task.task_id not in self._ready and not any(task.task_id in w.assigned for w in self._workers.values()):
                await self._requeue_lost(task, "its entry was orphaned (no live worker held it)")

    async def _restart_silent(self, worker: WorkerSlot, where: dict[str, Any] | None) -> None:
        """Kill a worker that stopped heartbeating; Ray restarts it and its tasks come back through the
        worker-died path. ray.kill alone waits long for a process that cannot answer (e.g. SIGSTOPped),
        so a worker on this node is also killed by its pid."""
        logger.warning("worker silent past the visibility timeout; restarting it", extra={"worker": worker.name})
        ray.kill(worker.handle, no_restart=False)
        if where and where.get("node") == ray.get_runtime_context().get_node_id():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(where["pid"]), signal.SIGKILL)

    async def _trim_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.redis.stream_trim_interval_s)  # a period, not synchronisation
            try:
                await self._store.trim()
            except Exception:
                logger.warning("stream trim failed", exc_info=True)


def _index(name: str) -> int:
    return int(name.rsplit(":", 1)[1])
