"""RayOffload: runs an ML tool's functions as Ray tasks with the resources they ask for."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import ray
from ray.exceptions import RayError, RayTaskError

from orchestrator.errors import ToolError
from orchestrator.tools.python import tool_error

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RayOffload:
    """The `Offload` of a Ray cluster: one task per call, placed by Ray on any node with the resources."""

    def __init__(self) -> None:
        # One remote wrapper per (function, resources): Ray exports a function once per wrapper.
        self._remotes: dict[tuple[Callable[..., Any], float, float], Any] = {}

    def _remote(self, fn: Callable[..., Any], num_cpus: float, num_gpus: float) -> Any:
        key = (fn, num_cpus, num_gpus)
        remote = self._remotes.get(key)
        if remote is None:
            remote = self._remotes[key] = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(fn)
        return remote

    async def run(self, fn: Callable[..., T], *args: Any, num_cpus: float, num_gpus: float) -> T:
        """Run `fn(*args)` as a Ray task and await it; cancelling the caller kills the task."""
        ref = self._remote(fn, num_cpus, num_gpus).remote(*args)
        try:
            return await ref  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            ray.cancel(ref, force=True)  # force: a running trial is CPU-bound Python, it never checks for it
            raise
        except RayTaskError as exc:  # fn raised: report its own error, not Ray's wrapper and traceback
            raise tool_error(exc.cause if isinstance(exc.cause, BaseException) else exc) from None
        except RayError as exc:  # the task's worker died, ran out of memory, its node left
            logger.warning("offloaded task lost", extra={"function": getattr(fn, "__name__", "?"),
                                                         "error": type(exc).__name__})
            raise ToolError(f"ml task lost ({type(exc).__name__}); retry the task", retryable=True) from None
