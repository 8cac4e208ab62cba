"""Sagas: workflow definitions, their input templates, and the state machine that runs and undoes them.

Pure: the coordinator actor loads a saga's state, asks `next_commands` what to do, does it (submits
tasks, waits for them, sleeps), records each outcome with `on_*`, persists, and asks again. Because
the next commands are computed from the persisted state alone, a restarted coordinator resumes
every saga where it stood. A workflow is a sequence of stages: a step, or a group of steps that run in
parallel and are all joined before the next stage; going back, completed steps are undone one at a
time, last first.

A step (or compensation) in flight is never started twice: its task id is chosen and saved with the
intent *before* the submit, so a restarted coordinator resubmits the intent under that same id (the
task store answers with the task if it was accepted) and, once the submit is known to be accepted,
follows the saved id — whatever became of the idempotency key (saga, step, attempt), which expires.
`Admission` decides which waiting sagas run: priority order, within a global and a per-tenant limit.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import re
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.upgradable import Upgradable

_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][\w.\-]*)\s*\}\}")
_NAME = r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$"


# ---------------------------------------------------------------- definitions


class Retry(Upgradable):
    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(default=1, ge=1, le=20)
    backoff_s: float = Field(default=1.0, ge=0, le=3600, description="doubles after each failed attempt")


class Compensation(Upgradable):
    """A tool call that undoes a completed step; retried until it succeeds or `retry` runs out."""

    model_config = ConfigDict(extra="forbid")

    tool: str
    input: dict[str, Any] = Field(default_factory=dict)
    retry: Retry = Retry(max_attempts=5, backoff_s=1.0)


class Approval(Upgradable):
    """A step that waits for someone's approval before its tool runs: its task asks (`input_required`, key
    `approval`, answered `{"approve": true|false, "comment"?}`); a refusal fails the step."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, max_length=4000, description="what is to be approved (a template)")
    when: str | None = Field(default=None, description="a template (e.g. {{ input.require_approval }}): asked only "
                             "when it is true; absent: always")


class StepDefinition(Upgradable):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME)
    tool: str
    input: dict[str, Any] = Field(
        default_factory=dict,
        description="the task's input; strings may hold {{ input.x }}, {{ steps.<name>.output.y }}, {{ saga.id }}",
    )
    compensation: Compensation | None = None
    retry: Retry = Retry()
    timeout_s: float | None = Field(default=None, gt=0, description="per attempt: the task's deadline (it keeps "
                                    "counting while the task waits for input)")
    approval: Approval | None = Field(default=None, description="ask for approval before the tool runs")


class GroupDefinition(Upgradable):
    """Steps that run in parallel, all joined before the next stage. A branch sees the outputs of the stages
    before the group, not those of its siblings; each has its own retry and compensation."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME)
    parallel: list[StepDefinition] = Field(min_length=2, max_length=16)


MAX_STEPS = 64


class WorkflowDefinition(Upgradable):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME)
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"},
                                         description="JSON Schema of the saga's input")
    steps: list[StepDefinition | GroupDefinition] = Field(
        min_length=1, max_length=MAX_STEPS, description="stages, in order: a step, or a group of parallel steps")

    @model_validator(mode="after")
    def _few_enough_steps(self) -> WorkflowDefinition:
        if len(self.leaves()) > MAX_STEPS:
            raise ValueError(f"steps: at most {MAX_STEPS} steps in all, groups' branches included")
        return self

    def stages(self) -> list[list[StepDefinition]]:
        """The steps by stage: each stage's steps run together; a stage starts when the one before succeeded."""
        return [stage.parallel if isinstance(stage, GroupDefinition) else [stage] for stage in self.steps]

    def leaves(self) -> list[StepDefinition]:
        """Every step, in order (a group's branches in theirs)."""
        return [step for stage in self.stages() for step in stage]

    def problems(self, tools: Collection[str]) -> dict[str, str]:
        """Why this definition cannot run, by field; empty when it can."""
        found: dict[str, str] = {}
        seen: set[str] = set()  # the steps of the stages before this one
        names: set[str] = set()
        for i, stage in enumerate(self.steps):
            if isinstance(stage, GroupDefinition):
                if stage.name in names:
                    found[f"steps.{i}.name"] = f"name {stage.name!r} is used twice"
                names.add(stage.name)
                branches = [(f"steps.{i}.parallel.{j}", step) for j, step in enumerate(stage.parallel)]
            else:
                branches = [(f"steps.{i}", stage)]
            for where, step in branches:
                if step.name in names:
                    found[f"{where}.name"] = f"step name {step.name!r} is used twice"
                names.add(step.name)
                found.update(_call_problems(where, step, seen, tools))
            seen.update(step.name for _, step in branches)
        return found

    def step(self, name: str) -> StepDefinition:
        return next(s for s in self.leaves() if s.name == name)


