"""Routing policy: the priority matrix (ready queues with tenant fairness and aging), worker and victim choice."""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.tasks import TaskSpec

MAX_PRIORITY = 10


@dataclass(frozen=True, slots=True)
class Aging:
    """Waiting `interval_s` raises a queued task's effective priority by one, up to `cap`.

    The cap stays below the preemption threshold so aged work never overtakes or preempts like urgent work.
    """

    interval_s: float = 30.0
    cap: int = MAX_PRIORITY - 1

    def effective(self, priority: int, waited_s: float) -> int:
        if priority >= self.cap or self.interval_s <= 0:
            return priority
        return min(self.cap, priority + int(max(waited_s, 0.0) // self.interval_s))


class _Level:
    """The tasks of one priority in one worker type: a FIFO per tenant, tenants served round-robin."""

    def __init__(self) -> None:
        self.tenants: OrderedDict[str, list[TaskSpec]] = OrderedDict()
        self.size = 0

    def push(self, task: TaskSpec) -> None:
        queue = self.tenants.setdefault(task.owner, [])
        bisect.insort(queue, task, key=lambda t: t.created_at)  # a requeued task keeps its place by age
        self.size += 1

    def oldest(self) -> float:
        return min(queue[0].created_at for queue in self.tenants.values())

    def peek(self) -> TaskSpec:
        return next(iter(self.tenants.values()))[0]

    def pop(self) -> TaskSpec:
        tenant, queue = next(iter(self.tenants.items()))
        task = queue.pop(0)
        del self.tenants[tenant]
        if queue:  # the tenant goes to the back of the rotation
            self.tenants[tenant] = queue
        self.size -= 1
        return task


class ReadyQueues:
    """Tasks waiting for a slot, per worker type: highest (aged) priority first, tenants fair, then oldest."""

    def __init__(self, aging: Aging | None = None) -> None:
        self._aging = aging or Aging(interval_s=0)
        self._levels: dict[str, dict[int, _Level]] = {}
        self._ids: set[str] = set()

    def push(self, task: TaskSpec) -> bool:
        """Queue a task; False if it is already queued (a redelivered entry)."""
        if task.task_id in self._ids:
            return False
        self._ids.add(task.task_id)
        levels = self._levels.setdefault(task.worker_type, {})
        levels.setdefault(task.priority, _Level()).push(task)
        return True

    def peek(self, worker_type: str, now: float = 0.0) -> TaskSpec | None:
        """The task `pop` would return next."""
        priority = self._next_level(worker_type, now)
        return None if priority is None else self._levels[worker_type][priority].peek()

    def pop(self, worker_type: str, now: float = 0.0) -> TaskSpec | None:
        priority = self._next_level(worker_type, now)
        if priority is None:
            return None
        levels = self._levels[worker_type]
        task = levels[priority].pop()
        if not levels[priority].size:
            del levels[priority]
        self._ids.discard(task.task_id)
        return task

    def _next_level(self, worker_type: str, now: float) -> int | None:
        """The level with the highest effective priority; on a tie (only possible through aging) the older."""
        best: tuple[int, float, int] | None = None
        for priority, level in self._levels.get(worker_type, {}).items():
            oldest = level.oldest()
            rank = (self._aging.effective(priority, now - oldest), -oldest, priority)
            if best is None or rank > best:
                best = rank
        return None if best is None else best[2]

    def get(self, task_id: str) -> TaskSpec | None:
        """The queued task with this id, if any."""
        if task_id not in self._ids:
            return None
        for levels in self._levels.values():
            for level in levels.values():
                for queue in level.tenants.values():
                    for task in queue:
                        if task.task_id == task_id:
                            return task
        return None

    def replace(self, task: TaskSpec) -> bool:
        """Swap a queued task for a corrected copy (same id; its priority may differ); False if not queued."""
        if task.task_id not in self._ids:
            return False
        for priority, level in list(self._levels.get(task.worker_type, {}).items()):
            for tenant, queue in list(level.tenants.items()):
                for i, queued in enumerate(queue):
                    if queued.task_id == task.task_id:
                        del queue[i]
                        level.size -= 1
                        if not queue:
                            del level.tenants[tenant]
                        if not level.size:
                            del self._levels[task.worker_type][priority]
                        self._ids.discard(task.task_id)
                        return self.push(task)
        return False

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._ids

    def depth(self, worker_type: str) -> int:
        return sum(level.size for level in self._levels.get(worker_type, {}).values())

    def depth_by_priority(self, worker_type: str) -> dict[int, int]:
        """The row of the priority matrix for one worker type."""
        return {p: level.size for p, level in sorted(self._levels.get(worker_type, {}).items())}


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    name: str
    capacity: int  # slots + prefetch
    assigned: int  # dispatched and not yet returned
    accepting: bool = True


def choose_worker(workers: Iterable[WorkerLoad]) -> str | None:
    """The accepting worker with the most free capacity (ties: first listed), or None if all are full."""
    best: WorkerLoad | None = None
    for worker in workers:
        free = worker.capacity - worker.assigned
        if worker.accepting and free > 0 and (best is None or free > best.capacity - best.assigned):
            best = worker
    return best.name if best else None


@dataclass(frozen=True, slots=True)
class Running:
    """A task on a worker, as the preemption policy sees it."""

    task_id: str
    worker: str
    priority: int
    preemptible: bool
    preemptions: int
    dispatched_at: float


def choose_victim(running: Iterable[Running], urgent_priority: int, max_preemptions: int) -> Running | None:
    """The running task to preempt for an urgent one: lowest priority below it, then the latest started
    (least work lost). Non-preemptible tasks, and tasks already preempted `max_preemptions` times
    (bounding cascades), are never chosen."""
    candidates = [
        r for r in running
        if r.preemptible and r.priority < urgent_priority and r.preemptions < max_preemptions
    ]
    return min(candidates, key=lambda r: (r.priority, -r.dispatched_at), default=None)
