"""SLA policy actor: every interval, measure each pool with SLA targets, decide its size
(`orchestrator.sla.decide`), and resize it through the router (surplus workers drain)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray
from ray.autoscaler.sdk import request_resources

from actors.clients import ActorRouterClient
from orchestrator.adapters.provider_gate import RedisProviderGate
from orchestrator.adapters.stats_store import StatsStore
from orchestrator.adapters.task_store import TaskStore
from orchestrator.analytics import summarize
from orchestrator.models import RouterOverview
from orchestrator.settings import Settings
from orchestrator.sla import Decision, PoolMemory, PoolMetrics, SlaTargets, decide

logger = logging.getLogger(__name__)


@ray.remote
class SlaPolicyActor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._store = TaskStore.from_settings(settings.redis)
        self._stats = StatsStore(self._store.redis, settings.redis.prefix, settings.redis.shards)
        self._router = ActorRouterClient(settings, self._store)
        self._gate = RedisProviderGate(self._store.redis, settings.redis.prefix)
        self._memory: dict[str, PoolMemory] = {}
        self._last: dict[str, dict[str, Any]] = {}
        self._requested: list[dict[str, float]] | None = None
        self._clock = time.time
        self._loop = asyncio.create_task(self._run(), name="sla")

    async def ready(self) -> bool:
        return True

    async def state(self) -> dict[str, dict[str, Any]]:
        """The latest measurement and decision per pool (for status, `orchestrator top`, tests)."""
        return self._last

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.sla.interval_s)  # a period, not synchronisation
            try:
                await self.evaluate()
            except Exception:
                logger.warning("SLA evaluation failed; trying again next interval", exc_info=True)

    async def evaluate(self) -> None:
        """Measure every pool with targets and apply the decisions."""
        overview = await self._router.overview()
        now = self._clock()
        merged, since = await self._stats.window(now, self._settings.sla.window_s)
        waits = summarize(merged, self._settings.sla.window_s, since).by_worker_type
        overrides = {t: SlaTargets.model_validate(v) for t, v in (await self._store.sla_targets()).items()}
        sizes = {p.worker_type: p.workers for p in overview.pools}
        for worker_type, targets in {**self._settings.sla.pools, **overrides}.items():
            metrics = _measure(overview, worker_type, waits.get(worker_type), await self._provider_waits(worker_type))
            decision = decide(metrics, targets, self._memory.get(worker_type, PoolMemory()), now)
            self._memory[worker_type] = decision.memory
            window = waits.get(worker_type)
            run_p95_ms = None if window is None else window.run_ms.p95
            self._last[worker_type] = {**_report(metrics, decision, now),
                                       "run_p95_s": None if run_p95_ms is None else run_p95_ms / 1000}
            await self._store.save_sla_state(worker_type, self._last[worker_type])
            sizes[worker_type] = decision.workers
            if decision.workers != metrics.workers:
                logger.info("SLA resize", extra={"pool": worker_type, "from": metrics.workers,
                                                 "to": decision.workers, "reason": decision.reason})
                await self._router.scale(worker_type, decision.workers)
                await self._store.audit("sla-policy", "scale", {"worker_type": worker_type,
                                                                "workers": decision.workers,
                                                                "reason": decision.reason}, now)
        self._request_nodes(sizes)

    async def _provider_waits(self, worker_type: str) -> int:
        """Calls of the pool's LLM tools waiting on their providers' limits (rate, tokens, concurrency)."""
        tools = self._settings.tools
        providers = {self._settings.provider_of(n) for n, t in tools.items()
                     if t.worker_type == worker_type and t.kind == "openai"}
        return sum([await self._gate.waiting(p) for p in sorted(providers)])

    def _request_nodes(self, sizes: dict[str, int]) -> None:
        """Tell Ray's autoscaler the resources every planned worker needs, so that nodes are added when
        new workers cannot be placed and released when pools shrink (each request replaces the last)."""
        bundles = [{"CPU": self._settings.pools[t].num_cpus} for t, n in sorted(sizes.items()) for _ in range(n)
                   if self._settings.pools[t].num_cpus > 0]
        if bundles != self._requested:
            request_resources(bundles=bundles)
            logger.info("requested resources from the autoscaler", extra={"bundles": len(bundles)})
            self._requested = bundles


def _measure(overview: RouterOverview, worker_type: str, window: Any, provider_waits: int) -> PoolMetrics:
    workers = [w for w in overview.workers if w.worker_type == worker_type and not w.draining]
    slots = sum(w.slots for w in workers)
    running = sum(w.running for w in workers)
    queued = next((p.queued for p in overview.pools if p.worker_type == worker_type), 0)
    # Past waits only count while tasks wait now: after a burst, an empty queue is not late.
    wait_p95_ms = None if window is None or queued == 0 else window.queue_wait_ms.p95
    return PoolMetrics(workers=len(workers), queue_depth=queued,
                       queue_wait_p95_s=None if wait_p95_ms is None else wait_p95_ms / 1000,
                       utilisation=running / slots if slots else 1.0,
                       provider_wait_share=min(1.0, provider_waits / running) if running else 0.0)


def _report(metrics: PoolMetrics, decision: Decision, now: float) -> dict[str, Any]:
    return {"at": now, "workers": metrics.workers, "queue_depth": metrics.queue_depth,
            "provider_wait_share": round(metrics.provider_wait_share, 3),
            "queue_wait_p95_s": metrics.queue_wait_p95_s, "utilisation": round(metrics.utilisation, 3),
            "target_workers": decision.workers, "reason": decision.reason}