def _call_problems(where: str, step: StepDefinition, seen: Collection[str], tools: Collection[str]) -> dict[str, str]:
    """A step's and its compensation's unknown tools and bad references; a compensation also sees its step's
    output."""
    calls = [(where, step.tool, step.input, seen)]
    if step.compensation is not None:
        calls.append((f"{where}.compensation", step.compensation.tool, step.compensation.input,
                      {*seen, step.name}))
    found: dict[str, str] = {}
    for path, tool, template, visible in calls:
        if tool not in tools:
            found[f"{path}.tool"] = f"unknown tool {tool!r}"
        for ref in references(template):
            problem = _bad_reference(ref, visible)
            if problem:
                found[f"{path}.input"] = problem
    return found


def references(template: Any) -> list[str]:
    """Every `{{ ref }}` in a template, in order."""
    if isinstance(template, str):
        return _TEMPLATE.findall(template)
    if isinstance(template, Mapping):
        return [r for v in template.values() for r in references(v)]
    if isinstance(template, list):
        return [r for v in template for r in references(v)]
    return []


def _bad_reference(ref: str, earlier_steps: Collection[str]) -> str | None:
    root, _, rest = ref.partition(".")
    if root == "input" or ref in ("saga.id", "saga.priority"):
        return None
    if root == "steps":
        step, _, field = rest.partition(".")
        if step not in earlier_steps:
            return f"{{{{ {ref} }}}} names step {step!r}, which does not run before this point"
        if not (field == "output" or field.startswith("output.")):
            return f"{{{{ {ref} }}}}: a step is referred to by its output (steps.<name>.output…)"
        return None
    return f"{{{{ {ref} }}}}: refer to input.…, steps.<name>.output… or saga.id"


class TemplateError(ValueError):
    """A template names a value the saga does not have (e.g. a field the step's output lacks)."""


def render(template: Any, scope: Mapping[str, Any]) -> Any:
    """Fill a template: a string that is one `{{ ref }}` becomes the value itself (any JSON type);
    refs inside longer strings are replaced by their text."""
    if isinstance(template, str):
        whole = _TEMPLATE.fullmatch(template.strip())
        if whole:
            return _lookup(scope, whole.group(1))
        return _TEMPLATE.sub(lambda m: _text(_lookup(scope, m.group(1))), template)
    if isinstance(template, Mapping):
        return {k: render(v, scope) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, scope) for v in template]
    return template


def _lookup(scope: Mapping[str, Any], ref: str) -> Any:
    value: Any = scope
    for part in ref.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise TemplateError(f"{{{{ {ref} }}}}: no {part!r} there")
    return value


def _text(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)


# ---------------------------------------------------------------- state


class SagaStatus(enum.StrEnum):
    RUNNING = "running"
    COMPENSATING = "compensating"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # a step failed; every completed step was compensated
    CANCELLED = "cancelled"  # cancelled by a caller; every completed step was compensated
    FAILED_COMPENSATION = "failed_compensation"  # a compensation gave up: see the dead letters

    @property
    def finished(self) -> bool:
        return self in (SagaStatus.SUCCEEDED, SagaStatus.FAILED, SagaStatus.CANCELLED,
                        SagaStatus.FAILED_COMPENSATION)


class StepStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class CompensationStatus(enum.StrEnum):
    NONE = "none"  # nothing to undo (yet): the saga is not compensating, or the step did not complete
    PENDING = "pending"  # to be undone
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # gave up after its retries: a dead letter


class AttemptStatus(enum.StrEnum):
    """Where an attempt's task stands before it finishes (then: the task's final status, or `lost`)."""

    SUBMITTING = "submitting"  # the intent (key and task id) is saved; whether the task was accepted is unknown
    HELD = "held"  # refused for the tenant's quota or a full store (nothing written): tried again until accepted
    SUBMITTED = "submitted"  # accepted: followed by its task id
    WITHDRAWN = "withdrawn"  # held when the saga was cancelled: never accepted, never run
    LOST = "lost"  # accepted, but its record is gone (expired): its outcome is unknown


