"""API keys created at runtime, in Redis: the store (create, revoke, read) and each replica's ring of keys,
kept fresh by pub/sub and a periodic version check, which also adds its failed authentications to the totals.

Only a key's SHA-256 is stored. Every key of the family carries the tag `{<prefix>:keys}`, so a key script
runs on one Redis Cluster slot; the change notice is a classic PUBLISH from the script itself (every node
delivers it), so a change and its notice are one step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.adapters.channels import Channels
from orchestrator.adapters.keys import Keys
from orchestrator.adapters.scripts import Scripts
from orchestrator.adapters.task_store import storage_errors
from orchestrator.auth import Authenticator, KeySnapshot, Principal, RuntimeKey
from orchestrator.errors import StorageUnavailableError
from orchestrator.models import ApiKeyRecord

logger = logging.getLogger(__name__)

REFRESH_S = 0.5  # how often a replica checks the keys' version (a missed notice costs at most this)
FIRST_LOAD_S = 5.0  # how long a request waits for a new replica's first read of the keys
RETAIN_S = 7 * 86_400  # an expired or revoked key is still reported as such this long, then forgotten
_BACKOFF_MAX_S = 5.0


class KeyStore:
    """The runtime keys in Redis: records by hash, live names, revocations, a version counter."""

    def __init__(self, client: Any, prefix: str) -> None:
        self._redis = client
        self._keys = Keys(prefix)
        self._family = self._keys.api_keys()
        self._scripts = Scripts(client)
        self.channel = self._keys.keys_changed

    async def create(self, digest: str, record: ApiKeyRecord, now: float) -> str:
        """Store a key's record under its hash: 'created', 'name taken' (a working key has the name) or
        'hash taken'."""
        expires_at = "" if record.expires_at is None else repr(record.expires_at)
        with storage_errors():
            return str(await self._scripts.run("key_create", self._family, {
                "digest": digest, "name": record.name, "record": record.model_dump_json(), "expires_at": expires_at,
                "now": repr(now), "retain_s": RETAIN_S, "channel": self.channel}))

    async def revoke(self, name: str, now: float) -> ApiKeyRecord | None:
        """Revoke the key named `name` (not revoked yet); its record, or None when there is none."""
        with storage_errors():
            raw = await self._scripts.run("key_revoke", self._family, {"name": name, "now": repr(now),
                                                                       "channel": self.channel})
        return None if not raw else ApiKeyRecord.model_validate_json(raw)

    async def version(self) -> int | None:
        """The count of changes so far; None if no key was ever created here."""
        with storage_errors():
            raw = await self._redis.get(self._family["version"])
        return None if raw is None else int(raw)

    async def load(self) -> tuple[int | None, dict[str, RuntimeKey]]:
        """The version and every key (ended ones included) by hash. The version is read first: the keys are
        at least that new, so a change made meanwhile is seen by the next version check."""
        with storage_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(self._family["version"])
                pipe.hgetall(self._family["records"])
                pipe.hgetall(self._family["revoked"])
                version, records, revoked = await pipe.execute()
        keys: dict[str, RuntimeKey] = {}
        for digest, raw in records.items():
            try:
                record = ApiKeyRecord.model_validate_json(raw)
            except ValueError:  # written by a newer version or by hand: that key does not work here
                logger.warning("unreadable API key record skipped", extra={"hash_suffix": digest[-6:]})
                continue
            ended = revoked.get(digest)
            keys[digest] = RuntimeKey(record.name, record.tenant, frozenset(record.scopes), record.created_at,
                                      record.expires_at, None if ended is None else float(ended))
        return (None if version is None else int(version)), keys

    async def records(self) -> list[tuple[ApiKeyRecord, float | None]]:
        """Every stored record with when it was revoked (None: not revoked)."""
        with storage_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._family["records"])
                pipe.hgetall(self._family["revoked"])
                records, revoked = await pipe.execute()
        found: list[tuple[ApiKeyRecord, float | None]] = []
        for digest, raw in records.items():
            with contextlib.suppress(ValueError):
                ended = revoked.get(digest)
                found.append((ApiKeyRecord.model_validate_json(raw), None if ended is None else float(ended)))
        return found

    async def add_failures(self, counts: Mapping[str, int]) -> None:
        with storage_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                for reason, count in counts.items():
                    pipe.hincrby(self._keys.auth_failures, reason, count)
                await pipe.execute()

    async def failures(self) -> dict[str, int]:
        """Failed authentications by reason, counted by every replica (flushed within REFRESH_S)."""
        with storage_errors():
            counts = await self._redis.hgetall(self._keys.auth_failures)
        return {reason: int(count) for reason, count in counts.items()}


class KeyRing:
    """One replica's runtime keys, fed to its Authenticator: read before the first request is answered, reloaded
    at once when a change is published, and checked every REFRESH_S (a notice lost while reconnecting costs at
    most that). The same loop adds the replica's failed authentications to the shared totals and logs what is due.
    """

    def __init__(self, authenticator: Authenticator, store: KeyStore, channels: Channels,
                 clock: Callable[[], float] = time.time) -> None:
        self._auth, self._store, self._channels, self._clock = authenticator, store, channels, clock
        self._version: int | None = None
        self._loaded = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller (see Authenticator.authenticate); on a new replica, after the first read of the keys."""
        self._start()
        try:
            return self._auth.authenticate(authorization)
        except StorageUnavailableError:
            if self._auth.loaded:
                raise
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FIRST_LOAD_S):
                await self._loaded.wait()
        return self._auth.authenticate(authorization)

    def close(self) -> None:
        """Stop the refresh loop."""
        if self._task is not None and not self._task.done():
            with contextlib.suppress(RuntimeError):  # the loop may already be closed at interpreter exit
                self._task.cancel()

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="key-ring")

    async def _run(self) -> None:
        backoff_s = REFRESH_S
        while True:
            try:
                async with self._channels.listen(self._store.channel) as changes:
                    await self._refresh(force=True)  # after subscribing: no change slips between
                    backoff_s = REFRESH_S
                    while True:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(REFRESH_S):
                                await changes.get()
                        while not changes.empty():  # one reload for a burst of changes
                            changes.get_nowait()
                        await self._refresh(force=False)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("API keys could not be refreshed from Redis; retrying", exc_info=True)
                await asyncio.sleep(backoff_s)  # backoff before retrying, not synchronisation
                backoff_s = min(backoff_s * 2, _BACKOFF_MAX_S)

    async def _refresh(self, *, force: bool) -> None:
        now = self._clock()
        if force or await self._store.version() != self._version:
            self._version, keys = await self._store.load()
            self._auth.load(KeySnapshot(keys, managed=self._version is not None, confirmed_at=now))
            self._loaded.set()
        else:
            self._auth.confirm(now)
        await self._flush()
        self._auth.report(self._clock())

    async def _flush(self) -> None:
        counts = self._auth.failures.take()
        if not counts:
            return
        try:
            await self._store.add_failures(counts)
        except BaseException:
            self._auth.failures.restore(counts)  # counted next time
            raise
