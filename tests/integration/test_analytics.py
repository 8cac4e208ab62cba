"""`analytics` over a running system: outcomes, latencies and groups of the tasks that ran."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Deployed, deployed, make_settings
from tests.integration.test_spine import finished, result, rpc
from tests.support import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int) -> Iterator[Deployed]:
    with deployed(make_settings(redis_server.url), ray_session) as running:
        yield running


def test_analytics_counts_what_ran(system: Deployed) -> None:
    base = system.base_url
    quick = [result(base, "run_task", {"tool": "echo", "prompt": "q", "agent": "team-a"})["task_id"]
             for _ in range(6)]
    slow = [result(base, "run_task", {"tool": "echo", "prompt": "s", "agent": "team-b",
                                      "context": {"delay_ms": 300}})["task_id"] for _ in range(3)]
    late = result(base, "run_task", {"tool": "echo", "input": {"prompt": "x", "delay_ms": 2000},
                                     "deadline": "2020-01-01T00:00:00Z"}, path="v2/rpc")["task_id"]
    for task_id in [*quick, *slow, late]:
        finished(base, task_id)

    figures = result(base, "analytics", {"window_s": 300})
    overall = figures["overall"]
    assert overall["tasks"] == 10 and overall["succeeded"] == 9 and overall["failed"] == 1
    assert figures["by_tenant"]["team-a"]["tasks"] == 6 and figures["by_tenant"]["team-b"]["tasks"] == 3
    assert figures["by_tenant"]["-"]["failed"] == 1
    assert figures["by_tool"]["echo"]["tasks"] == 10 and figures["by_worker_type"]["reasoning"]["tasks"] == 10
    slow_runs = figures["by_tenant"]["team-b"]["run_ms"]
    assert 200 <= slow_runs["p50"] <= 500  # the 300 ms tasks, in their histogram bucket
    assert figures["by_tenant"]["team-a"]["run_ms"]["p99"] < 200
    assert set(figures["utilisation"]) >= {"reasoning"} and 0 <= figures["utilisation"]["reasoning"] <= 1


def test_analytics_params_are_checked(system: Deployed) -> None:
    reply = rpc(system.base_url, "analytics", {"window_s": 5})
    assert reply["error"]["code"] == -32602 and "params.window_s" in reply["error"]["data"]["fields"]