class Attempt(BaseModel):
    """One task run for a step or a compensation."""

    key: str  # the task's idempotency key: saga, step, kind and attempt number
    task_id: str | None = None  # chosen before the submit (sagas saved by older versions: learned from it)
    status: str = AttemptStatus.SUBMITTED.value  # an AttemptStatus, or the task's final status
    error: str | None = None
    started_at: float
    finished_at: float | None = None

    @property
    def accepted(self) -> bool:
        """The task store accepted its task: it is followed by its id, never submitted again."""
        return self.task_id is not None and self.status not in (AttemptStatus.SUBMITTING, AttemptStatus.HELD)


class StepState(BaseModel):
    name: str
    status: StepStatus = StepStatus.PENDING
    output: Any = None
    error: str | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    retry_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    compensation: CompensationStatus = CompensationStatus.NONE
    compensation_attempts: list[Attempt] = Field(default_factory=list)
    compensation_error: str | None = None
    input_requests: dict[str, Any] = Field(default_factory=dict, description="what the step's task waits for "
                                           "(input_required), by key: answer with provide_input on its task")


class SagaState(BaseModel):
    saga_id: str
    workflow: str
    definition: WorkflowDefinition  # a snapshot: a saga finishes as it started, whatever the config says now
    input: dict[str, Any]
    priority: int
    agent: str | None = None
    tenant: str | None = None  # its API key's; the steps' tasks are the tenant's too
    quota_exempt: bool = False  # started by an admin: not held to the tenant's quotas (its tasks still count)
    status: SagaStatus = SagaStatus.RUNNING
    error: str | None = None
    cancel_requested: bool = False
    steps: list[StepState]
    rerun_of: str | None = Field(default=None, description="the saga this one re-runs (`rerun_saga`)")
    reruns: list[str] = Field(default_factory=list, description="the sagas that re-run this one, oldest first")
    traceparent: str | None = Field(default=None, description="W3C trace context of the request that started it "
                                    "(tracing on): its steps' spans continue that trace")
    created_at: float
    updated_at: float
    finished_at: float | None = None

    def scope(self) -> dict[str, Any]:
        """What templates may refer to."""
        done = {s.name: {"output": s.output} for s in self.steps if s.status is StepStatus.SUCCEEDED}
        return {"input": self.input, "steps": done, "saga": {"id": self.saga_id, "priority": self.priority}}


def new_saga(saga_id: str, definition: WorkflowDefinition, saga_input: dict[str, Any], priority: int,
             now: float, agent: str | None = None, tenant: str | None = None,
             quota_exempt: bool = False) -> SagaState:
    return SagaState(saga_id=saga_id, workflow=definition.name, definition=definition, input=saga_input,
                     priority=priority, agent=agent, tenant=tenant, quota_exempt=quota_exempt,
                     steps=[StepState(name=s.name) for s in definition.leaves()], created_at=now, updated_at=now)


RERUNNABLE = (SagaStatus.FAILED, SagaStatus.CANCELLED)


def rerun(original: SagaState, saga_id: str, now: float, *, saga_input: dict[str, Any] | None = None,
          priority: int | None = None, agent: str | None = None, quota_exempt: bool = False) -> SagaState:
    """A new saga that takes up a failed or cancelled one where it stopped, with its definition: a step that
    completed and was not undone keeps its output and attempts (it does not run again); every other step — the
    one that failed, those never reached, and completed ones a compensation undid — runs again."""
    assert original.status in RERUNNABLE, original.status
    state = new_saga(saga_id, original.definition, original.input if saga_input is None else saga_input,
                     original.priority if priority is None else priority, now, agent or original.agent,
                     original.tenant, quota_exempt)
    kept = {s.name: s for s in original.steps
            if s.status is StepStatus.SUCCEEDED and s.compensation is CompensationStatus.NONE}
    state.steps = [kept[s.name].model_copy(deep=True) if s.name in kept else s for s in state.steps]
    state.rerun_of = original.saga_id
    return state


