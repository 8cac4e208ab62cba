"""Routing policy: shard ownership and preemption planning (queue order is tested on Redis itself)."""

from __future__ import annotations

from orchestrator.routing import lease_moves, plan_preemptions

SCALE = 1e13


def victim(priority: int, started_ms: int, task_id: str) -> tuple[float, str]:
    return priority * SCALE + (SCALE - started_ms), task_id


def test_routers_share_the_shards_round_robin() -> None:
    everyone = {0, 1, 2}
    assert [lease_moves(8, 3, i, set(), everyone)[0] for i in range(3)] == [[0, 3, 6], [1, 4, 7], [2, 5]]


def test_a_router_down_has_its_shards_taken_over_and_given_back_when_it_returns() -> None:
    take, give = lease_moves(4, 2, 0, held={0, 2}, alive={0})
    assert take == [0, 1, 2, 3] and give == []
    take, give = lease_moves(4, 2, 0, held={0, 1, 2, 3}, alive={0, 1})
    assert take == [0, 2] and give == [1, 3]


def test_free_slots_cover_urgent_tasks_before_any_preemption() -> None:
    victims = [victim(1, 10, "low")]
    assert plan_preemptions({10: 1}, free_slots=1, victims=victims) == []
    assert plan_preemptions({10: 2}, free_slots=1, victims=victims) == ["low"]


def test_lowest_priority_then_latest_started_is_preempted_first() -> None:
    victims = sorted([victim(3, 10, "p3"), victim(1, 10, "p1-early"), victim(1, 20, "p1-late")])
    assert plan_preemptions({10: 2}, free_slots=0, victims=victims) == ["p1-late", "p1-early"]


def test_only_lower_priorities_are_preempted() -> None:
    victims = sorted([victim(8, 10, "p8"), victim(9, 10, "p9")])
    assert plan_preemptions({9: 1}, free_slots=0, victims=victims) == ["p8"]
    assert plan_preemptions({8: 1}, free_slots=0, victims=victims) == []
    assert plan_preemptions({10: 1, 9: 1}, free_slots=0, victims=victims) == ["p8"]  # p9 only below 10
