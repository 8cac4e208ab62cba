"""The tool registry: tool settings → tool instances, and each tool's published input schema."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import jsonschema_rs
from jsonschema import Draft202012Validator

from orchestrator.adapters.artifact_store import ArtifactStore
from orchestrator.models import ToolInfo
from orchestrator.resilience import ProviderGate
from orchestrator.settings import ProviderSettings, Settings, ToolSettings
from orchestrator.tools.artifact import ArtifactTool
from orchestrator.tools.base import Tool
from orchestrator.tools.echo import EchoTool
from orchestrator.tools.openai import Endpoint, OpenAITool

if TYPE_CHECKING:
    from orchestrator.tools.mcp import McpConnections
    from orchestrator.tools.python import Offload

# Kinds whose input schema is fixed by the kind; mcp, python and ml tools each publish their own.
FIXED_SCHEMAS: dict[str, Mapping[str, Any]] = {
    "echo": EchoTool.input_schema, "openai": OpenAITool.input_schema, "artifact": ArtifactTool.input_schema,
}
ANY_OBJECT: Mapping[str, Any] = {"type": "object"}


@dataclass(frozen=True, slots=True)
class ToolDeps:
    """What tools share within one worker process."""

    gate: ProviderGate | None = None  # provider limits and breakers (Redis); none: unlimited
    offload: Offload | None = None  # where ml functions run (Ray tasks); none: a local thread
    mcp: McpConnections | None = None  # sessions to MCP servers, reused across calls
    artifacts: ArtifactStore | None = None  # where artifact tools publish (Redis)


def build_tools(settings: Settings, worker_type: str, deps: ToolDeps) -> dict[str, Tool]:
    """The tools a worker of `worker_type` runs."""
    return {name: build_tool(name, settings, deps) for name, tool in settings.tools.items()
            if tool.worker_type == worker_type}


def build_tool(name: str, settings: Settings, deps: ToolDeps | None = None) -> Tool:
    """Instantiate one configured tool."""
    deps = deps or ToolDeps()
    tool = settings.tools[name]
    if tool.kind == "openai":
        fallbacks = [Endpoint(other, settings.tools[other], settings.provider_of(other), _limits(settings, other))
                     for other in tool.fallback]
        return OpenAITool(name, tool, limits=_limits(settings, name), fallbacks=fallbacks, gate=deps.gate)
    if tool.kind == "mcp":
        from orchestrator.tools.mcp import McpConnections, McpTool

        assert tool.server is not None  # settings validated it
        connections = deps.mcp or McpConnections()
        return McpTool(name, tool, tool.server, settings.mcp_servers[tool.server], connections)
    if tool.kind in ("python", "ml"):
        from orchestrator.tools.python import LocalOffload, MlTool, PythonTool

        return PythonTool(name, tool) if tool.kind == "python" else MlTool(name, tool, deps.offload or LocalOffload())
    if tool.kind == "artifact":
        if deps.artifacts is None:
            raise ValueError(f"artifact tool {name!r} needs an artifact store")
        return ArtifactTool(name, deps.artifacts)
    return EchoTool(name, tool.effect_dir)


def _limits(settings: Settings, tool_name: str) -> ProviderSettings:
    return settings.providers.get(settings.provider_of(tool_name)) or ProviderSettings()


def input_schema(settings: ToolSettings) -> Mapping[str, Any]:
    """The JSON Schema a tool's input is validated against, as published by `status` and `rpc.discover`."""
    if settings.input_schema is not None:
        return settings.input_schema
    if settings.kind in FIXED_SCHEMAS:
        return FIXED_SCHEMAS[settings.kind]
    if settings.kind in ("python", "ml"):
        from orchestrator.tools.python import published_schema

        return published_schema(settings)
    return ANY_OBJECT


@cache
def _validator(schema_json: str) -> Draft202012Validator:
    schema = json.loads(schema_json)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


_checks: dict[int, tuple[Mapping[str, Any], Any]] = {}  # id(schema) → (the schema, kept alive; its fast check)


def _valid(schema: Mapping[str, Any], value: Any) -> bool:
    """The fast check (compiled, in Rust): only an invalid value pays for the field-named messages."""
    cached = _checks.get(id(schema))
    if cached is None or cached[0] is not schema:
        cached = _checks[id(schema)] = (schema, jsonschema_rs.validator_for(dict(schema)))
    return bool(cached[1].is_valid(value))


def input_errors(settings: ToolSettings, value: Mapping[str, Any], path: str) -> dict[str, str]:
    """Why `value` does not fit the tool's input schema, by field path under `path`; empty when it does."""
    return schema_errors(input_schema(settings), value, path)


def schema_errors(schema: Mapping[str, Any], value: Any, path: str, *, fast: bool = True) -> dict[str, str]:
    """Why `value` does not fit `schema`, by field path under `path`; empty when it does.

    Args:
        fast: first try the compiled check, cached by the schema object's identity: for long-lived schemas
            (a tool's, a workflow's), not for one decoded afresh each time.
    """
    if fast and _valid(schema, value):
        return {}
    errors: dict[str, str] = {}
    for error in _validator(json.dumps(schema, sort_keys=True)).iter_errors(value):
        where = ".".join([path, *(str(p) for p in error.absolute_path)])
        if error.validator == "additionalProperties":
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            for name in extra:
                errors[f"{where}.{name}"] = "unknown field"
            continue
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else ""
            errors[f"{where}.{missing}" if missing else where] = "required"
            continue
        errors.setdefault(where, _short(error.message))
    return errors


def _short(message: str, limit: int = 200) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"


def describe(tools: Mapping[str, ToolSettings]) -> list[ToolInfo]:
    """What `status` and `rpc.discover` list about each tool."""
    return [
        ToolInfo(name=name, kind=t.kind, worker_type=t.worker_type, description=t.description,
                 preemptible=t.preemptible, input_schema=dict(input_schema(t)))
        for name, t in sorted(tools.items())
    ]