# ---------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Submit:
    """Save the intent, submit the task and wait for it. `task_id` None: a new attempt (choose its id);
    else the saved intent of one whose acceptance is unknown — submitted again under the same id and key,
    which finds the task if it was accepted."""

    step: str
    compensation: bool
    key: str
    tool: str
    input: dict[str, Any]
    timeout_s: float | None
    task_id: str | None = None
    approval: str | None = None  # the task asks for approval first, with this message


@dataclass(frozen=True, slots=True)
class Await:
    """Wait for the accepted task of a step or compensation in flight, by its saved id (never resubmitted)."""

    step: str
    compensation: bool
    task_id: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """Cancel the running task of a step (the saga is being cancelled), then wait for it: if it finished
    meanwhile, its outcome stands."""

    step: str
    task_id: str
    key: str


@dataclass(frozen=True, slots=True)
class Fail:
    """The step (or its compensation) cannot even be submitted: its input does not render."""

    step: str
    compensation: bool
    error: str


@dataclass(frozen=True, slots=True)
class Sleep:
    """A step's (or compensation's) backoff before its next attempt."""

    step: str
    compensation: bool
    until: float


@dataclass(frozen=True, slots=True)
class Settle:
    """The saga's status changes (to compensating, or to a final status); nothing else is in flight."""

    status: SagaStatus


Command = Submit | Await | Cancel | Fail | Sleep | Settle


def command_key(command: Command) -> tuple[str, bool]:
    """What a command acts on — a step, or its compensation (the saga itself for Settle): the coordinator runs one
    command per key at a time."""
    if isinstance(command, Settle):
        return "", False
    if isinstance(command, Cancel):
        return command.step, False
    return command.step, command.compensation


def next_commands(state: SagaState, now: float) -> list[Command]:
    """What the coordinator must do next for this saga, all at once (one command per step of the running stage,
    each for a different key); empty once it is finished."""
    if state.status.finished:
        return []
    if state.status is SagaStatus.RUNNING:
        return _forward(state, now)
    return _backward(state, now)


def _forward(state: SagaState, now: float) -> list[Command]:
    for stage in state.definition.stages():
        steps = [(step_def, _step(state, step_def.name)) for step_def in stage]
        if all(step.status is StepStatus.SUCCEEDED for _, step in steps):
            continue
        commands = [command for step_def, step in steps if (command := _advance(state, step_def, step, now))]
        # Nothing to do only when a cancel came and none of the stage's steps is in flight: undo what completed.
        return commands or [Settle(SagaStatus.COMPENSATING)]
    if state.cancel_requested:  # the last stage finished as the cancel came: it is undone like the others
        return [Settle(SagaStatus.COMPENSATING)]
    return [Settle(SagaStatus.SUCCEEDED)]


def _advance(state: SagaState, step_def: StepDefinition, step: StepState, now: float) -> Command | None:
    """The next command of one step of the running stage; None for a step done, or not started and cancelled."""
    if step.status is StepStatus.SUCCEEDED:
        return None
    if step.status is StepStatus.RUNNING:
        return _in_flight(state, step_def, step, stop=state.cancel_requested)
    if state.cancel_requested:
        return None
    if step.retry_at is not None and now < step.retry_at:
        return Sleep(step.name, False, step.retry_at)
    return _submit(state, step_def, step, False, f"saga:{state.saga_id}:{step.name}:{len(step.attempts) + 1}")


def _in_flight(state: SagaState, step_def: StepDefinition, step: StepState, stop: bool) -> Command:
    """A running step: wait for its task (cancel it first when `stop`); if its submit's acceptance is unknown,
    submit the saved intent again — the same id (and key) finds the task if it exists."""
    current = step.attempts[-1]
    if not current.accepted:
        return _submit(state, step_def, step, False, current.key, current.task_id)
    assert current.task_id is not None
    return Cancel(step.name, current.task_id, current.key) if stop else Await(step.name, False, current.task_id)


