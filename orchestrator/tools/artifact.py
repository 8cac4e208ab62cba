"""The `artifact` tool kind: publish a new version of an artifact, or restore an earlier one (a
deploy step and its compensation)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from orchestrator.adapters.artifact_store import ArtifactStore
from orchestrator.errors import ToolError
from orchestrator.tools.base import JsonValue, Tool, ToolCall, ToolContext


class ArtifactTool(Tool):
    """`{"action": "publish", "artifact", "content"}` → `{"version", "previous_version"}`;
    `{"action": "restore", "artifact", "version"}` (null: no live version) → `{"live_version"}`."""

    kind: ClassVar[str] = "artifact"
    input_schema: ClassVar[Mapping[str, JsonValue]] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "action": {"enum": ["publish", "restore"]},
            "artifact": {"type": "string", "pattern": "^[A-Za-z0-9_.\\-]{1,128}$"},
            "content": {"description": "publish: the new version (any JSON)"},
            "version": {"type": ["integer", "null"], "minimum": 1, "description": "restore: the version to make live"},
        },
        "required": ["action", "artifact"],
        "additionalProperties": False,
    }

    def __init__(self, name: str, store: ArtifactStore) -> None:
        super().__init__(name)
        self._store = store

    async def run(self, call: ToolCall, ctx: ToolContext) -> JsonValue:
        name = call.input["artifact"]
        if call.input["action"] == "publish":
            if "content" not in call.input:
                raise ToolError("publish needs content")
            # Keyed by the task: a retried or resumed attempt of the same task publishes once.
            version, previous = await self._store.publish(name, call.input["content"], call.task_id, call.tenant)
            return {"artifact": name, "version": version, "previous_version": previous}
        if "version" not in call.input:
            raise ToolError("restore needs version (null restores 'no live version')")
        version = call.input["version"]
        if not await self._store.restore(name, version, call.tenant):
            raise ToolError(f"artifact {name!r} has no version {version}")
        return {"artifact": name, "live_version": version}
