"""Turn validated run_task params into tasks: check each tool, its input schema and the limits."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from orchestrator.errors import InvalidParamsError
from orchestrator.models import RunTaskParams, RunTaskParamsV2
from orchestrator.settings import Settings, ToolSettings
from orchestrator.tasks import TaskSpec, new_task_id
from orchestrator.tools import registry


def build_task(params: RunTaskParams | RunTaskParamsV2, settings: Settings, now: float,
               tenant: str | None = None, shard: int = 0, max_priority: int = 10,
               operator: bool = True) -> tuple[TaskSpec, list[TaskSpec]]:
    """The task to accept and its fanout children (all the tenant's, all in `shard`); raises InvalidParamsError
    naming every offending field.

    Args:
        max_priority: the highest priority the caller may use (see `auth.max_priority`).
        operator: the caller is an admin or the orchestrator itself (a saga's compensation): it may run what
            only they may (an artifact's `restore`).
    """
    errors: dict[str, str] = {}
    if len(params.children) > settings.limits.max_children:
        errors["params.children"] = f"more than {settings.limits.max_children} children"
    tool = settings.tools.get(params.tool)
    if "priority" not in params.model_fields_set and tool is not None:  # the call named none: the tool's default
        params = params.model_copy(update={"priority": tool.priority})
    for where, priority in [("params", params.priority)] + [
            (f"params.children.{i}", c.priority) for i, c in enumerate(params.children) if c.priority is not None]:
        if priority > max_priority:
            errors[f"{where}.priority"] = priority_refusal(priority, max_priority)
    task_id = new_task_id(shard)
    children: list[TaskSpec] = []
    for i, child in enumerate(params.children):
        where = f"params.children.{i}"
        if (child.prompt is None) == (child.input is None):
            errors[where] = "give exactly one of prompt (v1 style) or input (v2 style)"
            continue
        spec = _spec(settings, errors, where, child.tool, child.prompt, child.input, child.context, now,
                     priority=params.priority if child.priority is None else child.priority, agent=params.agent,
                     tenant=tenant, parent=task_id, task_id=new_task_id(shard))
        if spec is not None:
            children.append(spec)
    v1 = isinstance(params, RunTaskParams)
    deadline = None if v1 or params.deadline is None else params.deadline.timestamp()
    not_before = _not_before(params, settings, errors, now, deadline)
    prompt, tool_input = _v2_input(params, errors) if isinstance(params, RunTaskParamsV2) else (params.prompt, None)
    task = None if {"params.input", "params.prompt"} & errors.keys() else _spec(
        settings, errors, "params", params.tool, prompt, tool_input, params.context, now, priority=params.priority,
        agent=params.agent, tenant=tenant, shorthand=not v1 and params.prompt is not None, deadline=deadline,
        not_before=not_before, idempotency_key=params.idempotency_key, task_id=task_id,
        children=tuple(c.task_id for c in children),
    )
    if not operator:
        for where, spec in [("params", task), *((f"params.children.{i}", c) for i, c in enumerate(children))]:
            if spec is not None and _operators_only(settings, spec):
                errors[f"{where}.{'context' if spec.v1 else 'input'}.action"] = (
                    "restore runs only as a saga's compensation or for an admin")
    if errors or task is None:
        raise InvalidParamsError(errors)
    return task, children


def _v2_input(params: RunTaskParamsV2, errors: dict[str, str]) -> tuple[str | None, dict[str, Any] | None]:
    """(prompt, input) of a v2 call: `prompt` alone is the v1 form; with `input` it is input.prompt."""
    if params.input is None:
        if params.prompt is None:
            errors["params.input"] = "required (or give prompt, the shorthand for input.prompt)"
        return params.prompt, None
    if params.prompt is None:
        return None, params.input
    if "prompt" in params.input:
        errors["params.prompt"] = "given twice: also as params.input.prompt; give one of them"
    return None, {**params.input, "prompt": params.prompt}


def _not_before(params: RunTaskParams | RunTaskParamsV2, settings: Settings, errors: dict[str, str], now: float,
                deadline: float | None) -> float | None:
    """When a delayed task becomes ready (None: at once; a time already past is at once too); errors collected."""
    if params.not_before is not None and params.delay_s is not None:
        errors["params.delay_s"] = "give not_before or delay_s, not both"
        return None
    if params.delay_s is not None:
        where, at = "params.delay_s", now + params.delay_s
    elif params.not_before is not None:
        where, at = "params.not_before", params.not_before.timestamp()
    else:
        return None
    max_delay_s = settings.limits.max_delay_s
    if at - now > max_delay_s:
        errors[where] = f"more than {max_delay_s:g} s ahead (limits.max_delay_s)"
    elif deadline is not None and now < at >= deadline:
        errors["params.deadline"] = "not after not_before: the task could never run"
    return at if at > now else None


def _spec(settings: Settings, errors: dict[str, str], where: str, tool_name: str, prompt: str | None,
          tool_input: Mapping[str, Any] | None, context: Mapping[str, Any], now: float, shorthand: bool = False,
          **fields: Any) -> TaskSpec | None:
    """One task from v1-style (prompt + context options) or v2-style (input) params; errors are collected.

    Args:
        shorthand: the input's prompt was given as `prompt` beside `input`: errors about it name `prompt`.
    """
    tool = settings.tools.get(tool_name)
    if tool is None:
        known = ", ".join(sorted(settings.tools))
        errors[f"{where}.tool"] = f"unknown tool {tool_name[:128]!r}; known tools: {known}"
        return None
    limits = settings.limits
    found: dict[str, str] = {}
    _check_size(found, context, f"{where}.context", limits.max_context_bytes)
    if prompt is not None:  # v1: options come from the context; the prompt is its own param
        tool_input = _v1_input(prompt, context, tool)
        schema_errors = registry.input_errors(tool, tool_input, f"{where}.context")
        found |= {(f"{where}.prompt" if k == f"{where}.context.prompt" else k): v for k, v in schema_errors.items()}
        prompt_field = f"{where}.prompt"
    else:
        tool_input = dict(tool_input or {})
        _check_size(found, tool_input, f"{where}.input", limits.max_context_bytes)
        schema_errors = registry.input_errors(tool, tool_input, f"{where}.input")
        prompt_field = f"{where}.prompt" if shorthand else f"{where}.input.prompt"
        found |= {(prompt_field if k == f"{where}.input.prompt" else k): v for k, v in schema_errors.items()}
    text = tool_input.get("prompt")
    if isinstance(text, str) and len(text) > limits.max_prompt_chars:
        found[prompt_field] = f"longer than {limits.max_prompt_chars} characters"
    errors |= found
    if found:
        return None
    return TaskSpec(tool=tool_name, worker_type=tool.worker_type, input=tool_input, context=dict(context),
                    v1=prompt is not None, created_at=now, **fields)


def _operators_only(settings: Settings, task: TaskSpec) -> bool:
    """An action no tenant may run on its own: an artifact's `restore` (it would undo a deploy)."""
    return settings.tools[task.tool].kind == "artifact" and task.input.get("action") == "restore"


def priority_refusal(priority: int, max_priority: int) -> str:
    return (f"priority {priority} is above {max_priority}, the most this key may use: urgent priorities need the "
            "`urgent` scope or the tenant's quota max_priority")


def _check_size(errors: dict[str, str], value: Any, field: str, limit: int) -> None:
    if json_size(value) > limit:
        errors[field] = f"larger than {limit} bytes"


def json_size(value: Any) -> int:
    """Bytes of `value` as the store writes it: compact UTF-8 JSON (an escaped "é" would count 6, not 2)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def _v1_input(prompt: str, context: Mapping[str, Any], tool: ToolSettings) -> dict[str, Any]:
    """v1 carries tool options in `context`: take the keys the tool's schema names, plus the prompt."""
    known = registry.input_schema(tool).get("properties", {})
    options = {k: v for k, v in context.items() if k in known and k != "prompt"}
    return {"prompt": prompt, **options}
