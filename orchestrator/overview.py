"""What `status`, `top`, the SLA policy and /metrics show of the system, read from Redis: pools (with their queued
and delayed tasks), workers, the priority matrix and every running task (no actor is asked, so it answers while a
router restarts)."""

from __future__ import annotations

from collections import Counter

from orchestrator.adapters.task_store import TaskStore
from orchestrator.models import PoolStatus, RouterOverview, RunningTask, WorkerStatus
from orchestrator.settings import Settings


async def overview(store: TaskStore, settings: Settings, nodes: int = 0,
                   cluster_cpus: float = 0.0) -> RouterOverview:
    """Pools, workers (as the pool manager plans them), the matrix and the running tasks."""
    pools = list(settings.pools)
    members = {name: m for name, m in (await store.members()).items() if m.get("worker_type") in settings.pools}
    running = await store.running()
    matrix = await store.depths(pools)
    scheduled = await store.scheduled(pools)
    paused = await store.paused()
    busy = Counter(record.worker for record in running)
    workers = [WorkerStatus(name=name, worker_type=m["worker_type"], slots=settings.pools[m["worker_type"]].slots,
                            running=busy[name], queued=0, draining=m["draining"])
               for name, m in sorted(members.items())]
    return RouterOverview(
        pools=[PoolStatus(worker_type=t, workers=sum(1 for w in workers if w.worker_type == t),
                          slots=sum(w.slots for w in workers if w.worker_type == t),
                          running=sum(w.running for w in workers if w.worker_type == t),
                          queued=sum(matrix[t].values()), scheduled=scheduled[t], paused=t in paused) for t in pools],
        workers=workers,
        matrix={t: {str(p): n for p, n in sorted(matrix[t].items())} for t in pools},
        running=[RunningTask(task_id=r.task_id, tool=r.tool, priority=r.priority, worker=r.worker or "",
                             agent=r.agent, tenant=r.tenant, since=r.started_at or r.created_at,
                             preemptions=r.preemptions) for r in running],
        nodes=nodes, cluster_cpus=cluster_cpus)
