"""The tools the MCP conformance suite's tasks scenarios call (`fixtures.toml` registers them)."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from orchestrator.errors import OrchestratorError, ToolError


class ProtocolFailure(OrchestratorError):
    """A failure of the orchestrator's own (not the tool's answer): a task in MCP's `failed` state."""

    code: ClassVar[int] = -32603

    def __str__(self) -> str:
        return "internal failure while running the job"


def greet(tool_input: dict[str, Any]) -> str:
    return f"Hello, {tool_input['name']}!"


greet.input_schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}  # type: ignore[attr-defined]


async def slow_compute(tool_input: dict[str, Any]) -> dict[str, Any]:
    seconds = float(tool_input.get("seconds", 1))
    await asyncio.sleep(seconds)  # where tasks/cancel (a cancel_task) stops it
    return {"label": tool_input.get("label", ""), "seconds": seconds}


slow_compute.input_schema = {  # type: ignore[attr-defined]
    "type": "object", "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": 3600},
                                     "label": {"type": "string"}}}


async def failing_job(tool_input: dict[str, Any]) -> None:
    await asyncio.sleep(1)  # the work before it fails: the suite sees it working first
    raise ToolError("the job failed (as it always does)")


async def protocol_error_job(tool_input: dict[str, Any]) -> None:
    raise ProtocolFailure()


async def needs_input(tool_input: dict[str, Any]) -> None:
    raise ToolError("this tool asks for input while it runs, which the orchestrator does not support yet")
