"""The saga state machine, definitions and templates, without Redis or Ray."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator import saga
from orchestrator.saga import (
    Cancel,
    CompensationStatus,
    Fail,
    SagaStatus,
    Settle,
    Sleep,
    StepStatus,
    Submit,
    WorkflowDefinition,
)
from orchestrator.settings import Settings


def workflow(**overrides: Any) -> WorkflowDefinition:
    steps = [
        {"name": "a", "tool": "echo", "input": {"prompt": "{{ input.text }}"},
         "compensation": {"tool": "echo", "input": {"prompt": "undo a {{ steps.a.output.text }}"}}},
        {"name": "b", "tool": "echo", "input": {"prompt": "b after {{ steps.a.output.text }}"},
         "retry": {"max_attempts": 2, "backoff_s": 5}},
        {"name": "c", "tool": "echo", "input": {"prompt": "{{ steps.b.output }}"},
         "compensation": {"tool": "echo", "input": {"prompt": "undo c"}}},
    ]
    return WorkflowDefinition.model_validate({"name": "w", "steps": steps, **overrides})


def start() -> saga.SagaState:
    return saga.new_saga("s1", workflow(), {"text": "hi"}, 5, now=100.0)


def run_step(state: saga.SagaState, status: str, output: Any = None, error: str | None = None,
             now: float = 101.0) -> saga.SagaState:
    """Submit what next_command asks for and finish its task with `status`."""
    command = saga.next_command(state, now)
    assert isinstance(command, Submit), command
    state = saga.on_submitting(state, command, now)
    state = saga.on_submitted(state, command.step, command.compensation, f"task-{command.key}", now)
    return saga.on_task_finished(state, command.step, command.compensation, status, output, error, now)


def test_definitions_name_what_cannot_run() -> None:
    assert workflow().problems({"echo"}) == {}
    bad = WorkflowDefinition.model_validate({"name": "w", "steps": [
        {"name": "a", "tool": "nope", "input": {"prompt": "{{ steps.b.output }}"}},
        {"name": "b", "tool": "echo", "input": {"x": "{{ env.HOME }}"}},
        {"name": "b", "tool": "echo", "input": {"x": "{{ steps.a.result }}"}},
    ]})
    problems = bad.problems({"echo"})
    assert problems["steps.0.tool"] == "unknown tool 'nope'"
    assert "names step 'b', which does not run before this point" in problems["steps.0.input"]
    assert "refer to input" in problems["steps.1.input"]
    assert problems["steps.2.name"] == "step name 'b' is used twice"
    assert "by its output" in problems["steps.2.input"]


def test_bad_workflows_in_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="workflow 'w' cannot run: steps.0.tool: unknown tool 'nope'"):
        Settings(workflows={"w": {"name": "w", "steps": [{"name": "a", "tool": "nope"}]}})
    assert "w" in Settings(workflows={"w": workflow().model_dump()}).all_workflows()


def test_templates_keep_whole_values_and_format_embedded_ones() -> None:
    scope = {"input": {"n": 3, "tags": ["x"]}, "steps": {"a": {"output": {"text": "hi", "n": [1, 2]}}}}
    assert saga.render({"n": "{{ input.n }}", "t": "{{input.tags}}"}, scope) == {"n": 3, "t": ["x"]}
    assert saga.render("got {{ steps.a.output.text }} and {{ steps.a.output.n.1 }}", scope) == "got hi and 2"
    with pytest.raises(saga.TemplateError, match="no 'missing' there"):
        saga.render("{{ steps.a.output.missing }}", scope)


def test_success_runs_each_step_once_in_order_with_earlier_outputs() -> None:
    state = start()
    first = saga.next_command(state, 101)
    assert first == Submit("a", False, "saga:s1:a:1", "echo", {"prompt": "hi"}, None)
    state = run_step(state, "succeeded", {"text": "hi"})
    second = saga.next_command(state, 101)
    assert isinstance(second, Submit) and second.input == {"prompt": "b after hi"}
    state = run_step(state, "succeeded", {"text": "B"})
    state = run_step(state, "succeeded", {"text": "C"})
    assert saga.next_command(state, 102) == Settle(SagaStatus.SUCCEEDED)
    state = saga.on_settled(state, SagaStatus.SUCCEEDED, 102)
    assert saga.next_command(state, 103) is None
    assert [len(s.attempts) for s in state.steps] == [1, 1, 1]


def test_a_resumed_saga_resubmits_the_step_in_flight_by_the_same_key() -> None:
    state = start()
    command = saga.next_command(state, 101)
    assert isinstance(command, Submit)
    state = saga.on_submitting(state, command, 101)  # persisted, then the coordinator died
    again = saga.next_command(state, 200)
    assert again == command  # same idempotency key: the task service answers with the same task
    assert len(saga.on_submitting(state, again, 200).steps[0].attempts) == 1


def test_failure_retries_then_compensates_only_completed_steps_in_reverse() -> None:
    state = run_step(start(), "succeeded", {"text": "hi"})
    state = run_step(state, "failed", error="boom", now=110)
    assert state.steps[1].status is StepStatus.PENDING and state.steps[1].retry_at == 115
    assert saga.next_command(state, 112) == Sleep(115)
    state = run_step(state, "failed", error="boom again", now=116)  # second and last attempt
    assert state.status is SagaStatus.COMPENSATING and state.error == "step 'b' failed: boom again"
    undo = saga.next_command(state, 117)
    assert undo == Submit("a", True, "saga:s1:undo:a:1", "echo", {"prompt": "undo a hi"}, None)
    state = run_step(state, "succeeded", now=117)
    assert state.steps[0].compensation is CompensationStatus.SUCCEEDED
    assert state.steps[2].compensation is CompensationStatus.NONE  # never ran: nothing to undo
    assert saga.next_command(state, 118) == Settle(SagaStatus.FAILED)


def test_a_failing_compensation_is_retried_then_given_up_on() -> None:
    state = run_step(start(), "succeeded", {"text": "hi"})
    state = run_step(run_step(state, "failed", error="x"), "failed", error="x", now=200)
    for attempt in range(1, 5):
        state = run_step(state, "failed", error=f"undo failed {attempt}", now=300 * attempt)
        assert state.steps[0].compensation is CompensationStatus.PENDING
    state = run_step(state, "failed", error="undo failed 5", now=2000)  # the fifth of five attempts
    assert state.steps[0].compensation is CompensationStatus.FAILED
    assert state.steps[0].compensation_error == "undo failed 5"
    assert saga.next_command(state, 2001) == Settle(SagaStatus.FAILED_COMPENSATION)


def test_cancel_stops_the_running_step_then_compensates() -> None:
    state = run_step(start(), "succeeded", {"text": "hi"})
    command = saga.next_command(state, 101)
    assert isinstance(command, Submit)
    state = saga.on_submitted(saga.on_submitting(state, command, 101), "b", False, "task-b", 101)
    state = saga.on_cancel_requested(state, 102)
    assert saga.next_command(state, 102) == Cancel("b", "task-b", "saga:s1:b:1")
    state = saga.on_task_finished(state, "b", False, "cancelled", None, "cancelled", 103)
    assert state.status is SagaStatus.COMPENSATING and state.steps[1].status is StepStatus.CANCELLED
    state = run_step(state, "succeeded", now=104)  # a's compensation
    assert saga.next_command(state, 105) == Settle(SagaStatus.CANCELLED)


def test_an_input_that_cannot_render_fails_the_step_without_a_task() -> None:
    broken = workflow()
    broken.steps[1].input = {"prompt": "{{ steps.a.output.nothing }}"}
    state = run_step(saga.new_saga("s2", broken, {"text": "hi"}, 5, 100), "succeeded", {"text": "hi"})
    command = saga.next_command(state, 101)
    assert isinstance(command, Fail) and "no 'nothing' there" in command.error
    state = saga.on_failed_to_render(state, command, 101)
    assert state.status is SagaStatus.COMPENSATING and state.steps[1].status is StepStatus.FAILED


def test_code_pipeline_is_built_in_and_valid() -> None:
    pipeline = Settings().all_workflows()["code_pipeline"]
    assert [s.name for s in pipeline.steps] == ["reasoning", "codegen", "sandbox_exec", "test", "deploy"]
    assert pipeline.steps[-1].compensation is not None
    assert all(s.compensation is None for s in pipeline.steps[:-1])
