"""Routing policy: ready-queue order and worker choice."""

from __future__ import annotations

from orchestrator.routing import (
    Aging,
    ReadyQueues,
    Running,
    WorkerLoad,
    choose_victim,
    choose_worker,
)
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


def test_tenants_at_one_priority_are_served_round_robin() -> None:
    queues = ReadyQueues()
    for i in range(4):
        queues.push(TaskSpec(task_id=f"a{i}", tool="echo", worker_type="reasoning", priority=5, input={},
                             created_at=float(i), agent="alice"))
    queues.push(TaskSpec(task_id="b0", tool="echo", worker_type="reasoning", priority=5, input={},
                         created_at=10.0, agent="bob"))
    assert drain(queues) == ["a0", "b0", "a1", "a2", "a3"]


def test_with_api_keys_the_tenant_is_the_unit_of_fairness_not_the_agent_label() -> None:
    queues = ReadyQueues()
    for i in range(4):  # one tenant's flood under four agent names is still one tenant
        queues.push(TaskSpec(task_id=f"a{i}", tool="echo", worker_type="reasoning", priority=5, input={},
                             created_at=float(i), agent=f"bot-{i}", tenant="alice"))
    queues.push(TaskSpec(task_id="b0", tool="echo", worker_type="reasoning", priority=5, input={},
                         created_at=10.0, agent="bot-0", tenant="bob"))
    assert drain(queues) == ["a0", "b0", "a1", "a2", "a3"]


def test_a_requeued_task_keeps_its_place_by_age() -> None:
    queues = ReadyQueues()
    for t in [task("b", 5, 2.0), task("c", 5, 3.0)]:
        queues.push(t)
    queues.push(task("a", 5, 1.0))  # preempted earlier, pushed back
    assert drain(queues) == ["a", "b", "c"]


def test_aging_raises_waiting_work_but_never_to_urgent() -> None:
    aging = Aging(interval_s=10, cap=9)
    assert aging.effective(1, 0) == 1 and aging.effective(1, 25) == 3 and aging.effective(1, 10_000) == 9
    assert aging.effective(10, 10_000) == 10
    queues = ReadyQueues(aging)
    queues.push(task("old-low", 1, 0.0))
    queues.push(task("new-mid", 5, 99.0))
    assert queues.peek("reasoning", now=30.0).task_id == "new-mid"  # aged 1 → 4, still below 5
    assert queues.peek("reasoning", now=100.0).task_id == "old-low"  # aged to the cap, 9
    queues.push(task("urgent", 10, 100.0))
    assert queues.peek("reasoning", now=100.0).task_id == "urgent"  # aging never overtakes priority 10


def test_without_aging_priority_is_strict_however_long_work_waits() -> None:
    queues = ReadyQueues(Aging(interval_s=0))
    queues.push(task("old-low", 1, 0.0))
    queues.push(task("new-mid", 5, 1e6))
    assert queues.peek("reasoning", now=1e9).task_id == "new-mid"


def test_victim_is_the_lowest_priority_then_latest_started() -> None:
    running = [
        Running("a", "w0", priority=2, preemptible=True, preemptions=0, dispatched_at=1.0),
        Running("b", "w0", priority=2, preemptible=True, preemptions=0, dispatched_at=5.0),
        Running("c", "w1", priority=0, preemptible=False, preemptions=0, dispatched_at=9.0),
        Running("d", "w1", priority=1, preemptible=True, preemptions=3, dispatched_at=9.0),
    ]
    victim = choose_victim(running, urgent_priority=10, max_preemptions=3)
    assert victim is not None and victim.task_id == "b"
    assert choose_victim(running, urgent_priority=2, max_preemptions=3) is None  # nothing strictly below
    assert choose_victim(running[2:], urgent_priority=10, max_preemptions=3) is None


def test_a_corrected_task_moves_to_its_new_priority() -> None:
    from dataclasses import replace

    queues = ReadyQueues()
    first, second = task("a", priority=5, created_at=1.0), task("b", priority=2, created_at=2.0)
    queues.push(first)
    queues.push(second)
    assert queues.get("b") == second and queues.get("zzz") is None
    assert queues.replace(replace(second, priority=9, input={"prompt": "new"}))
    assert queues.depth_by_priority("reasoning") == {5: 1, 9: 1}
    popped = queues.pop("reasoning")
    assert popped is not None and popped.task_id == "b" and popped.input == {"prompt": "new"}
    assert not queues.replace(replace(second, priority=1))  # no longer queued
