"""The built-in `echo` tool: returns its prompt after an optional, resumable, stepped delay."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import ClassVar

from orchestrator.tools.base import JsonValue, Tool, ToolCall, ToolContext

logger = logging.getLogger(__name__)


class EchoTool(Tool):
    """Sleeps `delay_ms` in `steps` equal steps, reporting and checkpointing each, then echoes `prompt`."""

    kind: ClassVar[str] = "echo"
    resumable: ClassVar[bool] = True
    input_schema: ClassVar[Mapping[str, JsonValue]] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "description": "returned as `text`"},
            "delay_ms": {"type": "integer", "minimum": 0, "maximum": 3_600_000, "default": 0},
            "steps": {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 1},
        },
        "required": ["prompt"],
        "additionalProperties": False,
    }

    def __init__(self, name: str) -> None:
        super().__init__(name)

    async def run(self, call: ToolCall, ctx: ToolContext) -> JsonValue:
        """Run the remaining steps, starting after the checkpointed one."""
        prompt: str = call.input["prompt"]
        delay_ms: int = call.input.get("delay_ms", 0)
        steps: int = call.input.get("steps", 1)
        done = resumed_step(call.checkpoint, steps)
        step_s = delay_ms / 1000 / steps
        for step in range(done + 1, steps + 1):
            await asyncio.sleep(step_s)  # the work itself; also where preemption cancels us
            progress = {"step": step, "steps": steps}
            if step < steps:
                await ctx.checkpoint({"step": step}, progress)
            else:  # nothing is left to resume after the last step
                await ctx.progress(progress)
        if "parent_result" in call.context:  # a fanout child shows what its parent handed it
            return {"text": prompt, "steps": steps, "parent_result": call.context["parent_result"]}
        return {"text": prompt, "steps": steps}


def resumed_step(checkpoint: Mapping[str, JsonValue] | None, steps: int) -> int:
    """The last step an earlier attempt completed, 0 when starting fresh."""
    step = (checkpoint or {}).get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        return 0
    return max(0, min(step, steps))
