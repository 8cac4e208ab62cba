"""The client's list_tasks paging and the `orchestrator tasks` command, against a small JSON-RPC server of ours.

The server's `list_tasks` is built on another branch; until it lands, these tests serve the shape it was
specified with ({tasks, next_cursor}, the filters below) through the project's own Dispatcher on real HTTP.
Its params model forbids unknown fields, so a misnamed filter fails here as it would there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from typer.testing import CliRunner

from orchestrator import cli
from orchestrator.auth import ANONYMOUS
from orchestrator.client import AsyncClient, Client
from orchestrator.errors import InvalidParamsError
from orchestrator.jsonrpc import Dispatcher, Method, RequestContext
from orchestrator.models import TaskRecord, TaskStatus
from tests.support import served

pytestmark = pytest.mark.integration

Status = Literal["queued", "waiting", "running", "preempted", "succeeded", "failed", "cancelled"]


class ListTasksParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    status: Status | list[Status] | None = None
    tool: str | None = None
    worker_type: str | None = None
    priority_min: int | None = None
    priority_max: int | None = None
    created_after: float | None = None
    created_before: float | None = None
    parent_id: str | None = None
    saga_id: str | None = None
    tenant: str | None = None
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = None


def record(i: int, status: str, tool: str, tenant: str) -> TaskRecord:
    return TaskRecord(task_id=f"0-{i:020d}", status=TaskStatus(status), tool=tool, worker_type="reasoning",
                      priority=i % 11, tenant=tenant, created_at=1_700_000_000.0 + i)


STATUSES = ["succeeded", "failed", "cancelled", "running"]
TASKS = [record(i, STATUSES[i % 4], "echo" if i % 3 else "deepseek", "acme" if i % 2 else "globex")
         for i in range(40, 0, -1)]  # newest first


class TaskList:
    """list_tasks over TASKS; the cursor is the index where the next page starts. Records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []

    async def __call__(self, params: Any, ctx: RequestContext) -> dict[str, Any]:
        asked: ListTasksParams = params
        self.asked.append(asked.model_dump(exclude_none=True))
        statuses = [asked.status] if isinstance(asked.status, str) else asked.status
        matching = [t for t in TASKS if (statuses is None or t.status in statuses)
                    and asked.tool in (None, t.tool) and asked.tenant in (None, t.tenant)]
        start = int(asked.cursor or 0)
        page = matching[start:start + asked.limit]
        more = start + asked.limit < len(matching)
        return {"tasks": [t.model_dump(mode="json") for t in page],
                "next_cursor": str(start + asked.limit) if more else None}


@pytest.fixture
def server() -> Iterator[tuple[str, TaskList]]:
    handler = TaskList()
    dispatcher = Dispatcher([Method("list_tasks", ListTasksParams, dict[str, Any], "tasks", handler)])

    async def rpc(request: Request) -> Response:
        reply = await dispatcher.handle(await request.body(), RequestContext(principal=ANONYMOUS, version=2))
        return Response(reply, media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response("ok")

    app = Starlette(routes=[Route("/v2/rpc", rpc, methods=["POST"]), Route("/ready", ready)])
    with served(app, "/ready") as url:
        yield url, handler


def test_list_tasks_walks_every_page_with_the_filters(server: tuple[str, TaskList]) -> None:
    url, handler = server
    with Client(url) as client:
        found = list(client.list_tasks(status=["failed", "cancelled"], tool="echo", limit=3))
    expected = [t for t in TASKS if t.status in ("failed", "cancelled") and t.tool == "echo"]
    assert [t.task_id for t in found] == [t.task_id for t in expected] and len(found) == 14
    assert all(isinstance(t, TaskRecord) for t in found)
    assert len(handler.asked) == 5  # 14 tasks in pages of 3
    assert handler.asked[0] == {"status": ["failed", "cancelled"], "tool": "echo", "limit": 3}
    assert [a.get("cursor") for a in handler.asked] == [None, "3", "6", "9", "12"]


def test_list_tasks_is_lazy_and_reports_bad_filters(server: tuple[str, TaskList]) -> None:
    url, handler = server
    with Client(url) as client:
        first = next(iter(client.list_tasks(limit=2)))
        assert first.task_id == TASKS[0].task_id and len(handler.asked) == 1  # no page fetched before it is needed
        with pytest.raises(InvalidParamsError) as refused:
            list(client.list_tasks(limit=501))
    assert "params.limit" in refused.value.fields


async def test_async_list_tasks_walks_every_page(server: tuple[str, TaskList]) -> None:
    url, handler = server
    async with AsyncClient(url) as client:
        found = [t async for t in client.list_tasks(tenant="acme", status="succeeded", limit=4)]
    assert [t.task_id for t in found] == [t.task_id for t in TASKS if t.tenant == "acme" and t.status == "succeeded"]
    assert handler.asked[0] == {"tenant": "acme", "status": "succeeded", "limit": 4}


def test_tasks_command_maps_its_options_and_fits_80_columns(server: tuple[str, TaskList],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    url, handler = server
    monkeypatch.setattr(cli, "out", Console(width=80, highlight=False, soft_wrap=True))  # an 80-column terminal
    runner = CliRunner()
    shown = runner.invoke(cli.app, ["tasks", "--url", url, "--status", "failed", "--status", "running",
                                    "--tenant", "globex", "--limit", "7"])
    assert shown.exit_code == 0, shown.output
    assert handler.asked[0] == {"status": ["failed", "running"], "tenant": "globex", "limit": 7}
    expected = [t for t in TASKS if t.status in ("failed", "running") and t.tenant == "globex"][:7]
    lines = shown.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    for task in expected:  # every value whole, on the task's own line
        row = next(line for line in lines if task.task_id in line)
        assert row.split()[:4] + row.split()[5:] == [task.task_id, task.status.value, task.tool,
                                                     str(task.priority), task.tenant]
    as_json = runner.invoke(cli.app, ["tasks", "--url", url, "--tool", "deepseek", "--limit", "2", "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert [t["task_id"] for t in json.loads(as_json.output)] == [t.task_id for t in TASKS if t.tool == "deepseek"][:2]
    assert handler.asked[-1] == {"tool": "deepseek", "limit": 2}


def test_tasks_table_renders_within_80_columns() -> None:
    long_tool = TASKS[0].model_copy(update={"tool": "deepseek-reasoner", "tenant": "tenant-with-a-long-name"})
    console = Console(width=80, record=True)
    console.print(cli._tasks_table([long_tool, *TASKS[:3]], now=TASKS[0].created_at + 7200))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    row = next(i for i, line in enumerate(lines) if long_tool.task_id in line)
    assert lines[row].split()[:5] == [long_tool.task_id, "succeeded", "deepseek-reasoner", "7", "2h"]
    folded = "".join(line.split()[-1] for line in lines[row:row + 2])  # the tenant folds, whole over two lines
    assert folded == "tenant-with-a-long-name"
