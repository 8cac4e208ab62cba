"""An accepted task as it travels: from the stream entry, through the router, to a worker."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


def new_task_id() -> str:
    """A random, unguessable task id."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class TaskSpec:
    task_id: str
    tool: str
    worker_type: str
    priority: int
    input: Mapping[str, Any]
    created_at: float
    context: Mapping[str, Any] = field(default_factory=dict)
    prompt: str | None = None
    agent: str | None = None  # as the caller declared it
    tenant: str | None = None  # as its API key says (None: auth off)
    deadline: float | None = None
    idempotency_key: str | None = None
    parent: str | None = None
    children: tuple[str, ...] = ()  # fanout: ids of the tasks queued when this one succeeds
    entry_id: str | None = None  # the stream entry, once written

    @property
    def owner(self) -> str:
        """Whom fairness and analytics count the task under: its tenant, else (auth off) its agent."""
        return self.tenant or self.agent or ""

    def payload(self) -> str:
        """The JSON carried in the stream entry's `payload` field."""
        data = asdict(self)
        data.pop("entry_id")
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_entry(cls, entry_id: str, fields: Mapping[str, str]) -> TaskSpec:
        """Rebuild a task from a `mcp_tasks` stream entry; a fanout child gets its parent's result."""
        data = json.loads(fields["payload"])
        data["children"] = tuple(data.get("children", ()))
        if "parent_result" in fields:
            data["context"] = {**data["context"], "parent_result": json.loads(fields["parent_result"])}
        return cls(**data, entry_id=entry_id)
