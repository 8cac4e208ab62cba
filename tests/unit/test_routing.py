"""Routing policy: ready-queue order and worker choice."""

from __future__ import annotations

from orchestrator.routing import ReadyQueues, WorkerLoad, choose_worker
from orchestrator.tasks import TaskSpec


def task(task_id: str, priority: int, created_at: float, worker_type: str = "reasoning") -> TaskSpec:
    return TaskSpec(task_id=task_id, tool="echo", worker_type=worker_type, priority=priority,
                    input={"prompt": task_id}, created_at=created_at)


def drain(queues: ReadyQueues, worker_type: str = "reasoning") -> list[str]:
    order: list[str] = []
    while (next_task := queues.pop(worker_type)) is not None:
        order.append(next_task.task_id)
    return order


def test_pops_by_priority_then_age() -> None:
    queues = ReadyQueues()
    for t in [task("low-old", 1, 1.0), task("high-new", 9, 5.0), task("high-old", 9, 2.0), task("mid", 5, 0.5)]:
        queues.push(t)
    assert drain(queues) == ["high-old", "high-new", "mid", "low-old"]


def test_queues_are_per_worker_type() -> None:
    queues = ReadyQueues()
    queues.push(task("r", 1, 1.0))
    queues.push(task("c", 10, 1.0, worker_type="codegen"))
    assert queues.depth("reasoning") == 1 and queues.depth("codegen") == 1
    assert drain(queues, "reasoning") == ["r"]
    assert queues.pop("ml") is None


def test_a_redelivered_task_is_queued_once() -> None:
    queues = ReadyQueues()
    assert queues.push(task("a", 5, 1.0)) is True
    assert queues.push(task("a", 5, 1.0)) is False
    assert "a" in queues and queues.depth("reasoning") == 1
    queues.pop("reasoning")
    assert "a" not in queues and queues.push(task("a", 5, 1.0)) is True


def test_depth_by_priority_is_a_matrix_row() -> None:
    queues = ReadyQueues()
    for i, priority in enumerate([1, 1, 5, 10]):
        queues.push(task(f"t{i}", priority, float(i)))
    assert queues.depth_by_priority("reasoning") == {1: 2, 5: 1, 10: 1}


def test_choose_worker_prefers_most_free_capacity() -> None:
    workers = [WorkerLoad("a", 4, 3), WorkerLoad("b", 4, 1), WorkerLoad("c", 8, 6)]
    assert choose_worker(workers) == "b"


def test_choose_worker_skips_full_and_draining_workers() -> None:
    assert choose_worker([WorkerLoad("a", 2, 2), WorkerLoad("b", 4, 0, accepting=False)]) is None
    assert choose_worker([]) is None
