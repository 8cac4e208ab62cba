"""Every Redis key and stream name the orchestrator uses, built in one place."""

from __future__ import annotations

from dataclasses import dataclass

ROUTER_GROUP = "routers"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str

    @property
    def tasks(self) -> str:
        """The task stream (the specification's `mcp_tasks`)."""
        return f"{self.prefix}:mcp_tasks"

    @property
    def active(self) -> str:
        """Counter of accepted, unfinished tasks: the backpressure gauge."""
        return f"{self.prefix}:active"

    @property
    def finished(self) -> str:
        """Pub/sub channel announcing task ids that reached a final state."""
        return f"{self.prefix}:finished"

    def task(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}:idem:{key}"
