"""A versioned artifact store in Redis: what the `deploy` step of a saga publishes and its compensation
restores. Every version is kept; `live` names the one in use."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from orchestrator.adapters.keys import Keys
from orchestrator.adapters.task_store import storage_errors

# KEYS: versions, live, published; ARGV: publication id, content JSON
# → {version, previous live version or -1}; a publication id seen before answers its first result
PUBLISH = """
local seen = redis.call('HGET', KEYS[3], ARGV[1])
if seen then return cjson.decode(seen) end
local version = redis.call('HLEN', KEYS[1]) + 1
local previous = tonumber(redis.call('GET', KEYS[2]) or '-1')
redis.call('HSET', KEYS[1], version, ARGV[2])
redis.call('SET', KEYS[2], version)
local result = {version, previous}
redis.call('HSET', KEYS[3], ARGV[1], cjson.encode(result))
return result
"""

# KEYS: versions, live; ARGV: version to make live (-1: none) → 1, or 0 if that version does not exist
RESTORE = """
local version = tonumber(ARGV[1])
if version == -1 then redis.call('DEL', KEYS[2]) return 1 end
if redis.call('HEXISTS', KEYS[1], version) == 0 then return 0 end
redis.call('SET', KEYS[2], version)
return 1
"""


class ArtifactStore:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._redis = client
        self._keys = Keys(prefix)
        self._publish = client.register_script(PUBLISH)
        self._restore = client.register_script(RESTORE)

    async def publish(self, name: str, content: Any, publication_id: str) -> tuple[int, int | None]:
        """Add a version and make it live; the new version and the one it replaced (None: none).

        Idempotent by `publication_id`: publishing again answers the first publication's result."""
        with storage_errors():
            version, previous = await self._publish(keys=self._keys.artifact(name),
                                                    args=[publication_id, json.dumps(content)])
        return int(version), (None if int(previous) == -1 else int(previous))

    async def restore(self, name: str, version: int | None) -> bool:
        """Make `version` live again (None: no live version); False if there is no such version."""
        with storage_errors():
            done = await self._restore(keys=self._keys.artifact(name)[:2], args=[-1 if version is None else version])
        return bool(done)

    async def live(self, name: str) -> tuple[int, Any] | None:
        """The live version and its content, or None."""
        versions, live, _ = self._keys.artifact(name)
        with storage_errors():
            version = await self._redis.get(live)
            if version is None:
                return None
            content = await self._redis.hget(versions, version)
        return int(version), (None if content is None else json.loads(content))

    async def versions(self, name: str) -> int:
        with storage_errors():
            return int(await self._redis.hlen(self._keys.artifact(name)[0]))
