"""Turn validated run_task params into a task: check the tool, its input schema and the limits."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.errors import InvalidParamsError
from orchestrator.models import RunTaskParams, RunTaskParamsV2
from orchestrator.settings import Settings, ToolSettings
from orchestrator.tasks import TaskSpec, new_task_id
from orchestrator.tools import registry


def build_task(params: RunTaskParams | RunTaskParamsV2, settings: Settings, now: float) -> TaskSpec:
    """The task to accept; raises InvalidParamsError naming each offending field."""
    tool = _tool(settings, params.tool)
    limits = settings.limits
    _check_size(params.context, "params.context", limits.max_context_bytes)
    if isinstance(params, RunTaskParams):
        prompt, tool_input, deadline = params.prompt, _v1_input(params, tool), None
        errors = registry.input_errors(tool, tool_input, "params.context")
        # v1: the prompt is a top-level param, not a context key
        errors = {("params.prompt" if k == "params.context.prompt" else k): v for k, v in errors.items()}
    else:
        prompt, tool_input = None, dict(params.input)
        deadline = params.deadline.timestamp() if params.deadline else None
        _check_size(tool_input, "params.input", limits.max_context_bytes)
        errors = registry.input_errors(tool, tool_input, "params.input")
    text = tool_input.get("prompt")
    if isinstance(text, str) and len(text) > limits.max_prompt_chars:
        field = "params.prompt" if prompt is not None else "params.input.prompt"
        errors[field] = f"longer than {limits.max_prompt_chars} characters"
    if errors:
        raise InvalidParamsError(errors)
    return TaskSpec(
        task_id=new_task_id(), tool=params.tool, worker_type=tool.worker_type, priority=params.priority,
        input=tool_input, context=params.context, prompt=prompt, agent=params.agent, deadline=deadline,
        idempotency_key=params.idempotency_key, created_at=now,
    )


def _tool(settings: Settings, name: str) -> ToolSettings:
    tool = settings.tools.get(name)
    if tool is None:
        known = ", ".join(sorted(settings.tools))
        raise InvalidParamsError({"params.tool": f"unknown tool {name[:128]!r}; known tools: {known}"})
    return tool


def _check_size(value: Any, field: str, limit: int) -> None:
    if len(json.dumps(value)) > limit:
        raise InvalidParamsError({field: f"larger than {limit} bytes"})


def _v1_input(params: RunTaskParams, tool: ToolSettings) -> dict[str, Any]:
    """v1 carries tool options in `context`: take the keys the tool's schema names, plus the prompt."""
    known = registry.input_schema(tool).get("properties", {})
    options = {k: v for k, v in params.context.items() if k in known and k != "prompt"}
    return {"prompt": params.prompt, **options}