def _backward(state: SagaState, now: float) -> list[Command]:
    """First stop the steps still running beside the one that failed (their outcome stands: one that completes
    is undone too), then compensate completed steps, last first, one at a time."""
    leaves = list(zip(state.definition.leaves(), state.steps, strict=True))
    running = [_in_flight(state, step_def, step, stop=True) for step_def, step in leaves
               if step.status is StepStatus.RUNNING]
    if running:
        return running
    for step_def, step in reversed(leaves):
        if step.compensation is CompensationStatus.RUNNING:
            current = step.compensation_attempts[-1]
            if current.accepted:
                assert current.task_id is not None
                return [Await(step.name, True, current.task_id)]
            return [_submit(state, step_def, step, True, current.key, current.task_id)]
        if step.compensation is CompensationStatus.PENDING:
            if step.retry_at is not None and now < step.retry_at:
                return [Sleep(step.name, True, step.retry_at)]
            key = f"saga:{state.saga_id}:undo:{step.name}:{len(step.compensation_attempts) + 1}"
            return [_submit(state, step_def, step, True, key)]
    if any(s.compensation is CompensationStatus.FAILED for s in state.steps):
        return [Settle(SagaStatus.FAILED_COMPENSATION)]
    return [Settle(SagaStatus.CANCELLED if state.cancel_requested else SagaStatus.FAILED)]


def _submit(state: SagaState, step_def: StepDefinition, step: StepState, compensation: bool, key: str,
            task_id: str | None = None) -> Command:
    call = step_def.compensation if compensation else step_def
    assert call is not None
    try:
        task_input = render(call.input, state.scope())
        approval = None if compensation else _approval(step_def.approval, state.scope())
    except TemplateError as exc:
        return Fail(step.name, compensation, str(exc))
    return Submit(step.name, compensation, key, call.tool, task_input, None if compensation else step_def.timeout_s,
                  task_id, approval)


def _approval(approval: Approval | None, scope: Mapping[str, Any]) -> str | None:
    """The approval message a step's task asks with, or None: no approval, or its `when` is not true (a `when`
    naming an input field the saga was not given counts as false)."""
    if approval is None:
        return None
    if approval.when is not None:
        try:
            wanted = render(approval.when, scope)
        except TemplateError:
            wanted = False
        if wanted is not True:
            return None
    return str(render(approval.message, scope))


# ---------------------------------------------------------------- transitions


def on_input_required(state: SagaState, step_name: str, requests: Mapping[str, Any], now: float) -> SagaState:
    """Show what a step's task waits for (empty: it waits no more); nothing else changes."""
    state = state.model_copy(deep=True)
    step = _step(state, step_name)
    step.input_requests = dict(requests)
    state.updated_at = now
    return state


def on_submitting(state: SagaState, command: Submit, task_id: str, now: float) -> SagaState:
    """Record the attempt with its task's id before the task is submitted (a crash in between resubmits the
    same id and key, which find the task if it was accepted).

    Args:
        task_id: the id to submit under, for a new attempt (a resubmitted intent keeps the one it saved).
    """
    state = state.model_copy(deep=True)
    step = _step(state, command.step)
    attempts = step.compensation_attempts if command.compensation else step.attempts
    if not attempts or attempts[-1].key != command.key:
        attempts.append(Attempt(key=command.key, started_at=now))
    current = attempts[-1]
    current.task_id = current.task_id or task_id
    current.status, current.error = AttemptStatus.SUBMITTING.value, None
    if command.compensation:
        step.compensation = CompensationStatus.RUNNING
    else:
        step.status = StepStatus.RUNNING
        step.started_at = step.started_at or now
    step.retry_at = None
    state.updated_at = now
    return state


def on_held(state: SagaState, step_name: str, compensation: bool, reason: str, now: float) -> SagaState:
    """The task was refused for a reason that passes (the tenant's quota, a full store): it waits, shown with why."""
    state = state.model_copy(deep=True)
    current = _attempts(_step(state, step_name), compensation)[-1]
    current.status, current.error = AttemptStatus.HELD.value, reason
    state.updated_at = now
    return state


def on_submitted(state: SagaState, step_name: str, compensation: bool, task_id: str, now: float) -> SagaState:
    """The task was accepted (`task_id`: the saved one, or an older task its key found)."""
    state = state.model_copy(deep=True)
    current = _attempts(_step(state, step_name), compensation)[-1]
    current.task_id, current.status, current.error = task_id, AttemptStatus.SUBMITTED.value, None
    state.updated_at = now
    return state


def on_withdrawn(state: SagaState, step_name: str, cancelled: bool, now: float) -> SagaState:
    """The saga was cancelled (`cancelled`), or a step beside this one failed, while this step's task was held
    (refused, so never written): the step is cancelled without having run, and the completed steps are
    compensated."""
    state = state.model_copy(deep=True)
    step = _step(state, step_name)
    current = step.attempts[-1]
    current.status, current.finished_at = AttemptStatus.WITHDRAWN.value, now
    step.status, step.error, step.finished_at = StepStatus.CANCELLED, "cancelled before its task was accepted", now
    state.cancel_requested, state.updated_at = state.cancel_requested or cancelled, now
    _begin_compensation(state)
    return state


