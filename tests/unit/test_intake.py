"""run_task params → task: tool lookup, tool input schema, limits; v1 and v2."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from orchestrator.errors import InvalidParamsError
from orchestrator.intake import build_task
from orchestrator.models import ChildTask, RunTaskParams, RunTaskParamsV2
from orchestrator.settings import Settings
from orchestrator.tasks import shard_of

SETTINGS = Settings(limits={"max_prompt_chars": 10, "max_context_bytes": 64})


def test_v1_prompt_and_known_context_keys_become_tool_input() -> None:
    params = RunTaskParams(tool="echo", prompt="hi", priority=7, context={"delay_ms": 5, "trace": "abc"}, agent="a")
    task, _ = build_task(params, SETTINGS, now=123.0)
    assert task.input == {"prompt": "hi", "delay_ms": 5}
    assert task.context == {"delay_ms": 5, "trace": "abc"}
    assert (task.priority, task.worker_type, task.agent, task.created_at) == (7, "reasoning", "a", 123.0)
    assert task.v1 and task.prompt == "hi"
    assert shard_of(task.task_id, 1) == 0


def test_a_task_and_its_children_live_in_the_shard_they_were_built_for() -> None:
    params = RunTaskParams(tool="echo", prompt="hi", children=[ChildTask(tool="echo", prompt="c")])
    task, children = build_task(params, SETTINGS, now=1.0, shard=3)
    assert shard_of(task.task_id, 4) == 3 and shard_of(children[0].task_id, 4) == 3
    assert shard_of(task.task_id, 3) is None  # an id naming a shard that does not exist is no task of ours
    assert children[0].parent == task.task_id and task.children == (children[0].task_id,)


def test_v2_input_and_deadline() -> None:
    deadline = datetime(2030, 1, 1, tzinfo=UTC)
    task, _ = build_task(RunTaskParamsV2(tool="echo", input={"prompt": "p", "steps": 3}, deadline=deadline), SETTINGS, 0)
    assert task.input == {"prompt": "p", "steps": 3} and task.deadline == deadline.timestamp()


def test_v2_prompt_alone_is_the_specification_form_read_as_v1() -> None:
    params = RunTaskParamsV2.model_validate({"tool": "echo", "prompt": "hi", "priority": 7,
                                             "context": {"delay_ms": 5, "trace": "abc"}})
    task, _ = build_task(params, SETTINGS, 0)
    assert task.input == {"prompt": "hi", "delay_ms": 5} and task.context == {"delay_ms": 5, "trace": "abc"}
    assert task.prompt == "hi" and task.priority == 7


def test_v2_prompt_beside_input_is_input_prompt_and_context_stays_free_form() -> None:
    params = RunTaskParamsV2(tool="echo", prompt="hi", input={"steps": 2}, context={"delay_ms": 5})
    task, _ = build_task(params, SETTINGS, 0)
    assert task.input == {"steps": 2, "prompt": "hi"} and task.context == {"delay_ms": 5}


def test_a_call_naming_no_priority_gets_the_tools_default() -> None:
    settings = Settings(tools={"echo": {"priority": 2}})
    assert build_task(RunTaskParamsV2(tool="echo", prompt="x"), settings, 0)[0].priority == 2
    assert build_task(RunTaskParamsV2(tool="echo", prompt="x", priority=5), settings, 0)[0].priority == 5
    assert build_task(RunTaskParams(tool="echo", prompt="x"), SETTINGS, 0)[0].priority == 5


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        (RunTaskParamsV2(tool="echo", prompt="x", input={"prompt": "y"}), {"params.prompt"}),
        (RunTaskParamsV2(tool="echo"), {"params.input"}),
        (RunTaskParamsV2(tool="echo", prompt="x" * 11, input={}), {"params.prompt"}),
        (RunTaskParamsV2(tool="autotune", prompt="x", input={"model": "svc", "dataset": "iris", "search": {}}),
         {"params.prompt"}),
        (RunTaskParams(tool="nope", prompt="x"), {"params.tool"}),
        (RunTaskParams(tool="echo", prompt="x" * 11), {"params.prompt"}),
        (RunTaskParams(tool="echo", prompt="x", context={"steps": 0}), {"params.context.steps"}),
        (RunTaskParams(tool="echo", prompt="x", context={"blob": "y" * 100}), {"params.context"}),
        (RunTaskParamsV2(tool="echo", input={"prompt": "x" * 11}), {"params.input.prompt"}),
        (RunTaskParamsV2(tool="echo", input={"delay_ms": -1, "x": 1}),
         {"params.input.prompt", "params.input.delay_ms", "params.input.x"}),
        (RunTaskParamsV2(tool="deepseek", input={"prompt": "a", "messages": []}),
         {"params.input", "params.input.messages"}),
    ],
)
def test_invalid_params_name_every_offending_field(params: RunTaskParams | RunTaskParamsV2, fields: set[str]) -> None:
    with pytest.raises(InvalidParamsError) as caught:
        build_task(params, SETTINGS, 0)
    assert set(caught.value.fields) == fields


def test_sizes_are_counted_in_utf8_bytes_as_stored() -> None:
    def with_note(chars: int) -> RunTaskParamsV2:
        return RunTaskParamsV2(tool="echo", input={"prompt": "x"}, context={"note": "é" * chars})

    build_task(with_note(26), SETTINGS, 0)  # {"note":"é…"}: 11 + 2 × 26 = 63 bytes (escaped "\u00e9": 167)
    with pytest.raises(InvalidParamsError) as caught:
        build_task(with_note(27), SETTINGS, 0)
    assert caught.value.fields == {"params.context": "larger than 64 bytes"}


def test_a_priority_above_the_callers_limit_is_refused_naming_the_field() -> None:
    params = RunTaskParams(tool="echo", prompt="x", priority=10,
                           children=[ChildTask(tool="echo", prompt="c", priority=9), ChildTask(tool="echo", prompt="d")])
    with pytest.raises(InvalidParamsError) as caught:
        build_task(params, SETTINGS, now=1.0, max_priority=8)
    assert set(caught.value.fields) == {"params.priority", "params.children.0.priority"}
    assert "urgent" in caught.value.fields["params.priority"]
    build_task(params, SETTINGS, now=1.0, max_priority=10)
