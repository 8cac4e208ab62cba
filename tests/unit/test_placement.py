"""Where a new task goes: a tenant with a quota keeps one shard (its quota is checked in one step); a task with
an idempotency key goes where a retry of it will look; the rest spread."""

from __future__ import annotations

from orchestrator.submitter import keyed_shard


def test_a_tenants_tasks_share_a_shard_and_keyed_tasks_spread() -> None:
    shards = 8
    assert len({keyed_shard("acme", None, shards) for _ in range(5)}) == 1
    keyed = {keyed_shard("acme", f"key-{i}", shards) for i in range(200)}
    assert len(keyed) == shards  # the keys of one tenant land on every shard
    assert keyed_shard("acme", "k", shards) == keyed_shard("acme", "k", shards)  # a retry looks where it went
    assert keyed_shard("acme", "k", 1) == 0 and keyed_shard(None, None, 1) == 0