def on_task_lost(state: SagaState, step_name: str, compensation: bool, now: float) -> SagaState:
    """An accepted task's record is gone (it expired, `redis.retention_s` after it finished): its outcome is
    unknown, so it is not run again (that could repeat its effect) — the step fails, a compensation gives up."""
    state = state.model_copy(deep=True)
    step = _step(state, step_name)
    current = _attempts(step, compensation)[-1]
    error = f"task {current.task_id} is gone (expired?): its outcome is unknown"
    current.status, current.error, current.finished_at = AttemptStatus.LOST.value, error, now
    state.updated_at = now
    if compensation:
        step.compensation, step.compensation_error = CompensationStatus.FAILED, error
    else:
        _step_ended(state, step, StepStatus.CANCELLED if state.cancel_requested else StepStatus.FAILED, error, now)
    return state


def on_task_finished(state: SagaState, step_name: str, compensation: bool, status: str, output: Any,
                     error: str | None, now: float) -> SagaState:
    """A step's (or compensation's) task finished: `status` is its final task status."""
    state = state.model_copy(deep=True)
    step = _step(state, step_name)
    step_def = state.definition.step(step_name)
    attempts = step.compensation_attempts if compensation else step.attempts
    attempts[-1].status, attempts[-1].error, attempts[-1].finished_at = status, error, now
    state.updated_at = now
    step.input_requests = {}
    if compensation:
        assert step_def.compensation is not None
        _compensation_finished(step, step_def.compensation.retry, status == "succeeded", error, now)
    elif status == "succeeded":
        step.status, step.output, step.error, step.finished_at = StepStatus.SUCCEEDED, output, None, now
        if state.status is not SagaStatus.RUNNING:  # it completed beside a step that failed: undone too
            _begin_compensation(state)
    elif status == "cancelled" or state.cancel_requested:
        _step_ended(state, step, StepStatus.CANCELLED, error, now)
    elif state.status is SagaStatus.RUNNING and len(attempts) < step_def.retry.max_attempts:
        step.status, step.error = StepStatus.PENDING, error
        step.retry_at = now + step_def.retry.backoff_s * 2 ** (len(attempts) - 1)
    else:
        _step_ended(state, step, StepStatus.FAILED, error, now)
    return state


def _step_ended(state: SagaState, step: StepState, status: StepStatus, error: str | None, now: float) -> None:
    """A step ended without completing: the saga goes back (the first failure is the saga's error)."""
    step.status, step.error, step.finished_at = status, error, now
    if status is StepStatus.FAILED and state.error is None:
        state.error = f"step {step.name!r} failed: {error}"
    _begin_compensation(state)


def _begin_compensation(state: SagaState) -> None:
    """Every completed step that can be undone and is not yet being undone gets a pending compensation (again for
    a step that completes while the saga is already going back)."""
    state.status = SagaStatus.COMPENSATING
    for step_def, step in zip(state.definition.leaves(), state.steps, strict=True):
        if (step.status is StepStatus.SUCCEEDED and step_def.compensation is not None
                and step.compensation is CompensationStatus.NONE):
            step.compensation = CompensationStatus.PENDING


def _compensation_finished(step: StepState, retry: Retry, succeeded: bool, error: str | None, now: float) -> None:
    if succeeded:
        step.compensation, step.compensation_error = CompensationStatus.SUCCEEDED, None
    elif len(step.compensation_attempts) < retry.max_attempts:
        step.compensation, step.compensation_error = CompensationStatus.PENDING, error
        step.retry_at = now + retry.backoff_s * 2 ** (len(step.compensation_attempts) - 1)
    else:
        step.compensation, step.compensation_error = CompensationStatus.FAILED, error


def on_failed_to_render(state: SagaState, command: Fail, now: float) -> SagaState:
    """A step whose input cannot be built fails at once (retrying would build the same input)."""
    state = state.model_copy(deep=True)
    step = _step(state, command.step)
    state.updated_at = now
    attempts = step.compensation_attempts if command.compensation else step.attempts
    if attempts and not attempts[-1].accepted and attempts[-1].finished_at is None:  # about to be submitted: refused
        attempts[-1].status, attempts[-1].error, attempts[-1].finished_at = "failed", command.error, now
    if command.compensation:
        step.compensation, step.compensation_error = CompensationStatus.FAILED, command.error
    else:
        _step_ended(state, step, StepStatus.FAILED, command.error, now)
    return state


