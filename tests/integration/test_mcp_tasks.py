"""Tasks on `mcp` tools through the whole system: tools imported from a downstream MCP server's tools/list."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Deployed, deployed, make_settings
from tests.integration.test_spine import result, rpc
from tests.mcp_server import stdio_command, stdio_env
from tests.support import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int) -> Iterator[Deployed]:
    server = {"command": stdio_command(), "env": stdio_env(), "import_tools": True, "tool_prefix": "calc."}
    settings = make_settings(redis_server.url, mcp_servers={"calc": server},
                             tools={"shouter": {"kind": "mcp", "server": "calc", "remote_tool": "shout"}})
    with deployed(settings, ray_session) as running:
        yield running


def test_imported_tools_are_listed_with_their_schemas(system: Deployed) -> None:
    tools = {t["name"]: t for t in result(system.base_url, "status")["tools"]}
    assert {"calc.add", "calc.shout", "calc.slow_count", "shouter"} <= set(tools)
    add = tools["calc.add"]
    assert add["kind"] == "mcp" and add["description"] == "Adds two integers."
    assert add["input_schema"]["required"] == ["a", "b"]
    assert add["input_schema"]["properties"]["a"]["type"] == "integer"


def test_mcp_tool_round_trip(system: Deployed) -> None:
    record = result(system.base_url, "run_task", {"tool": "calc.add", "input": {"a": 2, "b": 40}, "wait": 30},
                    path="v2/rpc")
    assert record["status"] == "succeeded", record
    assert record["result"]["text"] == "42"
    shouted = result(system.base_url, "run_task", {"tool": "shouter", "input": {"text": "hi"}, "wait": 30},
                     path="v2/rpc")
    assert shouted["result"]["text"] == "HI!"


def test_input_is_checked_against_the_imported_schema(system: Deployed) -> None:
    reply = rpc(system.base_url, "run_task", {"tool": "calc.add", "input": {"a": "two"}}, path="v2/rpc")
    assert reply["error"]["code"] == -32602
    assert set(reply["error"]["data"]["fields"]) == {"params.input.a", "params.input.b"}


def test_a_failing_remote_tool_fails_the_task_clearly(system: Deployed) -> None:
    record = result(system.base_url, "run_task", {"tool": "calc.fail", "input": {"message": "no disk"}, "wait": 30},
                    path="v2/rpc")
    assert record["status"] == "failed"
    assert "no disk" in record["error"]["message"] and record["error"]["retryable"] is False
