"""Registered tools and workflows as MCP tools: their definitions, the orchestrator's `_meta` keys, the run_task and
run_saga params a call stands for, and a finished task or saga as the call's result."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import mcp_types as types

from orchestrator.errors import InvalidParamsError
from orchestrator.saga import WorkflowDefinition
from orchestrator.settings import ToolSettings
from orchestrator.tools import registry

META_PREFIX = "io.github.mcp-orchestrator/"
"""Our keys in a request's or result's `_meta` (MCP reserves only `io.modelcontextprotocol/` and the like)."""
PRIORITY = META_PREFIX + "priority"
IDEMPOTENCY_KEY = META_PREFIX + "idempotency_key"
DEADLINE = META_PREFIX + "deadline"
TASK_ID = META_PREFIX + "task_id"
SAGA_ID = META_PREFIX + "saga_id"
SUBMISSION_KEYS = {"priority": PRIORITY, "idempotency_key": IDEMPOTENCY_KEY, "deadline": DEADLINE}

TaskSupport = Literal["forbidden", "optional", "required"]
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")  # what MCP allows in a tool name (SEP-986)
_OPEN_WORLD_KINDS = frozenset({"openai", "mcp"})


@dataclass(frozen=True, slots=True)
class Runnable:
    """A registered tool or a workflow offered as an MCP tool: a call submits a task of it, or starts a saga."""

    name: str
    workflow: bool
    definition: types.Tool
    ask_first: bool = False  # a task's first requests for input are gathered within the call (ToolSettings)

    @property
    def task_support(self) -> TaskSupport:
        execution = self.definition.execution
        return "forbidden" if execution is None or execution.task_support is None else execution.task_support


def runnables(tools: Mapping[str, ToolSettings], workflows: Mapping[str, WorkflowDefinition],
              taken: Iterable[str]) -> tuple[list[Runnable], dict[str, str]]:
    """The registered tools, then the workflows, each group by name; and the names left out, with why.

    A name is offered once: a management tool's name (`taken`) wins over a registered tool's, which wins over a
    workflow's; the one that loses stays reachable through run_task or run_saga.
    """
    used, offered, left_out = set(taken), list[Runnable](), dict[str, str]()
    candidates = [(name, False, tools[name]) for name in sorted(tools)]
    candidates += [(name, True, workflows[name]) for name in sorted(workflows)]
    for name, workflow, source in candidates:
        what = "workflow" if workflow else "tool"
        if name in used:
            left_out[f"{what} {name}"] = "its name is taken by a management tool or a tool of that name"
            continue
        if not _TOOL_NAME.fullmatch(name):
            left_out[f"{what} {name}"] = "not a valid MCP tool name (letters, digits, _ - . only; at most 128)"
            continue
        schema = _object_schema(source.input_schema if isinstance(source, WorkflowDefinition)
                                else registry.input_schema(source))
        if schema is None:
            left_out[f"{what} {name}"] = "its input schema does not describe an object"
            continue
        used.add(name)
        definition = (_workflow_tool(name, source, schema) if isinstance(source, WorkflowDefinition)
                      else _registered_tool(name, source, schema))
        offered.append(Runnable(name, workflow, definition, not workflow and getattr(source, "ask_first", False)))
    return offered, left_out


def execution(task_support: TaskSupport) -> types.ToolExecution:
    return types.ToolExecution(task_support=task_support)


def _registered_tool(name: str, tool: ToolSettings, schema: dict[str, Any]) -> types.Tool:
    description = tool.description or f"The {tool.kind} tool {name}."
    return types.Tool(
        name=name,
        description=f"{description} Runs as a durable task (priority {tool.priority} unless the call's _meta "
                    f"names one in {PRIORITY}).",
        input_schema=schema,
        execution=execution(tool.task_support),
        annotations=types.ToolAnnotations(read_only_hint=False, open_world_hint=tool.kind in _OPEN_WORLD_KINDS),
    )


def _workflow_tool(name: str, workflow: WorkflowDefinition, schema: dict[str, Any]) -> types.Tool:
    steps = " → ".join(step.name for step in workflow.steps)
    description = (workflow.description + " " if workflow.description else "") + (
        f"Runs as a saga ({steps}); a step that fails for good compensates the completed ones.")
    return types.Tool(name=name, description=description, input_schema=schema, execution=execution("required"),
                      annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=True))


def _object_schema(schema: Mapping[str, Any]) -> dict[str, Any] | None:
    """The schema with `type: object` at its root, as MCP wants; None when it describes something else."""
    kind = schema.get("type")
    if kind is None:
        return {"type": "object", **schema}
    return dict(schema) if kind == "object" else None


def submission(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run_task / run_saga params a call's `_meta` carries, as sent (the dispatcher checks them)."""
    meta = meta or {}
    return {field: meta[key] for field, key in SUBMISSION_KEYS.items() if key in meta}


