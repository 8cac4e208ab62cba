"""The tool registry: tool settings → tool instances, and each tool's published input schema."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator

from orchestrator.models import ToolInfo
from orchestrator.settings import ToolSettings
from orchestrator.tools.base import Tool
from orchestrator.tools.echo import EchoTool
from orchestrator.tools.openai import OpenAITool

TOOL_KINDS: dict[str, type[Tool]] = {"echo": EchoTool, "openai": OpenAITool}


def build_tool(name: str, settings: ToolSettings) -> Tool:
    """Instantiate the tool a worker runs."""
    if settings.kind == "openai":
        return OpenAITool(name, settings)
    return EchoTool(name, settings.effect_dir)


def input_schema(settings: ToolSettings) -> Mapping[str, Any]:
    return TOOL_KINDS[settings.kind].input_schema


@cache
def _validator(kind: str) -> Draft202012Validator:
    schema = TOOL_KINDS[kind].input_schema
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def input_errors(settings: ToolSettings, value: Mapping[str, Any], path: str) -> dict[str, str]:
    """Why `value` does not fit the tool's input schema, by field path under `path`; empty when it does."""
    errors: dict[str, str] = {}
    for error in _validator(settings.kind).iter_errors(value):
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
