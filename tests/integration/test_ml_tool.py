"""ML tools on real Ray: trials run as Ray tasks in other processes, results match scikit-learn, cancel kills them."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from actors.offload import RayOffload
from orchestrator.errors import ToolError
from orchestrator.settings import ToolSettings
from orchestrator.tools.base import ToolCall
from orchestrator.tools.python import MlRuntime, MlTool
from tests.support import RecordingContext, alive, eventually

pytestmark = pytest.mark.integration

HERE = __name__


def whoami(_: int) -> int:
    return os.getpid()


async def pids(tool_input: dict[str, Any], runtime: MlRuntime) -> list[int]:
    return sorted({pid async for _, pid in runtime.map(whoami, range(tool_input["n"]))})


def block(where: tuple[str, int]) -> int:
    """Announce this process, then wait for a release file that never comes (the test cancels us)."""
    directory, index = where
    Path(directory, f"{index}.pid").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not Path(directory, "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the remote work itself: busy until released or killed
    return index


async def blocker(tool_input: dict[str, Any], runtime: MlRuntime) -> None:
    async for _ in runtime.map(block, [(tool_input["dir"], i) for i in range(tool_input["n"])]):
        pass


def explode(tool_input: dict[str, Any]) -> None:
    raise KeyError("missing thing")


def refuse(tool_input: dict[str, Any]) -> None:
    raise ToolError("quota exhausted", retryable=True)


def ml_tool(function: str) -> MlTool:
    return MlTool("ml", ToolSettings(kind="ml", worker_type="ml", function=function), RayOffload())


def call(tool_input: dict[str, Any]) -> ToolCall:
    return ToolCall(task_id="t1", attempt=1, input=tool_input)


async def test_autotune_over_ray_matches_grid_search_cv(ray_session: int) -> None:
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    ctx = RecordingContext()
    tool_input = {"model": "svc", "dataset": "iris", "search": {"C": [0.1, 1.0, 10.0]}, "cv": 3, "seed": 5}
    result = await ml_tool("orchestrator.ml.autotune:autotune").run(call(tool_input), ctx)

    features, labels = load_iris(return_X_y=True)
    direct = GridSearchCV(make_pipeline(StandardScaler(), SVC(random_state=5)), {"svc__C": [0.1, 1.0, 10.0]},
                          cv=StratifiedKFold(3, shuffle=True, random_state=5)).fit(features, labels)
    assert result["best_params"] == {"C": direct.best_params_["svc__C"]}
    assert result["best_score"] == pytest.approx(direct.best_score_, abs=1e-12)
    assert ctx.progress_calls[-1]["trials_done"] == ctx.progress_calls[-1]["trials_total"] == 3


async def test_mapped_work_runs_in_other_processes(ray_session: int) -> None:
    seen = await ml_tool(f"{HERE}:pids").run(call({"n": 4}), RecordingContext())
    assert seen and os.getpid() not in seen


async def test_task_errors_arrive_as_tool_errors_with_the_original_type(ray_session: int) -> None:
    offload = RayOffload()
    with pytest.raises(ToolError) as raised:
        await offload.run(explode, {}, num_cpus=1, num_gpus=0)
    assert str(raised.value) == "KeyError: 'missing thing'" and "Traceback" not in str(raised.value)
    with pytest.raises(ToolError) as passed:
        await offload.run(refuse, {}, num_cpus=1, num_gpus=0)
    assert str(passed.value) == "quota exhausted" and passed.value.tool_retryable is True


async def test_cancelling_the_coordinator_kills_its_ray_tasks(ray_session: int) -> None:
    directory = tempfile.mkdtemp(prefix="orch-ml-")
    running = asyncio.create_task(ml_tool(f"{HERE}:blocker").run(call({"dir": directory, "n": 2}), RecordingContext()))

    async def started() -> bool:
        return all(Path(directory, f"{i}.pid").exists() for i in range(2))

    await eventually(started, 60, "both Ray tasks to start")
    workers = [int(Path(directory, f"{i}.pid").read_text()) for i in range(2)]
    assert os.getpid() not in workers and all(alive(pid) for pid in workers)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running

    async def gone() -> bool:
        return not any(alive(pid) for pid in workers)

    await eventually(gone, 30, "the cancelled tasks' worker processes to be killed")
