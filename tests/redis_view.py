"""What tests read straight from Redis, through the project's own key builder and codec."""

from __future__ import annotations

import json
from typing import Any

import redis

from orchestrator.adapters.keys import WORKER_GROUP, Keys
from orchestrator.submitter import keyed_shard
from orchestrator.tasks import shard_of


def client(settings: Any) -> redis.Redis:
    return redis.Redis.from_url(settings.redis.url, decode_responses=True)


def stored(conn: redis.Redis, settings: Any, task_id: str) -> dict[str, Any] | None:
    """The task's record as stored (short member names, see orchestrator/codec.py)."""
    shard = shard_of(task_id, settings.redis.shards)
    raw = conn.get(Keys(settings.redis.prefix).shard(shard or 0).task(task_id))
    return None if raw is None else json.loads(raw)


def pending(conn: redis.Redis, settings: Any) -> int:
    """Deliveries pending under any worker, over every shard."""
    keys = Keys(settings.redis.prefix)
    total = 0
    for shard in range(settings.redis.shards):
        try:
            total += conn.xpending(keys.shard(shard).stream, WORKER_GROUP)["pending"]
        except redis.ResponseError:  # no stream yet
            continue
    return total


def active(conn: redis.Redis, settings: Any) -> int:
    """Accepted, unfinished tasks, over every shard."""
    keys = Keys(settings.redis.prefix)
    return sum(int(conn.get(keys.shard(s).active) or 0) for s in range(settings.redis.shards))


def task_keys(conn: redis.Redis, settings: Any) -> int:
    """How many task records exist."""
    keys = Keys(settings.redis.prefix)
    return sum(1 for s in range(settings.redis.shards) for _ in conn.scan_iter(keys.shard(s).task("*"), count=1000))


def idempotent_task(conn: redis.Redis, settings: Any, key: str, tenant: str | None = None) -> str | None:
    """The task an idempotency key maps to, if any."""
    shard = keyed_shard(tenant, key, settings.redis.shards)
    return conn.get(Keys(settings.redis.prefix).shard(shard).idempotency(key, tenant))


def task_ids(conn: redis.Redis, settings: Any) -> set[str]:
    """The ids of every task record."""
    keys = Keys(settings.redis.prefix)
    return {k.rsplit(":", 1)[1] for s in range(settings.redis.shards)
            for k in conn.scan_iter(keys.shard(s).task("*"), count=1000)}


def requeue_as(conn: redis.Redis, settings: Any, shard: int, holder: str) -> int:
    """What the requeue script answers a router presenting `holder` as its lease (-1: fenced), for no task."""
    from orchestrator.adapters.scripts import load

    script = load("requeue_lost")
    keys = Keys(settings.redis.prefix).shard(shard)
    args = {"tag": keys.tag, "now": 0, "prefix": settings.redis.prefix, "retention_s": 60, "max_events": 10,
            "items": "[]", "holder": holder}
    return int(conn.eval(script.source, len(script.keys), *script.keys_of({"active": keys.active, "lease": keys.lease}),
                         *script.args_of(args)))
