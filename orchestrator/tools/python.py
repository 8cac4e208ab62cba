"""The `python` and `ml` tool kinds: a configured Python function as a tool, and ML work fanned out as tasks.

A `python` tool runs `fn(tool_input)` in the worker (a sync function in a thread, so the worker's event
loop never blocks). An `ml` tool runs its function elsewhere through an `Offload` (Ray tasks in production,
see `actors/offload.py`): a plain function as one offloaded task, or an `async def fn(tool_input, runtime)`
coordinator that fans work out with `MlRuntime.map` and checkpoints what is finished.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar, Protocol, TypeVar, cast

from orchestrator.errors import OrchestratorError, ToolError
from orchestrator.settings import ToolSettings
from orchestrator.tools.base import JsonValue, Tool, ToolCall, ToolContext

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_SCHEMA: Mapping[str, JsonValue] = {"type": "object"}
_ERROR_MESSAGE_CHARS = 300


def load_function(ref: str) -> Callable[..., Any]:
    """Import `package.module:attr` (attr may be dotted) and return it; ValueError naming `ref` if impossible."""
    module_name, sep, attr_path = ref.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"function {ref!r} is not of the form 'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module failing while it imports
        raise ValueError(f"function {ref!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"function {ref!r}: {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(target):
        raise ValueError(f"function {ref!r} is not callable (it is a {type(target).__name__})")
    return cast(Callable[..., Any], target)


def function_schema(fn: Callable[..., Any]) -> Mapping[str, JsonValue]:
    """The input schema a function declares in its `input_schema` attribute, else any object."""
    schema = getattr(fn, "input_schema", None)
    return cast(Mapping[str, JsonValue], schema) if isinstance(schema, Mapping) else DEFAULT_SCHEMA


def published_schema(settings: ToolSettings) -> Mapping[str, JsonValue]:
    """A python or ml tool's input schema: the configured one, else the function's own."""
    if settings.input_schema is not None:
        return settings.input_schema
    if settings.function is None:
        return DEFAULT_SCHEMA
    return function_schema(load_function(settings.function))


def tool_error(exc: BaseException) -> ToolError:
    """The readable error for a tool function's exception: its type and message, no traceback."""
    if isinstance(exc, ToolError):
        return exc
    message = str(exc)
    if len(message) > _ERROR_MESSAGE_CHARS:
        message = message[: _ERROR_MESSAGE_CHARS - 1] + "…"
    return ToolError(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)


class Offload(Protocol):
    """Runs a picklable function somewhere else (another process, another node) and awaits its result.

    Cancelling the awaiting task cancels the remote work. A failure of `fn` raises `ToolError` with its
    type and message (a `ToolError` raised by `fn` itself arrives unchanged).
    """

    async def run(self, fn: Callable[..., T], *args: Any, num_cpus: float, num_gpus: float) -> T: ...


class LocalOffload:
    """Runs the function in a thread of this process: for tests and Ray-less use.

    Resources are ignored, and a cancelled call stops being awaited but its thread runs to the end.
    """

    async def run(self, fn: Callable[..., T], *args: Any, num_cpus: float, num_gpus: float) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except Exception as exc:
            raise tool_error(exc) from None


def takes_context(fn: Callable[..., Any]) -> bool:
    """Whether a tool function takes the task's context (`async def fn(tool_input, ctx)`) beside its input."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2


class PythonTool(Tool):
    """Calls the configured function with the validated tool input (a dict); returns what it returns. An async
    function taking a second argument gets the task's context: `ctx.progress`, `ctx.checkpoint`, `ctx.ask`."""

    kind: ClassVar[str] = "python"
    input_schema: ClassVar[Mapping[str, JsonValue]] = DEFAULT_SCHEMA  # per tool: `published_schema(settings)`

    def __init__(self, name: str, settings: ToolSettings) -> None:
        super().__init__(name)
        if settings.function is None:
            raise ValueError(f"python tool {name!r} needs function ('package.module:function')")
        self._fn = load_function(settings.function)
        self.schema = settings.input_schema or function_schema(self._fn)
        # A thread cannot be stopped: a sync function is never preempted, and a cancel waits for it to return
        # (so no retry ever runs beside it).
        self.preemptible = inspect.iscoroutinefunction(self._fn)
        self._with_context = self.preemptible and takes_context(self._fn)

    async def run(self, call: ToolCall, ctx: ToolContext) -> JsonValue:
        """Await an async function; run a sync one in a thread, to its end even when the task is cancelled."""
        tool_input = dict(call.input)
        try:
            if self._with_context:
                return await self._fn(tool_input, ctx)
            if self.preemptible:
                return await self._fn(tool_input)
            running = asyncio.get_running_loop().run_in_executor(None, self._fn, tool_input)
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                await asyncio.wait([running])  # the attempt ends when the thread does
                raise
        except OrchestratorError:
            raise  # ToolError from the function, or the task store failing: the worker handles it
        except Exception as exc:
            raise tool_error(exc) from None


