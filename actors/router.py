"""Router actor: one of `router.replicas` shards of the routing layer. It owns a share of the task shards through
leases with fencing tokens (sweeping their silent deliveries back into the queue) and, while it holds the
pools lease, manages the worker pools and fires due schedules. It holds no queue: workers take tasks from Redis
themselves."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from typing import Any

import ray
from ray.exceptions import RayActorError

from actors.clients import ActorRouterClient
from actors.pool_manager import PoolManager
from orchestrator import tracing
from orchestrator.adapters.channels import Channels
from orchestrator.adapters.schedule_store import ScheduleStore
from orchestrator.adapters.task_store import TaskStore
from orchestrator.adapters.waiter import CompletionWaiter
from orchestrator.delayed import next_wake_s, promote_due
from orchestrator.errors import ActorUnavailableError
from orchestrator.naming import router_name
from orchestrator.recovery import SLOW_CALL_S, may_sweep, orphaned, stuck
from orchestrator.routing import lease_moves
from orchestrator.schedule_service import FencedError, ScheduleService
from orchestrator.service import TaskService
from orchestrator.settings import Settings

logger = logging.getLogger(__name__)


@ray.remote
class RouterActor:
    def __init__(self, settings: Settings, index: int = 0) -> None:
        self._settings = settings
        self._name = router_name(index)
        tracing.configure(settings.tracing.env, "router")  # schedules submit tasks
        # A lease is held by an incarnation: a restarted router waits for its predecessor's leases to expire and
        # gets new fencing tokens, so the dead one's writes stay refused.
        self._holder = f"{self._name}.{uuid.uuid4().hex[:8]}"
        self._index = index
        self._store = TaskStore.from_settings(settings.redis)
        self._owned: dict[int, str] = {}  # shard → our lease value (`<name>:<fencing token>`)
        self._pools: PoolManager | None = None
        self._pools_holder: str | None = None  # our pools lease value while we hold it: the schedules' fence
        tasks = TaskService(settings, self._store, CompletionWaiter(self._store.redis, self._store.keys.finished),
                            ActorRouterClient(settings, self._store), time.time)
        self._schedules = ScheduleService(settings, ScheduleStore(self._store.redis, settings.redis.prefix), tasks,
                                          time.time)
        self._reachable_since = time.time()
        self._started = asyncio.Event()
        # Ray runs an async actor's __init__ in its event loop: a restarted router resumes by itself.
        self._loops = [asyncio.create_task(self._lease_loop(), name="leases"),
                       asyncio.create_task(self._sweep_loop(), name="sweep"),
                       asyncio.create_task(self._schedule_loop(), name="schedules"),
                       asyncio.create_task(self._promote_loop(), name="promote")]

    async def ready(self) -> bool:
        """Leases taken for the first time (when this router is the pool manager: its pools are spawned)."""
        await self._started.wait()
        return True

    async def owned(self) -> dict[str, Any]:
        """What this router holds: its shards and whether it manages the pools."""
        return {"shards": sorted(self._owned), "pools": self._pools is not None}

    # --- the pool manager's API (only the holder of the pools lease answers) ----------------------

    def _manager(self) -> PoolManager:
        if self._pools is None:
            raise ActorUnavailableError(self._name)
        return self._pools

    async def scale(self, worker_type: str, workers: int) -> None:
        await self._manager().scale(worker_type, workers)

    async def drain(self, worker: str) -> bool:
        return await self._manager().drain(worker)

    async def pause(self, worker_type: str, paused: bool) -> None:
        await self._manager().pause(worker_type, paused)

    async def workers(self) -> list[str]:
        """The workers of the pools (draining ones included)."""
        return sorted(self._manager().members)

    # --- leases -----------------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        period_s = self._settings.router.lease_s / 3
        while True:
            began = time.time()
            try:
                await self._store.ensure_groups()
                await self._renew()
                self._started.set()
            except Exception:
                self._reachable_since = time.time() + period_s
                logger.warning("lease renewal failed; retrying", extra={"router": self._name}, exc_info=True)
            self._timed(began)
            await asyncio.sleep(period_s)  # a period, not synchronisation

    async def _renew(self) -> None:
        """Keep our leases, take over the shards of routers that are down, give shards back to their router."""
        router = self._settings.router
        now = time.time()
        seen = await self._store.routers_seen()
        alive = {i for i in range(router.replicas) if now - seen.get(router_name(i), 0.0) < router.lease_s}
        await self._store.router_heartbeat(self._name, now)
        alive.add(self._index)
        take, give = lease_moves(self._store.shards, router.replicas, self._index, set(self._owned), alive)
        for shard in give:
            k = self._store.shard_keys(shard)
            await self._store.lease(k.lease, k.fence, self._holder, router.lease_s, "release")
            del self._owned[shard]
            logger.info("gave a shard back", extra={"router": self._name, "shard": shard})
        for shard in take:
            k = self._store.shard_keys(shard)
            holder = await self._store.lease(k.lease, k.fence, self._holder, router.lease_s)
            if holder is None:
                if self._owned.pop(shard, None) is not None:
                    logger.warning("lost the lease of a shard", extra={"router": self._name, "shard": shard})
                continue
            if shard not in self._owned:
                logger.info("took the lease of a shard", extra={"router": self._name, "shard": shard})
            self._owned[shard] = holder
        await self._renew_pools(router.lease_s)

    async def _renew_pools(self, ttl_s: float) -> None:
        keys = self._store.keys
        holder = await self._store.lease(keys.pool_lease, keys.pool_fence, self._holder, ttl_s)
        self._pools_holder = holder
        if holder is None and self._pools is not None:
            logger.warning("lost the pools lease", extra={"router": self._name})
            self._pools.stop()
            self._pools = None
        elif holder is not None and self._pools is None:
            logger.info("managing the pools", extra={"router": self._name})
            self._pools = PoolManager(self._settings, self._store)
            await self._pools.start()

    # --- schedules --------------------------------------------------------------------------------

    async def _schedule_loop(self) -> None:
        """While this router holds the pools lease, fire the due ticks of schedules (each exactly once: see
        `ScheduleService`)."""
        while True:
            await asyncio.sleep(self._settings.router.schedule_interval_s)  # a period, not synchronisation
            holder = self._pools_holder
            if holder is None:
                continue
            try:
                await self._schedules.fire_due(holder)
            except FencedError:
                logger.warning("fenced: the pools lease moved on", extra={"router": self._name})
                self._pools_holder = None
            except Exception:
                logger.warning("firing schedules failed; retrying", extra={"router": self._name}, exc_info=True)

    # --- delayed tasks ----------------------------------------------------------------------------

    async def _promote_loop(self) -> None:
        """Queue the delayed tasks of our shards as they come due: asleep until the next one due, woken when a
        task is scheduled (pub/sub), and at least every `router.promote_interval_s` (a message lost while the
        subscription reconnects costs no more)."""
        router, pools = self._settings.router, list(self._settings.pools)
        async with Channels(self._store.redis).listen(self._store.keys.scheduled) as scheduled:
            while True:
                try:
                    next_due = await promote_due(self._store, list(self._owned), pools, time.time,
                                                 router.preempt_threshold)
                except Exception:
                    logger.warning("promoting delayed tasks failed; retrying", extra={"router": self._name},
                                   exc_info=True)
                    await asyncio.sleep(1.0)  # backoff while Redis is away
                    continue
                with contextlib.suppress(TimeoutError):  # asleep until due, or woken by a newly scheduled task
                    await asyncio.wait_for(scheduled.get(), next_wake_s(time.time(), next_due,
                                                                        router.promote_interval_s))
                while not scheduled.empty():  # one look serves every message that came meanwhile
                    scheduled.get_nowait()

    # --- the sweep --------------------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        router = self._settings.router
        interval_s = max(router.visibility_timeout_s / 3, 0.2)
        while True:
            await asyncio.sleep(interval_s)  # a period, not synchronisation
            for shard, holder in list(self._owned.items()):
                began = time.time()
                try:
                    await self._store.deliver_outbox(shard, time.time())
                    await self._store.prune_index(shard, time.time())
                    await self._sweep(shard, holder)
                except Exception:
                    self._reachable_since = time.time()
                    logger.warning("stuck-task sweep failed", extra={"shard": shard}, exc_info=True)
                self._timed(began)

    def _timed(self, began: float) -> None:
        """Redis calls that took long were retried through an outage (the client hides it): idle times since
        then are not the workers' silence."""
        if time.time() - began > SLOW_CALL_S:
            self._reachable_since = max(self._reachable_since, time.time())

    async def _sweep(self, shard: int, holder: str) -> None:
        """Find deliveries nobody touched past the visibility timeout, per worker (consumer), and put their
        tasks back in the queue — restarting a worker that stopped heartbeating."""
        router = self._settings.router
        timeout_s, now = router.visibility_timeout_s, time.time()
        if not may_sweep(now, self._reachable_since, timeout_s, router.heartbeat_interval_s):
            return
        states = await self._store.worker_states()
        beats = {name: float(state["time"]) for name, state in states.items()}
        for consumer in await self._store.consumers(shard):
            worker = consumer["name"]
            if not consumer["pending"]:
                continue
            silent = await self._store.silent(shard, worker, int(timeout_s * 1000))
            if not silent:
                continue
            silent_worker = stuck(beats.get(worker), now, timeout_s)
            if silent_worker:
                if worker in states:
                    await self._restart(worker, states[worker])
                lost = [(held, f"worker {worker} went silent") for held in silent]
            else:
                lost = [(held, "its delivery was orphaned") for held in silent
                        if orphaned(held.idle_ms / 1000, beats[worker], now, router.heartbeat_interval_s)]
            if not lost:
                continue
            requeued = await self._store.requeue_lost(shard, lost, now, holder)
            if requeued < 0:
                logger.warning("fenced: the shard's lease moved on", extra={"router": self._name, "shard": shard})
                self._owned.pop(shard, None)
                return
            logger.warning("requeued silent deliveries", extra={"worker": worker, "tasks": requeued, "shard": shard})

    async def _restart(self, worker: str, state: dict[str, Any]) -> None:
        """Kill a worker that stopped heartbeating; Ray restarts it. One on this node is killed by its pid (a
        process that cannot answer, e.g. SIGSTOPped, makes ray.kill wait; and a ray.kill arriving late would
        kill the new incarnation too); one elsewhere through Ray."""
        logger.warning("worker silent past the visibility timeout; restarting it", extra={"worker": worker})
        if state.get("node") == ray.get_runtime_context().get_node_id():
            with contextlib.suppress(ProcessLookupError, PermissionError, KeyError):
                os.kill(int(state["pid"]), signal.SIGKILL)
                return
        with contextlib.suppress(ValueError, RayActorError):
            ray.kill(ray.get_actor(worker, namespace=self._settings.namespace), no_restart=False)