def on_settled(state: SagaState, status: SagaStatus, now: float) -> SagaState:
    state = state.model_copy(deep=True, update={"updated_at": now})
    if status is SagaStatus.COMPENSATING:
        _begin_compensation(state)
    else:
        state.status = status
    if status.finished:
        state.finished_at = now
    return state


def on_cancel_requested(state: SagaState, now: float) -> SagaState:
    return state.model_copy(update={"cancel_requested": True, "updated_at": now})


def _step(state: SagaState, name: str) -> StepState:
    return next(s for s in state.steps if s.name == name)


def _attempts(step: StepState, compensation: bool) -> list[Attempt]:
    return step.compensation_attempts if compensation else step.attempts


def attempt_of(state: SagaState, step_name: str, compensation: bool) -> Attempt:
    """The latest attempt of a step (or of its compensation)."""
    return _attempts(_step(state, step_name), compensation)[-1]


# ---------------------------------------------------------------- admission


class Admission:
    """Which waiting sagas run next: highest priority first, then first come; at most `max_running` in all and
    each tenant's own limit at once. A tenant at its limit holds up only its own sagas.

    Args:
        limit_of: a tenant's limit of running sagas (None: none); read at each admission, so it may change.
    """

    def __init__(self, max_running: int, limit_of: Callable[[str], int | None]) -> None:
        self._max_running = max_running
        self._limit_of = limit_of
        self._seq = itertools.count()
        self._waiting: dict[str | None, list[tuple[int, int, str]]] = {}  # by tenant (None: not limited), a heap
        self._queued: set[str] = set()
        self._running: dict[str, str | None] = {}  # saga id → the tenant it counts against
        self._per_tenant: Counter[str] = Counter()

    def put(self, saga_id: str, priority: int, tenant: str | None) -> None:
        """Queue a saga (once: again while it waits or runs is a no-op).

        Args:
            tenant: the tenant whose limit it counts against; None: none (no tenant, or started by an admin).
        """
        if saga_id in self._queued or saga_id in self._running:
            return
        heapq.heappush(self._waiting.setdefault(tenant, []), (-priority, next(self._seq), saga_id))
        self._queued.add(saga_id)

    def admit(self) -> list[str]:
        """The sagas to start now, best first; each counts as running until `finished`."""
        started: list[str] = []
        while len(self._running) < self._max_running:
            heads = [(queue[0], tenant) for tenant, queue in self._waiting.items() if self._has_room(tenant)]
            if not heads:
                break
            _, tenant = min(heads, key=lambda head: head[0])
            queue = self._waiting[tenant]
            _, _, saga_id = heapq.heappop(queue)
            if not queue:
                del self._waiting[tenant]
            self._queued.discard(saga_id)
            self._running[saga_id] = tenant
            if tenant is not None:
                self._per_tenant[tenant] += 1
            started.append(saga_id)
        return started

    def withdraw(self, saga_id: str) -> bool:
        """Take a waiting saga out of the queue (it was cancelled: settling it must not wait for room); whether it
        was waiting."""
        if saga_id not in self._queued:
            return False
        self._queued.discard(saga_id)
        for tenant, queue in list(self._waiting.items()):
            kept = [entry for entry in queue if entry[2] != saga_id]
            if len(kept) != len(queue):
                heapq.heapify(kept)
                if kept:
                    self._waiting[tenant] = kept
                else:
                    del self._waiting[tenant]
        return True

    def finished(self, saga_id: str) -> None:
        """A saga stopped running (settled, or its driver ended): its place goes to the next."""
        if saga_id not in self._running:
            return
        tenant = self._running.pop(saga_id)
        if tenant is not None:
            self._per_tenant[tenant] -= 1
            if not self._per_tenant[tenant]:
                del self._per_tenant[tenant]

    def waiting(self) -> int:
        """How many sagas wait to be admitted."""
        return len(self._queued)

    def _has_room(self, tenant: str | None) -> bool:
        if tenant is None:
            return True
        limit = self._limit_of(tenant)
        return limit is None or self._per_tenant[tenant] < limit
