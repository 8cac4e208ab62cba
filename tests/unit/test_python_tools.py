"""The python and ml tool kinds and the autotune tool, without Ray: functions run in threads (LocalOffload)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

import jsonschema
import pytest

from orchestrator.errors import ToolError
from orchestrator.ml import autotune as autotune_module
from orchestrator.ml.autotune import autotune
from orchestrator.settings import ToolSettings
from orchestrator.tools.base import ToolCall
from orchestrator.tools.python import (
    LocalOffload,
    MlRuntime,
    MlTool,
    PythonTool,
    function_schema,
    load_function,
    published_schema,
)
from tests.support import RecordingContext, eventually

HERE = __name__  # functions below are tool functions, referenced as f"{HERE}:name"


# ---------------------------------------------------------------- tool functions used by the tests


def double(tool_input: dict[str, Any]) -> dict[str, Any]:
    return {"value": tool_input["x"] * 2, "thread": threading.get_ident()}


double.input_schema = {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}  # type: ignore[attr-defined]


async def async_double(tool_input: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"value": tool_input["x"] * 2}


def explode(tool_input: dict[str, Any]) -> None:
    raise KeyError("missing thing")


def refuse(tool_input: dict[str, Any]) -> None:
    raise ToolError("quota exhausted", retryable=True)


def square(x: int) -> int:
    return x * x


RELEASE = threading.Event()
RUNNING = threading.Event()


def held(tool_input: dict[str, Any]) -> str:
    RUNNING.set()
    RELEASE.wait(30)  # until the test lets it finish
    return "done"


def seen_input(tool_input: dict[str, Any]) -> dict[str, Any]:
    return {"got": tool_input}


NOT_CALLABLE = 42


async def squares(tool_input: dict[str, Any], runtime: MlRuntime) -> dict[str, Any]:
    """A coordinator: squares of range(n), resumable, with the given max_parallel."""
    done: dict[int, int] = {int(k): v for k, v in (runtime.previous_checkpoint or {}).get("done", {}).items()}
    todo = [i for i in range(tool_input["n"]) if i not in done]
    async for k, value in runtime.map(square, todo, max_parallel=tool_input.get("max_parallel")):
        done[todo[k]] = value
        await runtime.checkpoint({"done": {str(i): v for i, v in done.items()}}, {"done": len(done)})
    return {"squares": [done[i] for i in range(tool_input["n"])]}


# ---------------------------------------------------------------- helpers


class RecordingOffload(LocalOffload):
    """LocalOffload that remembers each call's function, argument and resources."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...], float, float]] = []

    async def run(self, fn: Callable[..., Any], *args: Any, num_cpus: float, num_gpus: float) -> Any:
        self.calls.append((fn, args, num_cpus, num_gpus))
        return await super().run(fn, *args, num_cpus=num_cpus, num_gpus=num_gpus)


class GatedOffload(LocalOffload):
    """LocalOffload whose calls each wait for a release token; counts how many are in flight at once."""

    def __init__(self) -> None:
        self.active = self.peak = self.cancelled = 0
        self.gate = asyncio.Semaphore(0)

    async def run(self, fn: Callable[..., Any], *args: Any, num_cpus: float, num_gpus: float) -> Any:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await self.gate.acquire()
            return await super().run(fn, *args, num_cpus=num_cpus, num_gpus=num_gpus)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1


async def in_flight(offload: GatedOffload, count: int) -> bool:
    return offload.active == count


def settings(function: str, kind: str = "python", **extra: Any) -> ToolSettings:
    return ToolSettings(kind=kind, worker_type="ml" if kind == "ml" else "reasoning", function=function, **extra)


def call(tool_input: Mapping[str, Any], checkpoint: Mapping[str, Any] | None = None) -> ToolCall:
    return ToolCall(task_id="t1", attempt=1, input=tool_input, checkpoint=checkpoint)


def ml_tool(function: str, offload: LocalOffload | None = None, **extra: Any) -> MlTool:
    return MlTool("ml", settings(function, "ml", **extra), offload or LocalOffload())


AUTOTUNE = "orchestrator.ml.autotune:autotune"


# ---------------------------------------------------------------- loading functions


