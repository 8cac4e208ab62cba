"""A tenant's long-lived connections, counted across every ingress replica: event-stream followers and MCP
sessions each take a slot, so one tenant cannot hold every request slot while others wait."""

from __future__ import annotations

from typing import Any

from orchestrator.adapters.keys import Keys
from orchestrator.adapters.scripts import Scripts
from orchestrator.adapters.task_store import storage_errors
from orchestrator.errors import QuotaExceededError

ANYONE = "-"  # the one tenant when auth is off


class TenantSlots:
    def __init__(self, client: Any, prefix: str) -> None:
        self._redis = client
        self._keys = Keys(prefix)
        self._scripts = Scripts(client)

    async def take(self, kind: str, tenant: str | None, member: str, limit: int, hold_s: float) -> None:
        """Hold (or keep holding) a slot for `hold_s`; raises QuotaExceededError (retryable, with the time until
        a slot frees) when the tenant holds `limit` already."""
        with storage_errors():
            wait_ms = await self._scripts.run("slot_take", {"slots": self._keys.slots(kind, tenant or ANYONE)},
                                              {"member": member, "limit": limit, "hold_ms": round(hold_s * 1000)})
        if wait_ms:
            raise QuotaExceededError(tenant or ANYONE, kind, limit, round(int(wait_ms) / 1000, 3))

    async def release(self, kind: str, tenant: str | None, member: str) -> None:
        with storage_errors():
            await self._redis.zrem(self._keys.slots(kind, tenant or ANYONE), member)
