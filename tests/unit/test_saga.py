"""The saga state machine, definitions and templates, without Redis or Ray."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from orchestrator import saga
from orchestrator.saga import (
    Admission,
    Await,
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


def next_command(state: saga.SagaState, now: float) -> saga.Command | None:
    """The one command of a sequential workflow (each stage has one step: never two commands at once)."""
    commands = saga.next_commands(state, now)
    assert len(commands) <= 1, commands
    return commands[0] if commands else None


def start() -> saga.SagaState:
    return saga.new_saga("s1", workflow(), {"text": "hi"}, 5, now=100.0)


def run_step(state: saga.SagaState, status: str, output: Any = None, error: str | None = None,
             now: float = 101.0) -> saga.SagaState:
    """Submit what next_command asks for and finish its task with `status`."""
    command = next_command(state, now)
    assert isinstance(command, Submit), command
    state = saga.on_submitting(state, command, f"task-{command.key}", now)
    state = saga.on_submitted(state, command.step, command.compensation, f"task-{command.key}", now)
    return saga.on_task_finished(state, command.step, command.compensation, status, output, error, now)


def submitted(state: saga.SagaState, now: float = 101.0) -> tuple[saga.SagaState, Submit]:
    """Submit what next_command asks for; its task is accepted and still running."""
    command = next_command(state, now)
    assert isinstance(command, Submit), command
    state = saga.on_submitting(state, command, f"task-{command.key}", now)
    return saga.on_submitted(state, command.step, command.compensation, f"task-{command.key}", now), command


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
    first = next_command(state, 101)
    assert first == Submit("a", False, "saga:s1:a:1", "echo", {"prompt": "hi"}, None)
    state = run_step(state, "succeeded", {"text": "hi"})
    second = next_command(state, 101)
    assert isinstance(second, Submit) and second.input == {"prompt": "b after hi"}
    state = run_step(state, "succeeded", {"text": "B"})
    state = run_step(state, "succeeded", {"text": "C"})
    assert next_command(state, 102) == Settle(SagaStatus.SUCCEEDED)
    state = saga.on_settled(state, SagaStatus.SUCCEEDED, 102)
    assert next_command(state, 103) is None
    assert [len(s.attempts) for s in state.steps] == [1, 1, 1]


def test_an_intent_saved_before_its_submit_is_resubmitted_under_the_same_id_and_key() -> None:
    state = start()
    command = next_command(state, 101)
    assert isinstance(command, Submit) and command.task_id is None  # a new attempt: the coordinator picks the id
    state = saga.on_submitting(state, command, "0-chosen", 101)  # persisted, then the coordinator died
    again = next_command(state, 200)
    assert again == replace(command, task_id="0-chosen")  # the store finds the task by its id if it was accepted
    resubmitted = saga.on_submitting(state, again, "0-other", 200)
    assert [(a.key, a.task_id, a.status) for a in resubmitted.steps[0].attempts] == [
        ("saga:s1:a:1", "0-chosen", "submitting")]


@pytest.mark.parametrize("compensation", [False, True])
def test_an_accepted_task_in_flight_is_followed_by_its_saved_id_not_resubmitted(compensation: bool) -> None:
    state = start()
    if compensation:  # a completed, then b failed for good: a's compensation is in flight
        state = run_step(state, "succeeded", {"text": "hi"})
        state = run_step(run_step(state, "failed", error="x"), "failed", error="x", now=200)
    state, command = submitted(state, now=300)
    # The coordinator restarts a day later: the idempotency key has expired, the saved id has not.
    assert next_command(state, 300 + 86_400 * 2) == Await(command.step, compensation, f"task-{command.key}")


def test_an_older_sagas_intent_without_an_id_gets_one_and_is_resubmitted_by_its_key() -> None:
    state = start()
    state.steps[0].status = StepStatus.RUNNING  # as versions before task ids were chosen saved an intent
    state.steps[0].attempts = [saga.Attempt(key="saga:s1:a:1", started_at=100)]
    command = next_command(state, 101)
    assert isinstance(command, Submit) and (command.key, command.task_id) == ("saga:s1:a:1", None)
    assert saga.on_submitting(state, command, "0-new", 101).steps[0].attempts[0].task_id == "0-new"


def test_failure_retries_then_compensates_only_completed_steps_in_reverse() -> None:
    state = run_step(start(), "succeeded", {"text": "hi"})
    state = run_step(state, "failed", error="boom", now=110)
    assert state.steps[1].status is StepStatus.PENDING and state.steps[1].retry_at == 115
    assert next_command(state, 112) == Sleep("b", False, 115)
    state = run_step(state, "failed", error="boom again", now=116)  # second and last attempt
    assert state.status is SagaStatus.COMPENSATING and state.error == "step 'b' failed: boom again"
    undo = next_command(state, 117)
    assert undo == Submit("a", True, "saga:s1:undo:a:1", "echo", {"prompt": "undo a hi"}, None)
    state = run_step(state, "succeeded", now=117)
    assert state.steps[0].compensation is CompensationStatus.SUCCEEDED
    assert state.steps[2].compensation is CompensationStatus.NONE  # never ran: nothing to undo
    assert next_command(state, 118) == Settle(SagaStatus.FAILED)


def test_a_failing_compensation_is_retried_then_given_up_on() -> None:
    state = run_step(start(), "succeeded", {"text": "hi"})
    state = run_step(run_step(state, "failed", error="x"), "failed", error="x", now=200)
    for attempt in range(1, 5):
        state = run_step(state, "failed", error=f"undo failed {attempt}", now=300 * attempt)
        assert state.steps[0].compensation is CompensationStatus.PENDING
    state = run_step(state, "failed", error="undo failed 5", now=2000)  # the fifth of five attempts
    assert state.steps[0].compensation is CompensationStatus.FAILED
    assert state.steps[0].compensation_error == "undo failed 5"
    assert next_command(state, 2001) == Settle(SagaStatus.FAILED_COMPENSATION)


def test_cancel_stops_the_running_step_then_compensates() -> None:
    state, _ = submitted(run_step(start(), "succeeded", {"text": "hi"}))
    state = saga.on_cancel_requested(state, 102)
    assert next_command(state, 102) == Cancel("b", "task-saga:s1:b:1", "saga:s1:b:1")
    state = saga.on_task_finished(state, "b", False, "cancelled", None, "cancelled", 103)
    assert state.status is SagaStatus.COMPENSATING and state.steps[1].status is StepStatus.CANCELLED
    state = run_step(state, "succeeded", now=104)  # a's compensation
    assert next_command(state, 105) == Settle(SagaStatus.CANCELLED)


@pytest.mark.parametrize("last", [False, True])
def test_a_step_that_finished_as_the_cancel_came_is_compensated_with_the_others(last: bool) -> None:
    state = run_step(start(), "succeeded", {"text": "hi"})
    if last:
        state = run_step(state, "succeeded", {"text": "B"})
    state, command = submitted(state)
    state = saga.on_cancel_requested(state, 102)
    assert next_command(state, 102) == Cancel(command.step, f"task-{command.key}", command.key)
    # cancel_task answered "not cancellable": the task had succeeded; its outcome stands.
    state = saga.on_task_finished(state, command.step, False, "succeeded", {"text": "done"}, None, 103)
    assert next_command(state, 103) == Settle(SagaStatus.COMPENSATING)
    state = saga.on_settled(state, SagaStatus.COMPENSATING, 103)
    undone = []
    while isinstance(command := next_command(state, 104), Submit):
        assert command.compensation
        undone.append(command.step)
        state = run_step(state, "succeeded", now=104)
    assert undone == (["c", "a"] if last else ["a"])  # in reverse, each once (b has no compensation)
    assert command == Settle(SagaStatus.CANCELLED)
    assert saga.on_settled(state, SagaStatus.CANCELLED, 105).status.finished


def test_a_step_held_for_its_tenants_quota_waits_and_is_withdrawn_if_the_saga_is_cancelled() -> None:
    state = run_step(start(), "succeeded", {"text": "hi"})
    command = next_command(state, 101)
    assert isinstance(command, Submit)
    state = saga.on_submitting(state, command, "0-b", 101)
    state = saga.on_held(state, "b", False, "quota exceeded: tenant t has 2 unfinished tasks, its limit", 102)
    assert state.steps[1].attempts[-1].status == "held" and not state.steps[1].attempts[-1].accepted
    assert next_command(state, 103) == replace(command, task_id="0-b")  # after a restart: tried again
    accepted = saga.on_submitted(state, "b", False, "0-b", 104).steps[1].attempts[-1]
    assert (accepted.status, accepted.error, accepted.accepted) == ("submitted", None, True)
    state = saga.on_withdrawn(state, "b", True, 105)  # cancelled while held: the task never existed
    assert state.steps[1].status is StepStatus.CANCELLED and state.steps[1].attempts[-1].status == "withdrawn"
    assert state.status is SagaStatus.COMPENSATING and state.cancel_requested
    assert state.steps[0].compensation is CompensationStatus.PENDING


@pytest.mark.parametrize("compensation", [False, True])
def test_a_task_whose_record_is_gone_is_not_run_again(compensation: bool) -> None:
    state = run_step(start(), "succeeded", {"text": "hi"})
    if compensation:
        state = run_step(run_step(state, "failed", error="x"), "failed", error="x", now=200)
    state, command = submitted(state, now=300)
    state = saga.on_task_lost(state, command.step, compensation, 301)
    step = state.steps[0] if compensation else state.steps[1]
    attempts = step.compensation_attempts if compensation else step.attempts
    assert attempts[-1].status == "lost" and "is gone" in (attempts[-1].error or "")
    if compensation:
        assert step.compensation is CompensationStatus.FAILED
        assert next_command(state, 302) == Settle(SagaStatus.FAILED_COMPENSATION)
    else:  # b would retry a plain failure; a lost one may have had its effect
        assert step.status is StepStatus.FAILED and state.status is SagaStatus.COMPENSATING
        assert isinstance(undo := next_command(state, 302), Submit) and undo.compensation


def test_admission_runs_the_best_first_within_the_global_and_each_tenants_limit() -> None:
    limits = {"alice": 1}
    admission = Admission(3, limits.get)
    admission.put("a1", 5, "alice")
    admission.put("a2", 9, "alice")
    admission.put("b1", 1, "bob")
    admission.put("x1", 0, None)  # no tenant (or an admin's): only the global limit
    admission.put("a2", 9, "alice")  # queued twice: once
    assert admission.admit() == ["a2", "b1", "x1"]  # a1 waits for alice's running saga; others pass it
    assert admission.admit() == [] and admission.waiting() == 1
    admission.finished("b1")
    assert admission.admit() == []  # a place is free, but alice is at her limit
    admission.put("b2", 0, "bob")
    assert admission.admit() == ["b2"]
    admission.finished("a2")
    admission.finished("x1")
    assert admission.admit() == ["a1"]
    limits["alice"] = 2  # read at each admission
    admission.put("a3", 0, "alice")
    assert admission.admit() == ["a3"]


def test_a_waiting_saga_withdrawn_leaves_the_queue_and_the_others_in_order() -> None:
    admission = Admission(1, {}.get)
    for saga_id, priority in (("run", 9), ("a", 5), ("b", 7), ("c", 1)):
        admission.put(saga_id, priority, "acme")
    assert admission.admit() == ["run"]
    assert admission.withdraw("b") and not admission.withdraw("b") and not admission.withdraw("run")
    assert admission.waiting() == 2
    admission.finished("run")
    assert admission.admit() == ["a"]
    admission.finished("a")
    assert admission.admit() == ["c"]


def test_an_input_that_cannot_render_fails_the_step_without_a_task() -> None:
    broken = workflow()
    broken.steps[1].input = {"prompt": "{{ steps.a.output.nothing }}"}
    state = run_step(saga.new_saga("s2", broken, {"text": "hi"}, 5, 100), "succeeded", {"text": "hi"})
    command = next_command(state, 101)
    assert isinstance(command, Fail) and "no 'nothing' there" in command.error
    state = saga.on_failed_to_render(state, command, 101)
    assert state.status is SagaStatus.COMPENSATING and state.steps[1].status is StepStatus.FAILED


def test_code_pipeline_is_built_in_and_valid() -> None:
    pipeline = Settings().all_workflows()["code_pipeline"]
    assert [s.name for s in pipeline.steps] == ["reasoning", "codegen", "sandbox_exec", "test", "deploy"]
    assert pipeline.steps[-1].compensation is not None
    assert all(s.compensation is None for s in pipeline.steps[:-1])


# ---------------------------------------------------------------- parallel stages


def fan_workflow() -> WorkflowDefinition:
    """prepare → (left ‖ right ‖ slow) → join; every step but join can be undone."""
    undo = {"tool": "echo", "input": {"prompt": "undo"}}
    return WorkflowDefinition.model_validate({"name": "fan", "steps": [
        {"name": "prepare", "tool": "echo", "input": {"prompt": "p"}, "compensation": undo},
        {"name": "fan", "parallel": [
            {"name": "left", "tool": "echo", "input": {"prompt": "{{ steps.prepare.output.text }}"},
             "compensation": undo},
            {"name": "right", "tool": "echo", "input": {"prompt": "r"}, "compensation": undo},
            {"name": "slow", "tool": "echo", "input": {"prompt": "s"}, "retry": {"max_attempts": 3, "backoff_s": 5},
             "compensation": undo},
        ]},
        {"name": "join", "tool": "echo", "input": {"prompt": "{{ steps.left.output.text }} {{ steps.right.output }}"}},
    ]})


def accept(state: saga.SagaState, command: Submit, now: float = 101.0) -> saga.SagaState:
    state = saga.on_submitting(state, command, f"task-{command.key}", now)
    return saga.on_submitted(state, command.step, command.compensation, f"task-{command.key}", now)


def fanned_out() -> saga.SagaState:
    """prepare done; the three branches accepted and running."""
    state = run_step(saga.new_saga("s1", fan_workflow(), {}, 5, now=100.0), "succeeded", {"text": "P"})
    branches = saga.next_commands(state, 101)
    assert [(type(c), c.step) for c in branches] == [(Submit, "left"), (Submit, "right"), (Submit, "slow")]
    assert branches[0].input == {"prompt": "P"}  # a branch sees the stages before its group
    for command in branches:
        assert isinstance(command, Submit)
        state = accept(state, command)
    return state


def finish(state: saga.SagaState, step: str, status: str, now: float, compensation: bool = False,
           output: Any = None) -> saga.SagaState:
    return saga.on_task_finished(state, step, compensation, status, output, None if status == "succeeded" else
                                 f"{step} {status}", now)


def test_a_groups_steps_run_together_and_the_next_stage_waits_for_all() -> None:
    state = fanned_out()
    assert saga.next_commands(state, 102) == [Await(s, False, f"task-saga:s1:{s}:1") for s in ("left", "right", "slow")]
    state = finish(state, "left", "succeeded", 103, output={"text": "L"})
    state = finish(state, "slow", "failed", 103)  # it has retries left: a backoff, the others go on
    assert saga.next_commands(state, 104) == [Await("right", False, "task-saga:s1:right:1"), Sleep("slow", False, 108)]
    state = finish(state, "right", "succeeded", 105, output="R")
    (retry,) = saga.next_commands(state, 109)
    assert isinstance(retry, Submit) and retry.key == "saga:s1:slow:2"
    state = finish(accept(state, retry, 109), "slow", "succeeded", 110)
    (join,) = saga.next_commands(state, 111)
    assert isinstance(join, Submit) and join.step == "join" and join.input == {"prompt": "L R"}


def test_a_failed_branch_stops_the_others_and_every_completed_step_is_undone_once_in_reverse() -> None:
    state = finish(fanned_out(), "right", "succeeded", 103)
    state = saga.on_task_finished(state, "left", False, "failed", None, "left failed", 104)  # no retries left
    assert state.status is SagaStatus.COMPENSATING and state.error == "step 'left' failed: left failed"
    # The branch still running is cancelled (and waited for) before anything is undone.
    assert saga.next_commands(state, 105) == [Cancel("slow", "task-saga:s1:slow:1", "saga:s1:slow:1")]
    state = finish(state, "slow", "succeeded", 106)  # it completed as the cancel came: undone like the others
    assert state.steps[3].status is StepStatus.SUCCEEDED and state.steps[3].compensation is CompensationStatus.PENDING
    undone = []
    while isinstance(command := next_command(state, 107), Submit):
        assert command.compensation
        undone.append(command.step)
        state = finish(accept(state, command, 107), command.step, "succeeded", 107, compensation=True)
    assert undone == ["slow", "right", "prepare"]  # last first; left never completed; each once
    assert command == Settle(SagaStatus.FAILED)
    assert state.error == "step 'left' failed: left failed"  # the first failure, not the cancelled sibling


def test_a_branch_failing_beside_a_failed_one_is_not_retried() -> None:
    state = saga.on_task_finished(fanned_out(), "left", False, "failed", None, "left failed", 104)
    state = finish(state, "slow", "failed", 105)  # retries left, but the saga is going back
    assert state.steps[3].status is StepStatus.FAILED and len(state.steps[3].attempts) == 1
    assert saga.next_commands(state, 106) == [Cancel("right", "task-saga:s1:right:1", "saga:s1:right:1")]


def test_a_cancel_stops_every_running_branch_and_a_branch_in_backoff_never_restarts() -> None:
    state = finish(fanned_out(), "slow", "failed", 103)  # in its backoff
    state = saga.on_cancel_requested(state, 104)
    assert saga.next_commands(state, 120) == [Cancel("left", "task-saga:s1:left:1", "saga:s1:left:1"),
                                              Cancel("right", "task-saga:s1:right:1", "saga:s1:right:1")]
    state = finish(state, "left", "cancelled", 121)
    state = finish(state, "right", "succeeded", 121)
    assert saga.next_commands(state, 122) == [Submit("right", True, "saga:s1:undo:right:1", "echo", {"prompt": "undo"},
                                                     None)]


def test_a_branch_withdrawn_while_held_beside_a_failure_does_not_mark_the_saga_cancelled() -> None:
    state = saga.on_task_finished(fanned_out(), "left", False, "failed", None, "left failed", 104)
    state = saga.on_held(state, "right", False, "quota", 105)
    state = saga.on_withdrawn(state, "right", False, 106)
    assert state.steps[2].status is StepStatus.CANCELLED and not state.cancel_requested


@pytest.mark.parametrize(("steps", "field", "message"), [
    ([{"name": "g", "parallel": [{"name": "a", "tool": "echo"},
                                 {"name": "b", "tool": "echo", "input": {"prompt": "{{ steps.a.output }}"}}]}],
     "steps.0.parallel.1.input", "does not run before this point"),
    ([{"name": "a", "tool": "echo"}, {"name": "g", "parallel": [{"name": "a", "tool": "echo"},
                                                                {"name": "b", "tool": "nope"}]}],
     "steps.1.parallel.0.name", "used twice"),
    ([{"name": "g", "parallel": [{"name": "a", "tool": "echo"}, {"name": "b", "tool": "nope"}]}],
     "steps.0.parallel.1.tool", "unknown tool"),
    ([{"name": "g", "parallel": [{"name": "g", "tool": "echo"}, {"name": "b", "tool": "echo"}]}],
     "steps.0.parallel.0.name", "used twice"),
])
def test_a_groups_problems_name_the_branch(steps: list[dict[str, Any]], field: str, message: str) -> None:
    problems = WorkflowDefinition.model_validate({"name": "w", "steps": steps}).problems({"echo"})
    assert message in problems.get(field, ""), problems


def test_a_group_needs_two_branches_and_the_steps_in_all_are_bounded() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        WorkflowDefinition.model_validate({"name": "w", "steps": [{"name": "g", "parallel": [
            {"name": "a", "tool": "echo"}]}]})
    many = [{"name": f"g{i}", "parallel": [{"name": f"s{i}_{j}", "tool": "echo"} for j in range(16)]} for i in range(5)]
    with pytest.raises(ValueError, match="at most 64 steps in all"):
        WorkflowDefinition.model_validate({"name": "w", "steps": many})


# ---------------------------------------------------------------- re-runs


def test_a_rerun_keeps_completed_steps_not_undone_and_runs_the_rest_again() -> None:
    state = run_step(start(), "succeeded", {"text": "hi"})  # a: completed, then undone
    state.definition.steps[1].compensation = None  # (b cannot be undone: its output stays valid)
    state = run_step(state, "succeeded", {"text": "B"})
    state = run_step(state, "failed", error="c broke", now=110)
    while isinstance(command := next_command(state, 111), Submit):
        state = run_step(state, "succeeded", now=111)
    assert command == Settle(SagaStatus.FAILED)
    state = saga.on_settled(state, SagaStatus.FAILED, 112)

    again = saga.rerun(state, "s2", 200, saga_input={"text": "new"})
    assert (again.saga_id, again.rerun_of, again.status, again.input) == ("s2", "s1", SagaStatus.RUNNING, {"text": "new"})
    assert [s.status for s in again.steps] == [StepStatus.PENDING, StepStatus.SUCCEEDED, StepStatus.PENDING]
    assert again.steps[1].output == {"text": "B"} and again.steps[1].attempts == state.steps[1].attempts
    first = next_command(again, 201)
    assert isinstance(first, Submit) and first.step == "a" and first.key == "saga:s2:a:1"  # undone: runs again
    again = run_step(again, "succeeded", {"text": "A2"}, now=201)
    (then,) = saga.next_commands(again, 202)
    assert isinstance(then, Submit) and then.step == "c"  # b is not run again


@pytest.mark.parametrize(("when", "saga_input", "asked"), [
    (None, {}, "Ship s1 for hi?"),
    ("{{ input.approve }}", {"approve": True}, "Ship s1 for hi?"),
    ("{{ input.approve }}", {"approve": False}, None),
    ("{{ input.approve }}", {}, None),  # an input the saga was not given: not asked
])
def test_a_step_asks_for_approval_when_its_condition_holds(when: str | None, saga_input: dict[str, Any],
                                                           asked: str | None) -> None:
    approval = {"message": "Ship {{ saga.id }} for {{ input.text }}?", "when": when}
    definition = workflow(steps=[{"name": "a", "tool": "echo", "input": {}, "approval": approval}])
    state = saga.new_saga("s1", definition, {"text": "hi", **saga_input}, 5, now=100.0)
    command = next_command(state, 101)
    assert isinstance(command, Submit) and command.approval == asked


def test_a_step_waiting_for_input_is_shown_until_its_task_finishes() -> None:
    state, command = submitted(start())
    request = {"message": "Go?", "schema": {"type": "object"}, "asked_at": 101.0}
    state = saga.on_input_required(state, command.step, {"approval": request}, 102)
    assert state.steps[0].input_requests == {"approval": request}
    assert isinstance(next_command(state, 103), saga.Await)  # nothing else changes: it goes on waiting
    state = saga.on_task_finished(state, command.step, False, "succeeded", {"text": "hi"}, None, 104)
    assert state.steps[0].input_requests == {}
