"""What a tool is: an async callable with an input schema, run by a worker for one task attempt."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

JsonValue = Any  # anything json.dumps accepts


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One attempt of one task, as the tool sees it."""

    task_id: str
    attempt: int
    input: Mapping[str, JsonValue]  # validated against the tool's input_schema; holds the prompt
    context: Mapping[str, JsonValue] = field(default_factory=dict)
    deadline: float | None = None  # unix seconds
    checkpoint: Mapping[str, JsonValue] | None = None  # the latest one saved by an earlier attempt
    tenant: str | None = None  # whose task it is (None: auth off): what a tool keeps, it keeps per tenant


class ToolContext(Protocol):
    """What a running tool may report back; the worker persists it."""

    async def progress(self, data: Mapping[str, JsonValue]) -> None: ...

    async def checkpoint(
        self, state: Mapping[str, JsonValue], progress: Mapping[str, JsonValue] | None = None
    ) -> None:
        """Save resumable state (and, in the same write, progress)."""
        ...

    async def ask(self, key: str, message: str, schema: Mapping[str, JsonValue] | None = None) -> JsonValue:
        """The answer to a request for input (fitting `schema`): at once when the task holds it, else after the
        task waited for it (`input_required`, no slot held) and ran again from its latest checkpoint."""
        ...


class Tool(abc.ABC):
    kind: ClassVar[str]
    input_schema: ClassVar[Mapping[str, JsonValue]]
    # Whether a new attempt can continue from the latest checkpoint; otherwise it restarts from zero.
    resumable: ClassVar[bool] = False
    # Whether a run can be stopped where it stands (preempted for urgent work); one that cannot is never
    # picked as a victim.
    preemptible: bool = True

    def __init__(self, name: str) -> None:
        self.name = name

    @abc.abstractmethod
    async def run(self, call: ToolCall, ctx: ToolContext) -> JsonValue:
        """Do the work; raise `ToolError` with a readable message on failure."""

    async def aclose(self) -> None:
        """Release connections; called when the worker stops."""
