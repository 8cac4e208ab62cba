"""The tools the MCP conformance suite's tasks scenarios call (`fixtures.toml` registers them)."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from orchestrator.errors import OrchestratorError, ToolError
from orchestrator.tools.base import ToolContext


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


CONFIRM = {"type": "object", "properties": {"confirm": {"type": "boolean"}}, "required": ["confirm"]}
NAME = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


async def confirm_delete(tool_input: dict[str, Any], ctx: ToolContext) -> str:
    """Asks to confirm (the task waits, input_required), then answers what it would have done."""
    answer = await ctx.ask("confirm", f"Delete {tool_input.get('filename', 'the file')}?", CONFIRM)
    return f"deleted {tool_input.get('filename')}" if answer["confirm"] else "kept it"


async def multi_input(tool_input: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """Asks two questions at once: both are pending together."""
    first, second = await asyncio.gather(ctx.ask("first", "First input?"), ctx.ask("second", "Second input?"))
    return {"first": first, "second": second}


async def greet_asked(tool_input: dict[str, Any], ctx: ToolContext) -> str:
    """Asks for a name before it becomes a task (`ask_first`), then greets it."""
    answer = await ctx.ask("user_name", "What is your name?", NAME)
    return f"Hello, {answer['name']}!"
