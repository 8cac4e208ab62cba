"""The built-in `echo` tool: returns its prompt after an optional, resumable, stepped delay."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from orchestrator.tools.base import JsonValue, Tool, ToolCall, ToolContext

logger = logging.getLogger(__name__)


class EchoTool(Tool):
    """Sleeps `delay_ms` in `steps` equal steps, reporting and checkpointing each, then echoes `prompt` (with
    `ask`, after asking for input first, and the answer).

    With an effect directory (operator setting, never client input) it also performs a side effect the
    way a real tool should: once per task, keyed by the task id, whatever the number of attempts.
    """

    kind: ClassVar[str] = "echo"
    resumable: ClassVar[bool] = True
    input_schema: ClassVar[Mapping[str, JsonValue]] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "description": "returned as `text`"},
            "delay_ms": {"type": "integer", "minimum": 0, "maximum": 3_600_000, "default": 0},
            "steps": {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 1},
            "ask": {"type": "object", "description": "first ask for input (`ctx.ask`); the answer is returned as "
                    "`answer`", "properties": {
                        "key": {"type": "string", "minLength": 1, "maxLength": 128, "default": "answer"},
                        "message": {"type": "string", "maxLength": 4000},
                        "schema": {"type": "object", "description": "JSON Schema of the answer (default: any "
                                   "object)"}},
                    "required": ["message"], "additionalProperties": False},
        },
        "required": ["prompt"],
        "additionalProperties": False,
    }

    def __init__(self, name: str, effect_dir: Path | None = None) -> None:
        super().__init__(name)
        self._effects = EffectLog(effect_dir) if effect_dir is not None else None

    async def run(self, call: ToolCall, ctx: ToolContext) -> JsonValue:
        """Run the remaining steps, starting after the checkpointed one."""
        prompt: str = call.input["prompt"]
        delay_ms: int = call.input.get("delay_ms", 0)
        steps: int = call.input.get("steps", 1)
        asked = call.input.get("ask")
        answer = None if asked is None else await ctx.ask(asked.get("key", "answer"), asked["message"],
                                                          asked.get("schema"))
        done = resumed_step(call.checkpoint, steps)
        step_s = delay_ms / 1000 / steps
        for step in range(done + 1, steps + 1):
            await asyncio.sleep(step_s)  # the work itself; also where preemption cancels us
            progress = {"step": step, "steps": steps}
            if step < steps:
                await ctx.checkpoint({"step": step}, progress)
            else:  # nothing is left to resume after the last step
                await ctx.progress(progress)
        if self._effects is not None:
            await asyncio.to_thread(self._effects.perform, call.task_id, call.attempt)
        result: dict[str, JsonValue] = {"text": prompt, "steps": steps}
        if asked is not None:
            result["answer"] = answer
        if "parent_result" in call.context:  # a fanout child shows what its parent handed it
            result["parent_result"] = call.context["parent_result"]
        return result


class EffectLog:
    """A side effect made idempotent by the task id: a marker file created exclusively (O_EXCL) decides
    whether this attempt performs it; each performed effect is appended to `effects.log`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def perform(self, task_id: str, attempt: int) -> bool:
        """Do the effect unless an earlier attempt of this task already did; True if done now."""
        try:
            fd = os.open(self.directory / f"{task_id}.done", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            logger.info("effect already performed", extra={"task_id": task_id, "attempt": attempt})
            return False
        os.close(fd)
        with (self.directory / "effects.log").open("a") as log:  # O_APPEND: one whole line per write
            log.write(f"{task_id} {attempt}\n")
        return True


def resumed_step(checkpoint: Mapping[str, JsonValue] | None, steps: int) -> int:
    """The last step an earlier attempt completed, 0 when starting fresh."""
    step = (checkpoint or {}).get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        return 0
    return max(0, min(step, steps))
