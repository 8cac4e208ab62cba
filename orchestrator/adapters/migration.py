"""Upgrading the data of a version before shards: its tasks, idempotency keys, sagas, artifacts, dead letters and
analytics counters move into the sharded layout, once, the first time a pool manager of this version starts.

Every move is one atomic step that writes the new key only if absent and deletes the old one, so a migration that
stops halfway (a crash, Redis unreachable) is finished by the next start, and no task is lost or doubled. The old
layout's singleton keys go last: while they exist there is something left to move, which is also the one check a
start without legacy data pays. Legacy data only ever lives on one Redis server (the old version did not support
Redis Cluster), so a step may touch keys of different hash tags.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator import codec
from orchestrator.adapters.keys import Keys
from orchestrator.adapters.task_store import TaskStore, storage_errors
from orchestrator.settings import Settings
from orchestrator.submitter import Submitter
from orchestrator.tasks import shard_of

logger = logging.getLogger(__name__)

BATCH = 500  # keys read and moved per round trip
UPGRADE_FAILURE = "the orchestrator was upgraded while it ran"
COUNTS = ("tasks", "queued", "running", "waiting", "finished", "dead_letters", "idempotency_keys", "sagas",
          "artifacts", "stats")

# Fields of an old task record (a hash), by how they were written (the old task_store's tables).
_JSON = ("input", "context", "result", "error", "progress", "checkpoint", "resumed_from")
_SECONDS = ("created_at", "started_at", "first_started_at", "finished_at", "deadline")
_INTS = ("priority", "attempts", "preemptions", "restarts", "checkpoints")
_TEXT = ("task_id", "tool", "worker_type", "agent", "tenant", "worker", "idempotency_key", "last_failure", "parent")
_QUEUED = frozenset({"queued", "preempted"})

# Move one key: copied (with its time to live) where it goes, unless something is there already; then merged by
# kind ('keep': the newer one stays; 'set': members added; 'stream': entries appended; 'counters': fields added,
# the longer time to live kept). The old key is deleted in the same step. Returns 1 moved, 0 nothing to move.
# KEYS: from, to; ARGV: kind
_MOVE = """
local from, to, kind = KEYS[1], KEYS[2], ARGV[1]
if redis.call('EXISTS', from) == 0 then return 0 end
if redis.call('EXISTS', to) == 0 then
  redis.call('COPY', from, to)
elseif kind == 'set' then
  redis.call('SUNIONSTORE', to, to, from)
elseif kind == 'stream' then
  for _, e in ipairs(redis.call('XRANGE', from, '-', '+')) do redis.call('XADD', to, '*', unpack(e[2])) end
elseif kind == 'counters' then
  local fields = redis.call('HGETALL', from)
  for i = 1, #fields, 2 do redis.call('HINCRBY', to, fields[i], fields[i + 1]) end
  local ttl, left = redis.call('PTTL', from), redis.call('PTTL', to)
  if ttl > 0 and left > 0 and left < ttl then redis.call('PEXPIRE', to, ttl) end