def renamed_fields(fields: Mapping[str, str]) -> dict[str, str]:
    """Field paths of a run_task / run_saga error as the MCP call spelled them: `params.input…` are the
    `arguments…`, `params.priority` (and the others from `_meta`) the `_meta` keys."""
    renames = {"params.input": "arguments", **{f"params.{field}": f"_meta.{key}"
                                                for field, key in SUBMISSION_KEYS.items()}}
    out: dict[str, str] = {}
    for path, why in fields.items():
        for old, new in renames.items():
            if path == old or path.startswith(old + "."):
                path = new + path[len(old):]
                break
        out[path] = why
    return out


def task_result(record: Mapping[str, Any]) -> types.CallToolResult:
    """A finished task as its tool's MCP result: the result (JSON text and structured), else its error (isError)."""
    meta = {TASK_ID: record["task_id"]}
    if record["status"] == "succeeded":
        return _success(record.get("result"), meta)
    error = record.get("error") or {"code": -32004, "message": f"the task was {record['status']}"}
    return _failure(record["status"], error, meta)


def saga_result(state: Mapping[str, Any]) -> types.CallToolResult:
    """A finished saga as its workflow's MCP result: every step's output, else why it failed (isError)."""
    meta = {SAGA_ID: state["saga_id"]}
    if state["status"] == "succeeded":
        outputs = {step["name"]: step.get("output") for step in state.get("steps", [])}
        return _success({"saga_id": state["saga_id"], "status": "succeeded", "outputs": outputs}, meta)
    message = state.get("error") or f"the saga was {state['status']}"
    return _failure(state["status"], {"code": -32004, "message": message}, meta)


def _success(value: Any, meta: dict[str, Any]) -> types.CallToolResult:
    structured = value if isinstance(value, dict) else {"result": value}
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=structured, meta=meta)


def _failure(status: str, error: Mapping[str, Any], meta: dict[str, Any]) -> types.CallToolResult:
    text = f"{status}: {error.get('message')}"
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True, meta=meta,
                                structured_content={"status": status, "error": dict(error)})


# ---------------------------------------------------------------- the Tasks extension (2026-07-28 wire)

TASKS = "io.modelcontextprotocol/tasks"
CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
REQUIRED_CAPABILITIES = {"requiredCapabilities": {"extensions": {TASKS: {}}}}
POLL_INTERVAL_MS = 500
_WORKING = frozenset({"queued", "waiting", "running", "preempted", "compensating"})
_TOOL_FAILED = -32004  # a task error the tool itself reported: the call completed, with isError


def opted_in(meta: Mapping[str, Any] | None) -> bool:
    """Whether a request's `_meta` declares the Tasks extension among the client's capabilities."""
    capabilities = (meta or {}).get(CLIENT_CAPABILITIES)
    extensions = capabilities.get("extensions") if isinstance(capabilities, dict) else None
    return isinstance(extensions, dict) and TASKS in extensions


def created_task(task_id: str, now: float, ttl_ms: int) -> dict[str, Any]:
    """The flat CreateTaskResult of a task just made durable."""
    return {"resultType": "task", **_envelope(task_id, "working", now, now, ttl_ms)}


