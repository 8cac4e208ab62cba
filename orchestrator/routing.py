"""Routing policy that needs no queue in memory: which shards a router owns, and which running tasks urgent
work preempts. (The queue order itself — priority, aging, tenant fairness — is kept by the Lua scripts.)"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

VICTIM_PRIORITY_SCALE = 1e13  # a victim's rank is priority * this + (this - started ms): see take.lua


def preferred_router(shard: int, routers: int) -> int:
    """The router that owns a shard when all are up (round-robin)."""
    return shard % routers


def lease_moves(shards: int, routers: int, me: int, held: set[int], alive: set[int]) -> tuple[list[int], list[int]]:
    """Which shard leases router `me` should try to take (or keep), and which to give back.

    A router keeps the shards it prefers and those whose preferred router is down (a takeover); it gives a
    shard back once the router preferring it is alive again, which takes it as soon as the lease is free.
    """
    def wanted(shard: int) -> bool:
        owner = preferred_router(shard, routers)
        return owner == me or owner not in alive

    return [s for s in range(shards) if wanted(s)], [s for s in sorted(held) if not wanted(s)]


def plan_preemptions(waiting: Mapping[int, int], free_slots: int, victims: Sequence[tuple[float, str]]) -> list[str]:
    """The running tasks to preempt for the urgent tasks waiting (priority → count) when `free_slots` are not
    enough: for each urgent task, highest priority first, the best victim left of a lower priority.

    Args:
        victims: (rank, task id), best first (lowest priority, then the latest started).
    """
    chosen: list[str] = []
    pool = list(victims)
    uncovered = free_slots
    for priority in sorted(waiting, reverse=True):
        for _ in range(waiting[priority]):
            if uncovered > 0:
                uncovered -= 1
                continue
            found = next((v for v in pool if v[0] // VICTIM_PRIORITY_SCALE < priority), None)
            if found is None:
                break
            pool.remove(found)
            chosen.append(found[1])
    return chosen
