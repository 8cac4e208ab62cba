"""The pools, managed by whichever router holds the pools lease: worker actors spawned, adopted, drained and
retired; pools paused; urgent tasks that find no free slot given one by preemption."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayActorError

from actors.worker import WorkerActor
from orchestrator.adapters.migration import index_unlisted, migrate_legacy
from orchestrator.adapters.task_store import TaskStore
from orchestrator.naming import worker_name
from orchestrator.routing import plan_preemptions
from orchestrator.settings import Settings

logger = logging.getLogger(__name__)

PREEMPT_RECHECK_S = 0.1  # a free slot was reported but the urgent task is still queued: look again this soon
PREEMPT_CHECK_S = 1.0  # urgent work is also looked for this often (a pub/sub message may be lost)
VICTIM_STOP_S = 10.0  # a victim not back in the queue after this no longer counts as a slot about to free


@dataclass
class Member:
    name: str
    worker_type: str
    handle: Any
    draining: bool = False
    ready: bool = False


class PoolManager:
    def __init__(self, settings: Settings, store: TaskStore) -> None:
        self._settings, self._store = settings, store
        self.members: dict[str, Member] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # victims told to stop: (task id, attempt) → when; their slots are about to free up
        self._preempting: dict[tuple[str, int], float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def start(self) -> None:
        """Bring the pools to their planned sizes, adopting the workers that exist (those beyond the plan were
        draining under a previous manager: they finish and are retired)."""
        await migrate_legacy(self._store, self._settings)  # tasks accepted by a version before shards
        await index_unlisted(self._store)  # tasks stored before the listing's indexes
        sizes, paused = await self._store.pool_plan()
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
        await self._publish()
        self._tasks += [asyncio.create_task(self._urgent_listener(), name="urgent"),
                        asyncio.create_task(self._urgent_checks(), name="urgent-checks")]

    def stop(self) -> None:
        """The lease was lost: stop acting (the workers keep running for the next manager)."""
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()

    # --- sizes ------------------------------------------------------------------------------------

    async def scale(self, worker_type: str, workers: int) -> None:
        """Resize a pool: new workers start at once; surplus ones drain (take nothing, finish, exit)."""
        await self._store.save_pool_size(worker_type, workers)
        pool = sorted((m for m in self.members.values() if m.worker_type == worker_type), key=lambda m: _index(m.name))
        live = [m for m in pool if not m.draining]
        for surplus in live[workers:]:
            self._drain(surplus)
        for revived in [m for m in pool if m.draining][: max(0, workers - len(live))]:
            revived.draining = False  # a draining worker is the cheapest new one
            with contextlib.suppress(RayActorError):
                await revived.handle.undrain.remote()
        missing = workers - sum(1 for m in pool if not m.draining)
        taken = {_index(m.name) for m in pool}
        free = (i for i in itertools.count() if i not in taken)
        for _ in range(max(0, missing)):
            self._spawn(worker_type, next(free))
        await self._publish()

    async def drain(self, worker: str) -> bool:
        """Take one worker out of its pool: it finishes what it holds, then exits; False if unknown."""
        member = self.members.get(worker)
        if member is None:
            return False
        self._drain(member)
        live = sum(1 for m in self.members.values() if m.worker_type == member.worker_type and not m.draining)
        await self._store.save_pool_size(member.worker_type, live)
        await self._publish()
        return True

    async def pause(self, worker_type: str, paused: bool) -> None:
        """Stop (or resume) taking a worker type's queued tasks; running ones go on."""
        await self._store.save_paused(worker_type, paused)

    def _spawn(self, worker_type: str, index: int, draining: bool = False) -> None:
        pool = self._settings.pools[worker_type]
        name = worker_name(worker_type, index)
        handle = WorkerActor.options(  # type: ignore[attr-defined]
            name=name, namespace=self._settings.namespace, lifetime="detached", get_if_exists=True,
            max_restarts=-1, max_concurrency=10_000, num_cpus=pool.num_cpus,
            runtime_env=self._settings.tracing.runtime_env(),
        ).remote(self._settings, name, worker_type)
        member = self.members[name] = Member(name, worker_type, handle)
        self._tasks.append(asyncio.create_task(self._await_ready(member), name=f"ready-{name}"))
        if draining:
            self._drain(member)

    async def _await_ready(self, member: Member) -> None:
        """A worker counts for urgent work once Ray has placed it (maybe on a node the autoscaler adds)."""
        while self.members.get(member.name) is member:
            try:
                await member.handle.ready.remote()
                member.ready = True
                return
            except RayActorError:
                await asyncio.sleep(1.0)  # it died while starting; Ray restarts it

    def _drain(self, member: Member) -> None:
        member.draining = True
        self._tasks.append(asyncio.create_task(self._retire(member), name=f"retire-{member.name}"))

    async def _retire(self, member: Member) -> None:
        """Wait for a draining worker to settle what it holds, then stop it for good."""
        while member.draining:
            try:
                await member.handle.drain.remote()
                break
            except RayActorError:
                await asyncio.sleep(1.0)  # restarting: ask the new incarnation
        if not member.draining:  # revived meanwhile
            return
        logger.info("worker drained; retiring it", extra={"worker": member.name})
        self.members.pop(member.name, None)
        with contextlib.suppress(Exception):
            ray.kill(member.handle, no_restart=True)
        await self._store.forget_worker(member.name)
        await self._publish()

    async def _publish(self) -> None:
        """Show the pools as planned (`status` lists these workers)."""
        await self._store.save_members({m.name: {"worker_type": m.worker_type, "draining": m.draining}
                                        for m in self.members.values()})

    # --- preemption -------------------------------------------------------------------------------

    async def _urgent_listener(self) -> None:
        while True:
            pubsub = self._store.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._store.keys.urgent)
                async for message in pubsub.listen():
                    if message["data"] in self._settings.pools:
                        await self._preempt(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("urgent-work subscription lost; reconnecting", exc_info=True)
                await asyncio.sleep(1.0)  # backoff; the periodic check covers the gap
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _urgent_checks(self) -> None:
        while True:
            await asyncio.sleep(PREEMPT_CHECK_S)  # a period, not synchronisation
            for worker_type in self._settings.pools:
                try:
                    await self._preempt(worker_type)
                except Exception:
                    logger.warning("preemption check failed", exc_info=True)

    async def _preempt(self, worker_type: str) -> None:
        async with self._locks.setdefault(worker_type, asyncio.Lock()):  # one decision at a time per pool
            await self._preempt_locked(worker_type)

    async def _preempt_locked(self, worker_type: str) -> None:
        """Give the urgent tasks waiting in a pool slots: free ones if there are, else the best victims'."""
        threshold = self._settings.router.preempt_threshold
        for _ in range(20):  # a reported free slot is normally taken within milliseconds
            if worker_type in await self._store.paused():
                return
            row = (await self._store.depths([worker_type]))[worker_type]
            waiting = {p: n for p, n in row.items() if p >= threshold}
            if not waiting:
                return
            members = [m for m in self.members.values() if m.worker_type == worker_type and m.ready and not m.draining]
            free = sum(await asyncio.gather(*(self._free(m) for m in members))) + await self._stopping()
            victims = await self._store.victims(worker_type, sum(waiting.values()))
            for task_id in plan_preemptions(waiting, free, victims):
                claimed = await self._store.claim_victim(task_id, time.time())
                if claimed is not None:
                    worker, attempt = claimed
                    self._preempting[(task_id, attempt)] = time.monotonic()
                    logger.info("preempting", extra={"victim": task_id, "worker": worker})
                    with contextlib.suppress(ValueError, RayActorError):
                        await ray.get_actor(worker, namespace=self._settings.namespace).preempt.remote(task_id)
            if free == 0:
                return
            await asyncio.sleep(PREEMPT_RECHECK_S)  # a period: the free slot should have taken the task

    async def _stopping(self) -> int:
        """Victims told to stop whose slots are about to free up (so no second victim is picked for one task)."""
        now = time.monotonic()
        recent = [v for v, since in self._preempting.items() if now - since < VICTIM_STOP_S]
        stopping = [(task_id, attempt) for (task_id, attempt), raw in
                    zip(recent, await self._store.get_many([t for t, _ in recent]), strict=True)
                    if raw is not None and _attempt_running(json.loads(raw), attempt)]
        self._preempting = {v: self._preempting[v] for v in stopping}
        return len(stopping)

    async def _free(self, member: Member) -> int:
        try:
            async with asyncio.timeout(self._settings.router.call_timeout_s):
                return int(await member.handle.free.remote())
        except (RayActorError, TimeoutError):
            return 0


def _attempt_running(stored: dict[str, Any], attempt: int) -> bool:
    return stored.get("s") == "running" and stored.get("at") == attempt


def _index(name: str) -> int:
    return int(name.rsplit(":", 1)[1])
