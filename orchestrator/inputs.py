"""Tasks that ask for input: a tool's request (`ctx.ask`), the answers `provide_input` stores, and their checks."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from orchestrator.errors import InvalidParamsError, ToolError
from orchestrator.tools.base import ToolContext
from orchestrator.tools.registry import schema_errors

ANY_OBJECT: Mapping[str, Any] = {"type": "object"}
MAX_KEY_CHARS = 128
MAX_MESSAGE_CHARS = 4000
MAX_SCHEMA_BYTES = 16_384
ACCEPT = "accept"
APPROVAL_KEY = "approval"
APPROVAL_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {"approve": {"type": "boolean", "description": "true: go ahead; false: the task fails"},
                   "comment": {"type": "string", "maxLength": 2000}},
    "required": ["approve"], "additionalProperties": False}


def request(key: str, message: str, schema: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
    """A tool's request for input as stored; ToolError (the tool's mistake) when it cannot be asked."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_CHARS:
        raise ToolError(f"ask: key must be a string of 1 to {MAX_KEY_CHARS} characters")
    if not isinstance(message, str) or len(message) > MAX_MESSAGE_CHARS:
        raise ToolError(f"ask: message must be a string of at most {MAX_MESSAGE_CHARS} characters")
    schema = dict(ANY_OBJECT if schema is None else schema)
    try:
        Draft202012Validator.check_schema(schema)
        size = len(json.dumps(schema))
    except (SchemaError, TypeError, ValueError) as exc:
        raise ToolError(f"ask {key!r}: schema is not a JSON Schema ({type(exc).__name__})") from None
    if size > MAX_SCHEMA_BYTES:
        raise ToolError(f"ask {key!r}: schema of {size} bytes exceeds {MAX_SCHEMA_BYTES}")
    return {"message": message, "schema": schema, "asked_at": now}


def answer_of(key: str, answer: Mapping[str, Any]) -> Any:
    """What `ask` returns for a stored answer: its content when accepted; a refusal raises ToolError."""
    action = answer.get("action", ACCEPT)
    if action == ACCEPT:
        return answer.get("content")
    raise ToolError(f"input {key!r} was {'declined' if action == 'decline' else 'cancelled'}")


def pending_key(requests: Mapping[str, Any], key: str | None) -> str | None:
    """The key an answer is for: the one given, else the only request pending (None: several, name one)."""
    if key is not None:
        return key
    return next(iter(requests)) if len(requests) == 1 else None


def as_answer(content: Any, action: str) -> dict[str, Any]:
    """An answer as stored: an accepted one's content (a declined one carries none)."""
    return {"action": ACCEPT, "content": content} if action == ACCEPT else {"action": action}


def checked_answer(request_: Mapping[str, Any], content: Any, action: str, path: str) -> dict[str, Any]:
    """The answer as stored, once it fits the request's schema; InvalidParamsError naming the fields under `path`
    when it does not."""
    if action == ACCEPT:
        errors = schema_errors(request_.get("schema") or ANY_OBJECT, content, path, fast=False)
        if errors:
            raise InvalidParamsError(errors)
    return as_answer(content, action)


async def approve(ctx: ToolContext, message: str) -> None:
    """Ask for approval (`context.approval` of a task: a saga step's gate); a refusal fails the task."""
    answer = await ctx.ask(APPROVAL_KEY, message, APPROVAL_SCHEMA)
    if not isinstance(answer, Mapping) or answer.get("approve") is not True:
        comment = answer.get("comment") if isinstance(answer, Mapping) else None
        raise ToolError("not approved" + (f": {comment}" if comment else ""))