def test_load_function_imports_module_attribute() -> None:
    assert load_function(f"{HERE}:square") is square
    assert load_function("orchestrator.ml.autotune:autotune") is autotune


@pytest.mark.parametrize(("ref", "why"), [
    ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
    (f"{HERE}:missing", "has no attribute 'missing'"),
    (f"{HERE}:NOT_CALLABLE", "is not callable"),
    ("no_colon", "is not of the form"),
])
def test_load_function_names_the_ref_it_cannot_load(ref: str, why: str) -> None:
    with pytest.raises(ValueError) as raised:
        load_function(ref)
    assert f"function {ref!r}" in str(raised.value) and why in str(raised.value)


def test_schema_is_the_settings_one_else_the_functions_else_any_object() -> None:
    assert function_schema(double) == double.input_schema  # type: ignore[attr-defined]
    assert function_schema(square) == {"type": "object"}
    assert published_schema(settings(f"{HERE}:double")) == double.input_schema  # type: ignore[attr-defined]
    given = {"type": "object", "properties": {"x": {"type": "integer"}}}
    assert published_schema(settings(f"{HERE}:double", input_schema=given)) == given
    assert PythonTool("p", settings(f"{HERE}:square")).schema == {"type": "object"}


def test_importing_autotune_does_not_import_sklearn() -> None:
    code = ("import sys, orchestrator.ml.autotune as a, orchestrator.tools.python; "
            "assert a.autotune.input_schema['required'] == ['model', 'dataset']; "
            "assert 'sklearn' not in sys.modules and 'ray' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- python tools


async def test_python_tool_runs_a_sync_function_in_a_thread() -> None:
    result = await PythonTool("p", settings(f"{HERE}:double")).run(call({"x": 21}), RecordingContext())
    assert result["value"] == 42
    assert result["thread"] != threading.get_ident()  # the worker's event loop thread stays free


async def test_python_tool_awaits_an_async_function() -> None:
    assert await PythonTool("p", settings(f"{HERE}:async_double")).run(call({"x": 2}), RecordingContext()) == {
        "value": 4}


async def test_python_tool_reports_an_exception_by_type_and_message() -> None:
    with pytest.raises(ToolError) as raised:
        await PythonTool("p", settings(f"{HERE}:explode")).run(call({}), RecordingContext())
    assert str(raised.value) == "KeyError: 'missing thing'"
    assert raised.value.tool_retryable is False and "Traceback" not in str(raised.value)


async def test_python_tool_passes_a_tool_error_through() -> None:
    with pytest.raises(ToolError) as raised:
        await PythonTool("p", settings(f"{HERE}:refuse")).run(call({}), RecordingContext())
    assert str(raised.value) == "quota exhausted" and raised.value.tool_retryable is True


# ---------------------------------------------------------------- ml tools


async def test_ml_tool_offloads_a_plain_function_once_with_its_resources() -> None:
    offload = RecordingOffload()
    tool = ml_tool(f"{HERE}:seen_input", offload, num_cpus=2.0, num_gpus=0.5)
    assert tool.resumable
    assert await tool.run(call({"a": 1}), RecordingContext()) == {"got": {"a": 1}}
    assert offload.calls == [(seen_input, ({"a": 1},), 2.0, 0.5)]


async def test_ml_tool_reports_an_offloaded_exception_by_type_and_message() -> None:
    with pytest.raises(ToolError, match=r"^KeyError: 'missing thing'$"):
        await ml_tool(f"{HERE}:explode").run(call({}), RecordingContext())


async def test_map_yields_every_item_once_with_its_index() -> None:
    offload = RecordingOffload()
    ctx = RecordingContext()
    result = await ml_tool(f"{HERE}:squares", offload).run(call({"n": 7}), ctx)
    assert result == {"squares": [i * i for i in range(7)]}
    assert sorted(args[0] for _, args, _, _ in offload.calls) == list(range(7))
    assert ctx.checkpoints[-1] == {"done": {str(i): i * i for i in range(7)}}
    assert ctx.progress_calls[-1] == {"done": 7}


@pytest.mark.parametrize("max_parallel", [1, 2])
async def test_map_runs_at_most_max_parallel_at_once(max_parallel: int) -> None:
    offload = GatedOffload()
    running = asyncio.create_task(ml_tool(f"{HERE}:squares", offload).run(
        call({"n": 6, "max_parallel": max_parallel}), RecordingContext()))
    await eventually(lambda: in_flight(offload, max_parallel), 5, "the first calls to start")
    for _ in range(6):
        offload.gate.release()
    assert await running == {"squares": [i * i for i in range(6)]}
    assert offload.peak == max_parallel


async def test_cancelling_the_coordinator_cancels_the_offloaded_calls() -> None:
    offload = GatedOffload()
    running = asyncio.create_task(ml_tool(f"{HERE}:squares", offload).run(call({"n": 3}), RecordingContext()))
    await eventually(lambda: in_flight(offload, 3), 5, "all calls to start")
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert offload.cancelled == 3 and offload.active == 0


async def test_a_resumed_coordinator_skips_checkpointed_items() -> None:
    offload = RecordingOffload()
    checkpoint = {"done": {"0": 0, "1": 1, "4": 16}}
    result = await ml_tool(f"{HERE}:squares", offload).run(call({"n": 5}, checkpoint), RecordingContext())
    assert result == {"squares": [0, 1, 4, 9, 16]}
    assert sorted(args[0] for _, args, _, _ in offload.calls) == [2, 3]


# ---------------------------------------------------------------- autotune


def grid_search(model: str, dataset: str, grid: dict[str, list[Any]], cv: int, seed: int) -> Any:
    """The same search done directly with scikit-learn's GridSearchCV."""
    from sklearn import datasets
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    if model == "svc":
        estimator, prefix = make_pipeline(StandardScaler(), SVC(random_state=seed)), "svc__"
    else:
        estimator, prefix = RandomForestClassifier(random_state=seed), ""
    features, labels = getattr(datasets, f"load_{dataset}")(return_X_y=True)
    search = GridSearchCV(estimator, {prefix + k: v for k, v in grid.items()},
                          cv=StratifiedKFold(cv, shuffle=True, random_state=seed), scoring="accuracy")
    return search.fit(features, labels)


@pytest.mark.parametrize(("model", "grid"), [
    ("svc", {"C": [0.1, 1.0, 10.0], "gamma": ["scale", 0.01]}),
    ("random_forest", {"n_estimators": [5, 15], "max_depth": [2, None]}),
])
async def test_autotune_matches_grid_search_cv(model: str, grid: dict[str, list[Any]]) -> None:
    offload = RecordingOffload()
    ctx = RecordingContext()
    tool_input = {"model": model, "dataset": "iris", "search": grid, "cv": 3, "seed": 7}
    result = await ml_tool(AUTOTUNE, offload).run(call(tool_input), ctx)
    direct = grid_search(model, "iris", grid, 3, 7)
    prefix = "svc__" if model == "svc" else ""
    assert result["best_params"] == {k.removeprefix(prefix): v for k, v in direct.best_params_.items()}
    assert result["best_score"] == pytest.approx(direct.best_score_, abs=1e-12)
    direct_scores = sorted(direct.cv_results_["mean_test_score"], reverse=True)
    assert [t["score"] for t in result["trials"]] == pytest.approx(direct_scores, abs=1e-12)
    assert (result["model"], result["dataset"], result["cv"]) == (model, "iris", 3)
    trials = 6 if model == "svc" else 4
    assert sum(1 for fn, *_ in offload.calls if fn is autotune_module.score_trial) == trials  # one task per trial
    assert ctx.progress_calls[-1] == {"trials_done": trials, "trials_total": trials,
                                      "best_score": result["best_score"]}
    assert len(ctx.checkpoints) == trials and len(ctx.checkpoints[-1]["scores"]) == trials


async def test_autotune_is_deterministic_given_the_seed() -> None:
    tool_input = {"model": "random_forest", "dataset": "wine", "search": {"n_estimators": [5, 10]}, "cv": 3,
                  "seed": 3}
    first = await ml_tool(AUTOTUNE).run(call(tool_input), RecordingContext())
    second = await ml_tool(AUTOTUNE).run(call(tool_input), RecordingContext())
    assert first == second


async def test_autotune_resumes_without_redoing_finished_trials() -> None:
    offload = RecordingOffload()
    grid = {"C": [0.1, 1.0, 10.0]}
    # An earlier attempt finished trials 0 and 2; its (made-up) score for trial 2 must be kept, not recomputed.
    checkpoint = {"trials_total": 3, "scores": [[0, 0.5], [2, 0.999]]}
    result = await ml_tool(AUTOTUNE, offload).run(
        call({"model": "svc", "dataset": "iris", "search": grid, "cv": 3}, checkpoint), RecordingContext())
    scored = [args[0].params for fn, args, *_ in offload.calls if fn is autotune_module.score_trial]
    assert scored == [{"C": 1.0}]
    assert result["best_params"] == {"C": 10.0} and result["best_score"] == 0.999
    assert [t["params"] for t in result["trials"]][-1] == {"C": 0.1}  # the checkpointed 0.5 is last


@pytest.mark.parametrize(("tool_input", "message"), [
    ({"model": "svc", "dataset": "iris", "search": {"bogus": [1]}}, "search.bogus: not a parameter of svc"),
    ({"model": "svc", "dataset": "iris", "search": {"C": [-1.0]}}, "search.C: The 'C' parameter of SVC must be"),
    ({"model": "svc", "dataset": "iris", "search": {"C": list(range(1, 17)), "gamma": list(range(1, 18))}},
     "search: 272 trials (the product of the value counts) exceed the limit of 256"),
    ({"model": "svc", "dataset": "iris", "search": {"random_state": [1]}}, "search.random_state: set by `seed`"),
    ({"model": "svc", "dataset": "mnist"}, "dataset: 'mnist' is not one of iris, wine, breast_cancer, digits"),
    ({"model": "xgboost", "dataset": "iris"}, "model: 'xgboost' is not one of"),
    ({"model": "svc", "dataset": "iris", "cv": 1}, "cv: must be an integer from 2 to 10"),
    ({"model": "svc", "dataset": "iris", "scoring": "r2"}, "scoring: 'r2' is not one of"),
    ({"model": "svc", "dataset": "iris", "extra": 1}, "extra: unknown field"),
    ({"model": "svc", "dataset": "iris", "search": {"kernel": ["precomputed"]}},
     "trial {'kernel': 'precomputed'}: ValueError:"),
])
async def test_autotune_names_the_field_at_fault(tool_input: dict[str, Any], message: str) -> None:
    with pytest.raises(ToolError) as raised:
        await ml_tool(AUTOTUNE).run(call(tool_input), RecordingContext())
    assert str(raised.value).startswith(message), str(raised.value)
    assert "Traceback" not in str(raised.value)


def test_autotune_input_schema_is_valid_draft_2020_12() -> None:
    schema = autotune.input_schema  # type: ignore[attr-defined]
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"model": "svc", "dataset": "iris", "search": {"C": [0.1, 1]}, "cv": 3,
                               "scoring": "f1_macro", "seed": 1})
    assert not validator.is_valid({"model": "svc", "dataset": "iris", "extra": 1})
    assert not validator.is_valid({"model": "svc", "dataset": "mnist"})
    assert not validator.is_valid({"model": "svc", "dataset": "iris", "search": {"C": []}})
    assert not validator.is_valid({"model": "svc"})


async def test_a_sync_function_is_never_preempted_and_a_cancel_waits_for_its_thread() -> None:
    """A thread cannot be stopped: its attempt ends when it does, so no retry ever runs beside it."""
    tool = PythonTool("held", settings(f"{HERE}:held"))
    assert tool.preemptible is False and PythonTool("a", settings(f"{HERE}:async_double")).preemptible is True
    RUNNING.clear()
    RELEASE.clear()
    run = asyncio.create_task(tool.run(call({}), RecordingContext()))
    await asyncio.to_thread(RUNNING.wait, 10)
    run.cancel()
    await asyncio.sleep(0.05)  # a cancel that did not wait would have ended the task by now
    assert not run.done()
    RELEASE.set()
    with pytest.raises(asyncio.CancelledError):
        await run
