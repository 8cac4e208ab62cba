"""EchoTool: echoes, reports each step, resumes after the checkpointed step."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from orchestrator.tools.base import ToolCall
from orchestrator.tools.echo import EchoTool, EffectLog, resumed_step
from tests.support import RecordingContext


def call(checkpoint: Mapping[str, Any] | None = None, **tool_input: Any) -> ToolCall:
    return ToolCall(task_id="t1", attempt=1, input=tool_input, checkpoint=checkpoint)


async def test_returns_prompt_with_one_step_by_default() -> None:
    ctx = RecordingContext()
    assert await EchoTool("echo").run(call(prompt="hello"), ctx) == {"text": "hello", "steps": 1}
    assert ctx.progress_calls == [{"step": 1, "steps": 1}]
    assert ctx.checkpoints == []  # nothing to resume after the last step


async def test_reports_progress_and_checkpoints_every_step() -> None:
    ctx = RecordingContext()
    result = await EchoTool("echo").run(call(prompt="p", steps=4, delay_ms=4), ctx)
    assert result == {"text": "p", "steps": 4}
    assert ctx.progress_calls == [{"step": i, "steps": 4} for i in (1, 2, 3, 4)]
    assert ctx.checkpoints == [{"step": i} for i in (1, 2, 3)]


async def test_resumes_after_checkpointed_step() -> None:
    ctx = RecordingContext()
    result = await EchoTool("echo").run(call({"step": 3}, prompt="p", steps=5), ctx)
    assert result == {"text": "p", "steps": 5}
    assert ctx.progress_calls == [{"step": 4, "steps": 5}, {"step": 5, "steps": 5}]
    assert ctx.checkpoints == [{"step": 4}]


async def test_checkpoint_of_finished_run_does_no_more_steps() -> None:
    ctx = RecordingContext()
    assert await EchoTool("echo").run(call({"step": 2}, prompt="p", steps=2), ctx) == {"text": "p", "steps": 2}
    assert ctx.progress_calls == []


@pytest.mark.parametrize(
    ("checkpoint", "expected"),
    [(None, 0), ({}, 0), ({"step": 2}, 2), ({"step": 99}, 5), ({"step": -1}, 0), ({"step": "2"}, 0), ({"step": True}, 0)],
)
def test_resumed_step(checkpoint: Mapping[str, Any] | None, expected: int) -> None:
    assert resumed_step(checkpoint, steps=5) == expected


@pytest.mark.parametrize(
    ("tool_input", "valid"),
    [
        ({"prompt": "x"}, True),
        ({"prompt": "x", "delay_ms": 3_600_000, "steps": 10_000}, True),
        ({}, False),
        ({"prompt": 1}, False),
        ({"prompt": "x", "delay_ms": -1}, False),
        ({"prompt": "x", "steps": 0}, False),
        ({"prompt": "x", "steps": 10_001}, False),
        ({"prompt": "x", "colour": "red"}, False),
    ],
)
def test_input_schema(tool_input: dict[str, Any], valid: bool) -> None:
    validator = jsonschema.Draft202012Validator(EchoTool.input_schema)
    validator.check_schema(EchoTool.input_schema)
    assert validator.is_valid(tool_input) is valid


def test_the_side_effect_happens_once_per_task_whatever_the_attempts(tmp_path: Path) -> None:
    log = EffectLog(tmp_path)
    assert log.perform("t1", attempt=1) is True
    assert log.perform("t1", attempt=2) is False  # a retry after a crash: already done
    assert log.perform("t2", attempt=1) is True
    assert (tmp_path / "effects.log").read_text().splitlines() == ["t1 1", "t2 1"]


async def test_echo_performs_its_effect_when_configured(tmp_path: Path) -> None:
    tool = EchoTool("echo", effect_dir=tmp_path)
    for attempt in (1, 2):
        await tool.run(ToolCall(task_id="t9", attempt=attempt, input={"prompt": "x"}), RecordingContext())
    assert (tmp_path / "effects.log").read_text() == "t9 1\n"