def detailed_task(record: Mapping[str, Any], ttl_ms: int) -> dict[str, Any]:
    """A task record as tasks/get answers it: its status, and its result or error inlined once it finished.

    The tool's own failure (-32004) is `completed` with an isError result; any other error (lost attempts, a
    deadline passed before it started, the orchestrator's own failures) is `failed` with that JSON-RPC error.
    """
    times = [t for t in (record.get("created_at"), record.get("started_at"), record.get("finished_at")) if t]
    status, error = record["status"], record.get("error") or {}
    if status in _WORKING:
        return _envelope(record["task_id"], "working", record["created_at"], max(times), ttl_ms)
    if status == "cancelled":
        return _envelope(record["task_id"], "cancelled", record["created_at"], max(times), ttl_ms)
    if status == "input_required":
        asked = max([times[-1], *(r["asked_at"] for r in record["input_requests"].values())])
        return {**_envelope(record["task_id"], "input_required", record["created_at"], asked, ttl_ms),
                "inputRequests": input_requests(record["input_requests"])}
    if status == "failed" and error.get("code") != _TOOL_FAILED:
        task = _envelope(record["task_id"], "failed", record["created_at"], max(times), ttl_ms)
        return {**task, "statusMessage": str(error.get("message")),
                "error": {"code": error.get("code", -32603), "message": str(error.get("message"))}}
    task = _envelope(record["task_id"], "completed", record["created_at"], max(times), ttl_ms)
    return {**task, "result": _wire(task_result(record))}


def detailed_saga(state: Mapping[str, Any], ttl_ms: int) -> dict[str, Any]:
    """A saga as tasks/get answers it: `working` until it settles (`input_required` while a step's task waits for
    input: keys `<step>.<key>`), then its workflow's result (a failure, even compensated, is the tool's own:
    isError), or `cancelled`."""
    settled = state["status"] not in _WORKING and state["status"] != "running"
    updated = state.get("finished_at") or state.get("updated_at") or state["created_at"]
    asked = {f"{step['name']}{STEP_KEY}{key}": request for step in state["steps"]
             for key, request in (step.get("input_requests") or {}).items()}
    if not settled and asked:
        return {**_envelope(state["saga_id"], "input_required", state["created_at"], updated, ttl_ms),
                "inputRequests": input_requests(asked)}
    if not settled:
        return _envelope(state["saga_id"], "working", state["created_at"], updated, ttl_ms)
    if state["status"] == "cancelled":
        return _envelope(state["saga_id"], "cancelled", state["created_at"], updated, ttl_ms)
    task = _envelope(state["saga_id"], "completed", state["created_at"], updated, ttl_ms)
    return {**task, "result": _wire(saga_result(state))}


STEP_KEY = "."  # a saga's input request key: `<step>.<key>` (a step's name has no dot)


def input_requests(requests: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A task's requests for input as MCP input requests (SEP-2322): each one an `elicitation/create`."""
    return {key: {"method": "elicitation/create",
                  "params": {"mode": "form", "message": request["message"], "requestedSchema": request["schema"]}}
            for key, request in requests.items()}


def answers(responses: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """Elicitation results (`inputResponses`) as (action, content) by key; InvalidParamsError naming a response
    that is not one (`params.inputResponses.<key>…`)."""
    found: dict[str, tuple[str, Any]] = {}
    for key, response in responses.items():
        where = f"params.inputResponses.{key}"
        if not isinstance(response, Mapping):
            raise InvalidParamsError({where: "an elicitation result: {action, content}"})
        action = response.get("action")
        if action not in ("accept", "decline", "cancel"):
            raise InvalidParamsError({f"{where}.action": "accept, decline or cancel"})
        found[key] = (action, response.get("content"))
    return found


def _envelope(task_id: str, status: str, created_at: float, updated_at: float, ttl_ms: int) -> dict[str, Any]:
    return {"taskId": task_id, "status": status, "createdAt": _iso(created_at), "lastUpdatedAt": _iso(updated_at),
            "ttlMs": ttl_ms, "pollIntervalMs": POLL_INTERVAL_MS}


def _wire(result: types.CallToolResult) -> dict[str, Any]:
    return result.model_dump(by_alias=True, mode="json", exclude_none=True)


def _iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