end
redis.call('DEL', from)
return 1
"""


@dataclass(frozen=True, slots=True)
class LegacyKeys:
    """The names the version before shards used, all `<prefix>:<name>` (`orchestrator/adapters/keys.py` names only
    its stream and task records; the rest are read here alone)."""

    keys: Keys

    @property
    def prefix(self) -> str:
        return self.keys.prefix

    def of(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    @property
    def stream(self) -> str:
        return self.keys.legacy_stream

    def pattern(self, name: str) -> str:
        """A SCAN pattern of the keys starting with `<prefix>:<name>` (the prefix's glob characters escaped)."""
        return re.sub(r"([*?\[\]\\])", r"\\\1", self.prefix) + f":{name}*"

    def task(self, task_id: str) -> str:
        return self.keys.legacy_task(task_id)

    def events(self, task_id: str) -> str:
        return self.of(f"events:{task_id}")

    def checkpoints(self, task_id: str) -> str:
        return self.of(f"ckpt:{task_id}")

    @property
    def markers(self) -> tuple[str, ...]:
        """Keys every legacy installation has and the migration deletes last, in one step."""
        return (self.stream, *(self.of(name) for name in ("active", "tenants:active", "dead_letters")))

    @property
    def leftovers(self) -> tuple[str, ...]:
        """What is deleted with the markers: state the sharded layout keeps elsewhere, or not at all."""
        return (*self.markers, self.of("tenants:submits"))


async def migrate_legacy(store: TaskStore, settings: Settings) -> dict[str, int]:
    """Move the data of the layout before shards into the sharded one (a no-op when there is none); the counts
    of what moved. Idempotent, and safe to run again after stopping halfway."""
    legacy = LegacyKeys(store.keys)
    counts = dict.fromkeys(COUNTS, 0)
    with storage_errors():
        if not await store.redis.exists(*legacy.markers):
            return counts
    started = time.monotonic()
    move = _Mover(store.redis)
    with storage_errors():
        await _move_tasks(store, legacy, counts)
        await _move_orphan_dead_letters(store, legacy, counts)
        await _move_idempotency_keys(store, settings, legacy, counts)
        await _move_sagas(store, legacy, move, counts)
        await _move_artifacts(store, legacy, move, counts)
        await _move_stats(store, legacy, move, counts)
        await store.redis.delete(*legacy.leftovers)
    logger.info("legacy data migrated", extra={**counts, "took_s": round(time.monotonic() - started, 3)})
    return counts


async def index_unlisted(store: TaskStore) -> int:
    """Put the tasks a version before the listing's indexes stored into them, once per shard (a marker says it
    was done); how many. Tasks submitted meanwhile are indexed by their own submit: the step skips them."""
    added = 0
    for shard in range(store.shards):
        keys = store.keys.shard(shard)
        with storage_errors():
            if await store.redis.exists(keys.index_version):
                continue
            prefix = keys.task("")
            found: list[str] = []
            async for key in store.redis.scan_iter(match=f"{prefix}*", count=BATCH):  # every node of a cluster
                found.append(key[len(prefix):])
                if len(found) == BATCH:
                    added += await _index(store, shard, found)
                    found = []
            added += await _index(store, shard, found)
            await store.redis.set(keys.index_version, "1")
    if added:
        logger.info("stored tasks indexed for list_tasks", extra={"tasks": added})
    return added


async def _index(store: TaskStore, shard: int, task_ids: Sequence[str]) -> int:
    if not task_ids:
        return 0
    return int(await store._run("index_task", shard, time.time(),  # pyright: ignore[reportPrivateUsage]
                                {"ids": codec.dumps(list(task_ids))}))


# --- tasks ---------------------------------------------------------------------------------------------------


async def _move_tasks(store: TaskStore, legacy: LegacyKeys, counts: dict[str, int]) -> None:
    """Unfinished tasks first, in the order they arrived (the old stream's order), so each level keeps its order;
    then whatever else is left (waiting children, finished tasks)."""
    async for delivered in _stream_tasks(store.redis, legacy.stream):
        await _move_task_batch(store, legacy, list(delivered), counts, by_age=False, parent_results=delivered)
    prefix = legacy.task("")
    async for found in _scan(store.redis, legacy.pattern("task:")):
        await _move_task_batch(store, legacy, [key[len(prefix):] for key in found], counts, by_age=True)


async def _stream_tasks(client: Any, stream: str) -> AsyncIterator[dict[str, str]]:
    """The tasks of the old stream's entries in order, a batch at a time: task id → the parent's result a released
    fanout child was delivered with ('' for other tasks)."""
    start = "-"
    while True:
        entries = await client.xrange(stream, min=start, count=BATCH)
        if not entries:
            return
        delivered: dict[str, str] = {}
        for _entry_id, fields in entries:
            if "task_id" in fields:
                delivered[fields["task_id"]] = fields.get("parent_result") or delivered.get(fields["task_id"], "")
        yield delivered
        start = "(" + entries[-1][0]


async def _move_task_batch(store: TaskStore, legacy: LegacyKeys, task_ids: Sequence[str], counts: dict[str, int],
                           by_age: bool, parent_results: Mapping[str, str] | None = None) -> None:
    """Move the tasks of a batch (those still there), in their order, or (`by_age`) oldest first."""
    async with store.redis.pipeline(transaction=False) as pipe:
        for task_id in task_ids:
            pipe.hgetall(legacy.task(task_id))
        found = [(task_id, old) for task_id, old in zip(task_ids, await pipe.execute(), strict=True) if old]
    letters = await _dead_letters_of(store.redis, legacy.of("dead_letters"), [old for _id, old in found])
    if by_age:
        found.sort(key=lambda item: float(item[1].get("created_at", 0)))
    now = time.time()
    moves: list[tuple[str, bool]] = []  # (kind, with a dead letter) per script call
    async with store.redis.pipeline(transaction=False) as pipe:
        for task_id, old in found:
            shard = shard_of(task_id, store.shards)
            if shard is None:
                logger.warning("legacy task with an unexpected id left in place", extra={"task_id": task_id})
                continue
            parent_result = (parent_results or {}).get(task_id, "")
            if shard_of(old.get("parent", ""), store.shards) == shard:  # `take` finds the parent's result itself
                parent_result = ""
            record, kind = new_record(old, now, parent_result)
            dead = letters.get(old.get("dead_letter", ""))
            await store._run("migrate_task", shard, now, {  # pyright: ignore[reportPrivateUsage]
                "record": record, "queue": "1" if kind in ("queued", "running") else "0",
                "counted": "0" if kind == "finished" else "1", "finished": "1" if kind == "finished" else "0",
                "dead": "" if dead is None else codec.dumps(dead), "legacy_dead_id": old.get("dead_letter", ""),
            }, client=pipe, keys={
                "active": store.keys.shard(shard).active, "legacy": legacy.task(task_id),
                "events": legacy.events(task_id), "checkpoints": legacy.checkpoints(task_id),
                "legacy_dead": legacy.of("dead_letters")})
            moves.append((kind, dead is not None))
        replies = await pipe.execute() if moves else []
    for (kind, dead_letter), moved in zip(moves, replies, strict=True):
        if moved:
            counts["tasks"] += 1
            counts[kind] += 1
            counts["dead_letters"] += dead_letter


async def _dead_letters_of(client: Any, stream: str, olds: Sequence[Mapping[str, str]]) -> dict[str, list[str]]:
    """The old dead-letter entries the records name: entry id → [reason, attempts, time in ms]."""
    entry_ids = [old["dead_letter"] for old in olds if old.get("dead_letter")]
    if not entry_ids:
        return {}
    async with client.pipeline(transaction=False) as pipe:
        for entry_id in entry_ids:
            pipe.xrange(stream, entry_id, entry_id)
        found = await pipe.execute()
    letters: dict[str, list[str]] = {}
    for entry_id, entries, old in zip(entry_ids, found, [o for o in olds if o.get("dead_letter")], strict=True):
        if entries:
            letters[entry_id] = _letter(entries[0][1])
        else:  # the entry is gone: rebuilt from the record
            error = json.loads(old["error"]) if old.get("error") else {}
            used = int(old.get("attempts", 0)) - int(old.get("preemptions", 0)) - int(old.get("attempts_base", 0))
            letters[entry_id] = [str(error.get("message", "attempts exhausted")), str(used),
                                 str(codec.to_ms(float(old.get("finished_at") or old.get("created_at") or 0)))]
    return letters


def _letter(fields: Mapping[str, str]) -> list[str]:
    return [fields.get("reason", ""), fields.get("attempts", "0"), str(codec.to_ms(float(fields.get("time", 0))))]


def new_record(old: Mapping[str, str], now: float, parent_result: str = "") -> tuple[str, str]:
    """The sharded record of an old task (its JSON text, without a queue score) and what it is now: `queued`
    (queued or preempted), `running` (queued again: its attempt was lost to the upgrade), `waiting` or
    `finished`.

    Args:
        parent_result: the result a released fanout child was delivered with (JSON text), when its parent lives in
            another shard: `take` looks for the parent in the child's shard only, so the child carries it in its
            context (where a worker hands it to the tool).
    """
    values: dict[str, Any] = {name: json.loads(old[name]) for name in _JSON if old.get(name)}
    values |= {name: float(old[name]) for name in _SECONDS if old.get(name)}
    values |= {name: int(old[name]) for name in _INTS if old.get(name)}
    values |= {name: old[name] for name in _TEXT if name in old}
    if old.get("children"):
        values["children"] = tuple(json.loads(old["children"]))
    values["v1"] = "prompt" in old  # its prompt is already inside `input`
    status = old.get("status", "queued")
    kind = ("queued" if status in _QUEUED else "running" if status == "running" else
            "waiting" if status == "waiting" else "finished")
    if parent_result and kind in ("queued", "running"):
        values["context"] = {**values.get("context", {}), "parent_result": json.loads(parent_result)}
    values["context"] = values.get("context") or None
    values["status"] = "queued" if kind == "running" else status
    if kind == "running":
        values["last_failure"] = UPGRADE_FAILURE
    stored = codec.encode(values)
    attempts_base = int(old.get("attempts_base", 0)) + (kind == "running")  # the lost attempt is not charged
    if attempts_base:
        stored["ab"] = attempts_base
    if old.get("cancel_requested") == "1":
        stored["cr"] = 1
    created_ms = stored["c"]
    first = ("waiting", created_ms, codec.dumps({"parent": values.get("parent")})) if kind == "waiting" else \
        ("queued", created_ms, codec.dumps({"priority": values["priority"]}))
    history = [first]
    if kind == "running":
        history.append(("attempt_lost", codec.to_ms(now), codec.dumps({"reason": UPGRADE_FAILURE})))
    if kind == "finished":
        history.append((status, stored.get("fn", created_ms), "{}"))
    stored["h"] = [[seq, event, at_ms, data] for seq, (event, at_ms, data) in enumerate(history, 1)]
    stored["sq"] = len(history)
    return codec.dumps(stored), kind


async def _move_orphan_dead_letters(store: TaskStore, legacy: LegacyKeys, counts: dict[str, int]) -> None:
    """Dead letters whose task expired stay listed: each goes to its task's shard (entries of records that moved
    went with them)."""
    stream = legacy.of("dead_letters")
    while entries := await store.redis.xrange(stream, count=BATCH):
        async with store.redis.pipeline(transaction=True) as tx:
            for _entry_id, fields in entries:
                shard = shard_of(fields.get("task_id", ""), store.shards) or 0
                tx.xadd(store.keys.shard(shard).dead_letters, {
                    "task_id": fields.get("task_id", ""), "reason": fields.get("reason", ""),
                    "attempts": fields.get("attempts", "0"), "time": _letter(fields)[2]})
            tx.xdel(stream, *[entry_id for entry_id, _fields in entries])
            await tx.execute()
        counts["dead_letters"] += len(entries)


# --- idempotency keys --------------------------------------------------------------------------------------


async def _move_idempotency_keys(store: TaskStore, settings: Settings, legacy: LegacyKeys,
                                 counts: dict[str, int]) -> None:
    """Each key goes where a new submit with it looks: the shard of its tenant's quota, or of the key. An admin
    key's submits are not held to the quota, so a key of a tenant with one goes to both (the same task id)."""
    submitter = Submitter(store, settings, time.time)
    with_tenant, without = legacy.of("idem@"), legacy.of("idem:")
    async for found in _scan(store.redis, legacy.pattern("idem")):
        keys = [k for k in found if k.startswith((with_tenant, without))]
        async with store.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
                pipe.pttl(key)
            replies = await pipe.execute()
        async with store.redis.pipeline(transaction=True) as tx:
            moved = 0
            for key, task_id, ttl_ms in zip(keys, replies[0::2], replies[1::2], strict=True):
                if task_id is None or ttl_ms == -2:  # expired meanwhile
                    continue
                tenant, idempotency_key = _tenant_and_key(key, with_tenant, without)
                quota = settings.auth.quota_for(tenant) if tenant else None
                shards = {submitter.shard_for(tenant, idempotency_key, quota),
                          submitter.shard_for(tenant, idempotency_key, None)}
                for shard in shards:
                    tx.set(store.keys.shard(shard).idempotency(idempotency_key, tenant), task_id, nx=True,
                           px=ttl_ms if ttl_ms > 0 else None)
                tx.delete(key)
                moved += 1
            if moved:
                await tx.execute()
        counts["idempotency_keys"] += moved


# --- sagas, artifacts, analytics ---------------------------------------------------------------------------


class _Mover:
    """Moves keys with `_MOVE`, many per round trip (each move its own atomic step)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._script = client.register_script(_MOVE)

    async def __call__(self, moves: Sequence[tuple[str, str, str]]) -> list[bool]:
        """(old key, new key, kind) → whether each moved."""
        if not moves:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for source, target, kind in moves:
                await self._script(keys=[source, target], args=[kind], client=pipe)
            return [bool(moved) for moved in await pipe.execute()]


async def _move_sagas(store: TaskStore, legacy: LegacyKeys, move: _Mover, counts: dict[str, int]) -> None:
    keys = store.keys
    saga, with_tenant, without = legacy.of("saga:"), legacy.of("saga_idem@"), legacy.of("saga_idem:")
    async for found in _scan(store.redis, legacy.pattern("saga")):
        moves: list[tuple[str, str, str]] = []
        for key in found:
            if key.startswith(saga):
                moves.append((key, keys.saga(key[len(saga):]), "keep"))
            elif key.startswith((with_tenant, without)):
                tenant, idempotency_key = _tenant_and_key(key, with_tenant, without)
                moves.append((key, keys.saga_idempotency(idempotency_key, tenant), "keep"))
        moved = await move(moves)
        counts["sagas"] += sum(done for (key, _, _), done in zip(moves, moved, strict=True) if key.startswith(saga))
    await move([(legacy.of("sagas:active"), keys.active_sagas, "set"),
                (legacy.of("sagas:cancel"), keys.cancelled_sagas, "set"),
                (legacy.of("saga_dead_letters"), keys.saga_dead_letters, "stream")])


async def _move_artifacts(store: TaskStore, legacy: LegacyKeys, move: _Mover, counts: dict[str, int]) -> None:
    base = legacy.of("artifact:")
    parts = ("versions", "live", "published")
    async for found in _scan(store.redis, legacy.pattern("artifact:")):
        moves: list[tuple[str, str, str]] = []
        for key in found:
            name, _, part = key[len(base):].rpartition(":")
            if name and part in parts:
                moves.append((key, store.keys.artifact(name)[parts.index(part)], "keep"))
        moved = await move(moves)
        counts["artifacts"] += sum(done for (key, _, _), done in zip(moves, moved, strict=True)
                                   if key.endswith(":versions"))


async def _move_stats(store: TaskStore, legacy: LegacyKeys, move: _Mover, counts: dict[str, int]) -> None:
    """Minute counters (kept as long as they had left) and totals are added to shard 0's."""
    first = store.keys.shard(0)
    base = legacy.of("stats:")
    async for found in _scan(store.redis, legacy.pattern("stats:")):
        moves: list[tuple[str, str, str]] = []
        for key in found:
            minute, _, tenant = key[len(base):].partition("@")
            if minute.isdigit():
                moves.append((key, first.stats(int(minute), tenant or None), "counters"))
        counts["stats"] += sum(await move(moves))
    counts["stats"] += sum(await move([(legacy.of("totals"), first.totals, "counters")]))


def _tenant_and_key(key: str, with_tenant: str, without: str) -> tuple[str | None, str]:
    """(tenant, idempotency key) of an old idempotency key `<with_tenant><tenant>:<key>` or `<without><key>`
    (tenant names hold no ':')."""
    if key.startswith(with_tenant):
        tenant, _, idempotency_key = key[len(with_tenant):].partition(":")
        return tenant, idempotency_key
    return None, key[len(without):]


async def _scan(client: Any, pattern: str) -> AsyncIterator[list[str]]:
    """Keys matching `pattern`, a batch at a time (each key at least once; a key moved meanwhile may be seen)."""
    cursor = 0
    while True:
        cursor, keys = await client.scan(cursor, match=pattern, count=BATCH)
        if keys:
            yield list(keys)
        if not cursor:
            return