class MlRuntime:
    """What an ML coordinator function gets: fan-out over an `Offload`, progress, checkpoints.

    Args:
        previous_checkpoint: the state an earlier attempt saved with `checkpoint`; skip that work.
    """

    def __init__(self, offload: Offload, ctx: ToolContext, previous_checkpoint: Mapping[str, JsonValue] | None,
                 num_cpus: float, num_gpus: float) -> None:
        self._offload, self._ctx = offload, ctx
        self.previous_checkpoint = previous_checkpoint
        self.num_cpus, self.num_gpus = num_cpus, num_gpus

    async def run(self, fn: Callable[..., R], *args: Any, num_cpus: float | None = None,
                  num_gpus: float | None = None) -> R:
        """Run `fn(*args)` as one offloaded task (resources default to the tool's)."""
        return await self._offload.run(fn, *args, num_cpus=self.num_cpus if num_cpus is None else num_cpus,
                                       num_gpus=self.num_gpus if num_gpus is None else num_gpus)

    async def map(self, fn: Callable[[T], R], items: Iterable[T], *, num_cpus: float | None = None,
                  num_gpus: float | None = None, max_parallel: int | None = None) -> AsyncIterator[tuple[int, R]]:
        """Run `fn(item)` as one offloaded task per item; yield `(index, result)` as each completes.

        At most `max_parallel` run at once (default: all; the cluster queues what it cannot place).
        The first failure, or cancelling the consumer, cancels the tasks still running. Use it in an
        `async for`; a consumer that stops early should wrap it in `contextlib.aclosing`.
        """
        if max_parallel is not None and max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
        pending = list(enumerate(items))
        pending.reverse()  # pop() from the end keeps index order
        limit = max_parallel or max(1, len(pending))
        running: dict[asyncio.Task[R], int] = {}
        try:
            while pending or running:
                while pending and len(running) < limit:
                    index, item = pending.pop()
                    task = asyncio.create_task(self.run(fn, item, num_cpus=num_cpus, num_gpus=num_gpus))
                    running[task] = index
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=running.__getitem__):
                    index = running.pop(task)
                    yield index, task.result()  # raises the task's error
        finally:
            for task in running:
                task.cancel()
            if running:  # let each offload cancel its remote work before we return
                await asyncio.gather(*running, return_exceptions=True)

    async def progress(self, data: Mapping[str, JsonValue]) -> None:
        """Report progress (shown in the task record)."""
        await self._ctx.progress(data)

    async def checkpoint(self, state: Mapping[str, JsonValue], progress: Mapping[str, JsonValue] | None = None) -> None:
        """Save resumable state (and progress in the same write); a new attempt gets it as `previous_checkpoint`."""
        await self._ctx.checkpoint(state, progress)


Coordinator = Callable[[dict[str, JsonValue], MlRuntime], Awaitable[JsonValue]]


class MlTool(Tool):
    """Runs an ML function off the worker: a plain function as one task, an async one as a coordinator."""

    kind: ClassVar[str] = "ml"
    resumable: ClassVar[bool] = True
    input_schema: ClassVar[Mapping[str, JsonValue]] = DEFAULT_SCHEMA  # per tool: `published_schema(settings)`

    def __init__(self, name: str, settings: ToolSettings, offload: Offload) -> None:
        super().__init__(name)
        if settings.function is None:
            raise ValueError(f"ml tool {name!r} needs function ('package.module:function')")
        self._fn = load_function(settings.function)
        self._coordinates = inspect.iscoroutinefunction(self._fn)
        self._offload = offload
        self._num_cpus, self._num_gpus = settings.num_cpus, settings.num_gpus
        self.schema = settings.input_schema or function_schema(self._fn)

    async def run(self, call: ToolCall, ctx: ToolContext) -> JsonValue:
        """Offload the function, or run the coordinator here with a runtime resuming from the checkpoint."""
        tool_input = dict(call.input)
        try:
            if self._coordinates:
                runtime = MlRuntime(self._offload, ctx, call.checkpoint, self._num_cpus, self._num_gpus)
                return await cast(Coordinator, self._fn)(tool_input, runtime)
            return await self._offload.run(self._fn, tool_input, num_cpus=self._num_cpus, num_gpus=self._num_gpus)
        except OrchestratorError:
            raise  # ToolError from the function, or the task store failing: the worker handles it
        except Exception as exc:
            raise tool_error(exc) from None
