"""An accepted task as a worker runs it, and how task ids name their shard."""

from __future__ import annotations

import base64
import re
import secrets
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_ENTROPY = bytearray()  # from os.urandom, drawn in blocks: one system call per 256 ids, not per id


def new_task_id(shard: int) -> str:
    """A random, unguessable task id (120 bits) that names the shard holding the task: `<shard>-<token>`."""
    if len(_ENTROPY) < 15:
        _ENTROPY.extend(secrets.token_bytes(15 * 256))
    token = base64.urlsafe_b64encode(_ENTROPY[:15]).decode()
    del _ENTROPY[:15]
    return f"{shard}-{token}"


LEGACY_ID = re.compile(r"^[0-9a-f]{32}$")  # ids before shards: a uuid4 in hex


def shard_of(task_id: str, shards: int) -> int | None:
    """The shard a task id names; None for an id no task of ours can have. An id made before shards existed
    lives where the upgrade put it: a shard chosen by its hash."""
    if LEGACY_ID.match(task_id):
        return zlib.crc32(task_id.encode()) % shards
    head, sep, token = task_id.partition("-")
    if not sep or not token or not head.isdigit() or len(head) > 4:
        return None
    shard = int(head)
    return shard if shard < shards else None


@dataclass(frozen=True, slots=True)
class TaskSpec:
    task_id: str
    tool: str
    worker_type: str
    priority: int
    input: Mapping[str, Any]
    created_at: float
    context: Mapping[str, Any] = field(default_factory=dict)
    v1: bool = False  # submitted with a v1 `prompt` (which lives in `input`)
    agent: str | None = None  # as the caller declared it
    tenant: str | None = None  # as its API key says (None: auth off)
    deadline: float | None = None
    not_before: float | None = None  # delayed: scheduled until then
    idempotency_key: str | None = None
    parent: str | None = None
    saga: str | None = None  # the saga whose step (or compensation) this task runs
    children: tuple[str, ...] = ()  # fanout: ids of the tasks queued when this one succeeds
    rerun_of: str | None = None  # `rerun_task`: the finished task this one runs again
    traceparent: str | None = None  # W3C trace context of its submit span, when tracing is on

    @property
    def owner(self) -> str:
        """Whom fairness and analytics count the task under: its tenant, else (auth off) its agent."""
        return self.tenant or self.agent or ""

    @property
    def ready_at(self) -> float:
        """When it could first run: accepted, or (delayed) its not_before. Queue wait counts from here."""
        return max(self.created_at, self.not_before or self.created_at)

    @property
    def prompt(self) -> str | None:
        """The v1 prompt, if it was submitted as one."""
        text = self.input.get("prompt") if self.v1 else None
        return text if isinstance(text, str) else None
