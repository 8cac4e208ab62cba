"""Routing policy: ready queues per worker type ordered by priority then age, and worker choice."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.tasks import TaskSpec


class ReadyQueues:
    """Tasks waiting for a slot, one heap per worker type: highest priority first, then oldest."""

    def __init__(self) -> None:
        self._heaps: dict[str, list[tuple[int, float, int, TaskSpec]]] = {}
        self._ids: set[str] = set()
        self._seq = itertools.count()

    def push(self, task: TaskSpec) -> bool:
        """Queue a task; False if it is already queued (a redelivered entry)."""
        if task.task_id in self._ids:
            return False
        self._ids.add(task.task_id)
        heap = self._heaps.setdefault(task.worker_type, [])
        heapq.heappush(heap, (-task.priority, task.created_at, next(self._seq), task))
        return True

    def pop(self, worker_type: str) -> TaskSpec | None:
        heap = self._heaps.get(worker_type)
        if not heap:
            return None
        task = heapq.heappop(heap)[-1]
        self._ids.discard(task.task_id)
        return task

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._ids

    def depth(self, worker_type: str) -> int:
        return len(self._heaps.get(worker_type, ()))

    def depth_by_priority(self, worker_type: str) -> dict[int, int]:
        """The row of the priority matrix for one worker type."""
        counts: dict[int, int] = {}
        for neg_priority, *_ in self._heaps.get(worker_type, ()):
            counts[-neg_priority] = counts.get(-neg_priority, 0) + 1
        return counts


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
