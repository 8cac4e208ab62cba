"""A versioned artifact store in Redis: what the `deploy` step of a saga publishes and its compensation
restores. Artifacts belong to a tenant (another tenant's of the same name is a different artifact); every
version is kept while the artifact is in use, and the whole artifact expires `retention_s` after its last
change; `live` names the version in use."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from orchestrator.adapters.keys import Keys
from orchestrator.adapters.scripts import Scripts
from orchestrator.adapters.task_store import storage_errors


class ArtifactStore:
    def __init__(self, client: aioredis.Redis, prefix: str, retention_s: int = 30 * 86_400) -> None:
        self._redis = client
        self._keys = Keys(prefix)
        self._retention_s = retention_s
        self._scripts = Scripts(client)

    def _named(self, name: str, tenant: str | None) -> dict[str, str]:
        versions, live, published = self._keys.artifact(name, tenant)
        return {"versions": versions, "live": live, "published": published}

    async def publish(self, name: str, content: Any, publication_id: str,
                      tenant: str | None = None) -> tuple[int, int | None]:
        """Add a version and make it live; the new version and the one it replaced (None: none).

        Idempotent by `publication_id`: publishing again answers the first publication's result."""
        with storage_errors():
            version, previous = await self._scripts.run("artifact_publish", self._named(name, tenant), {
                "publication_id": publication_id, "content": json.dumps(content), "retention_s": self._retention_s})
        return int(version), (None if int(previous) == -1 else int(previous))

    async def restore(self, name: str, version: int | None, tenant: str | None = None) -> bool:
        """Make `version` live again (None: no live version); False if there is no such version."""
        with storage_errors():
            done = await self._scripts.run("artifact_restore", self._named(name, tenant), {
                "version": -1 if version is None else version, "retention_s": self._retention_s})
        return bool(done)

    async def live(self, name: str, tenant: str | None = None) -> tuple[int, Any] | None:
        """The live version and its content, or None."""
        versions, live, _ = self._keys.artifact(name, tenant)
        with storage_errors():
            version = await self._redis.get(live)
            if version is None:
                return None
            content = await self._redis.hget(versions, version)
        return int(version), (None if content is None else json.loads(content))

    async def versions(self, name: str, tenant: str | None = None) -> int:
        with storage_errors():
            return int(await self._redis.hlen(self._keys.artifact(name, tenant)[0]))
