"""Registered tools and workflows as MCP tools: who gets a name, the `_meta` keys, results and errors."""

from __future__ import annotations

import pytest

from orchestrator.errors import InvalidParamsError
from orchestrator.mcp_tools import (
    CLIENT_CAPABILITIES,
    DEADLINE,
    PRIORITY,
    TASK_ID,
    TASKS,
    answers,
    created_task,
    detailed_saga,
    detailed_task,
    opted_in,
    renamed_fields,
    runnables,
    submission,
    task_result,
)
from orchestrator.settings import Settings

SETTINGS = Settings(
    tools={"status": {"kind": "echo"}, "bad name!": {"kind": "echo"}, "scalar": {"kind": "python",
           "function": "m:f", "input_schema": {"type": "string"}}},
    workflows={"echo": {"name": "echo", "steps": [{"name": "s", "tool": "echo", "input": {"prompt": "x"}}]},
               "greet": {"name": "greet", "steps": [{"name": "s", "tool": "echo", "input": {"prompt": "x"}}]}},
)


def test_names_go_to_management_tools_then_registered_tools_then_workflows() -> None:
    offered, left_out = runnables(SETTINGS.tools, SETTINGS.all_workflows(), {"status", "run_task"})
    names = [(r.name, r.workflow) for r in offered]
    assert ("echo", False) in names and ("greet", True) in names and ("code_pipeline", True) in names
    assert len({name for name, _ in names}) == len(names)
    assert set(left_out) == {"tool status", "workflow echo", "tool bad name!", "tool scalar"}
    by_name = {r.name: r.definition for r in offered}
    assert by_name["echo"].execution is not None and by_name["echo"].execution.task_support == "optional"
    assert by_name["greet"].execution is not None and by_name["greet"].execution.task_support == "required"
    assert by_name["greet"].input_schema == {"type": "object"}  # a workflow without a schema takes any object


def test_meta_gives_the_submission_and_errors_name_what_the_call_sent() -> None:
    assert submission({PRIORITY: 7, DEADLINE: "2030-01-01T00:00:00Z", "other": 1}) == {
        "priority": 7, "deadline": "2030-01-01T00:00:00Z"}
    assert submission(None) == {}
    assert renamed_fields({"params.input.steps": "x", "params.input": "y", "params.priority": "z",
                           "params.inputs": "w"}) == {
        "arguments.steps": "x", "arguments": "y", f"_meta.{PRIORITY}": "z", "params.inputs": "w"}


def test_a_finished_task_is_its_tools_result() -> None:
    done = task_result({"task_id": "0-a", "status": "succeeded", "result": {"text": "hi"}})
    assert not done.is_error and done.structured_content == {"text": "hi"} and done.meta == {TASK_ID: "0-a"}
    scalar = task_result({"task_id": "0-b", "status": "succeeded", "result": 3})
    assert scalar.structured_content == {"result": 3}
    failed = task_result({"task_id": "0-c", "status": "failed", "error": {"code": -32004, "message": "boom"}})
    assert failed.is_error and failed.structured_content == {"status": "failed",
                                                             "error": {"code": -32004, "message": "boom"}}


def record(status: str, **fields: object) -> dict[str, object]:
    return {"task_id": "0-t", "status": status, "created_at": 1_800_000_000.0, **fields}


def test_tasks_get_maps_the_orchestrators_statuses() -> None:
    assert detailed_task(record("queued"), 1000)["status"] == "working"
    assert detailed_task(record("preempted"), 1000)["status"] == "working"
    done = detailed_task(record("succeeded", result="hi", finished_at=1_800_000_001.5), 1000)
    assert done["status"] == "completed" and done["result"]["content"] == [{"type": "text", "text": "hi"}]
    assert (done["createdAt"], done["lastUpdatedAt"]) == ("2027-01-15T08:00:00.000Z", "2027-01-15T08:00:01.500Z")
    assert (done["ttlMs"], done["pollIntervalMs"]) == (1000, 500) and "error" not in done
    own = detailed_task(record("failed", error={"code": -32004, "message": "no disk"}), 1000)
    assert own["status"] == "completed" and own["result"]["isError"] is True  # the tool's own error
    lost = detailed_task(record("failed", error={"code": -32007, "message": "gave up"}), 1000)
    assert lost["status"] == "failed" and lost["error"] == {"code": -32007, "message": "gave up"}
    assert "result" not in lost
    assert detailed_task(record("cancelled"), 1000)["status"] == "cancelled"


def test_the_opt_in_is_the_extension_among_the_requests_client_capabilities() -> None:
    assert opted_in({CLIENT_CAPABILITIES: {"extensions": {TASKS: {}}}})
    assert not opted_in({CLIENT_CAPABILITIES: {"extensions": {}}}) and not opted_in(None)
    assert created_task("0-t", 1_800_000_000.0, 5)["resultType"] == "task"


REQUEST = {"message": "Go?", "schema": {"type": "object"}, "asked_at": 1_800_000_002.0}


def test_a_task_waiting_for_input_is_input_required_with_elicitation_requests() -> None:
    waiting = detailed_task(record("input_required", started_at=1_800_000_001.0, input_requests={"go": REQUEST}), 1000)
    assert waiting["status"] == "input_required" and waiting["lastUpdatedAt"] == "2027-01-15T08:00:02.000Z"
    assert waiting["inputRequests"] == {"go": {"method": "elicitation/create", "params": {
        "mode": "form", "message": "Go?", "requestedSchema": {"type": "object"}}}}
    steps = [{"name": "build", "input_requests": {}}, {"name": "deploy", "input_requests": {"approval": REQUEST}}]
    saga = detailed_saga({"saga_id": "s1", "status": "running", "created_at": 1_800_000_000.0, "steps": steps}, 1000)
    assert saga["status"] == "input_required" and list(saga["inputRequests"]) == ["deploy.approval"]


def test_input_responses_must_be_elicitation_results() -> None:
    assert answers({"a": {"action": "accept", "content": {"x": 1}}, "b": {"action": "decline"}}) == {
        "a": ("accept", {"x": 1}), "b": ("decline", None)}
    for bad, field in (({"a": 3}, "params.inputResponses.a"), ({"a": {"action": "ok"}}, "params.inputResponses.a.action")):
        with pytest.raises(InvalidParamsError) as refused:
            answers(bad)
        assert list(refused.value.fields) == [field]
