"""Wait for tasks to finish: one pub/sub subscription per process fans out to every waiting caller."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

import redis.asyncio as aioredis

logger = logging.getLogger(__name__)

# Pub/sub is fire-and-forget: a message lost while reconnecting must not strand a waiter, so
# waiters also re-check the record at this interval.
RECHECK_INTERVAL_S = 1.0


class Watch:
    """Interest in one task's completion, registered before the task can finish (e.g. before submit)."""

    def __init__(self, waiter: CompletionWaiter, task_id: str) -> None:
        self._waiter, self.task_id = waiter, task_id
        self._future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Before the subscription is live, an announcement could be missed: check the record first.
        self._live = waiter.subscribed
        waiter.register(task_id, self._future)

    async def wait(self, timeout_s: float, finished: Callable[[], Awaitable[bool]], *, check_first: bool) -> bool:
        """True once `finished()` holds, False if `timeout_s` passes first.

        Args:
            check_first: read the record before waiting; needless right after submitting a new task.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if (check_first or not self._live) and await finished():
            return True
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._future), timeout=min(remaining, RECHECK_INTERVAL_S))
            if await finished():
                return True

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self._waiter.unregister(self.task_id, self._future)


class CompletionWaiter:
    def __init__(self, client: aioredis.Redis, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    def watch(self, task_id: str) -> Watch:
        """Start watching a task; use as a context manager so the registration is always removed."""
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="completion-waiter")
        return Watch(self, task_id)

    def register(self, task_id: str, future: asyncio.Future[None]) -> None:
        self._waiters.setdefault(task_id, set()).add(future)

    def unregister(self, task_id: str, future: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(task_id)
        if waiters is not None:
            waiters.discard(future)
            if not waiters:
                del self._waiters[task_id]

    async def _listen(self) -> None:
        backoff_s = 0.1
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self._subscribed.set()
                backoff_s = 0.1
                async for message in pubsub.listen():
                    for task_id in message["data"].split():  # the ids one script finished
                        for future in self._waiters.get(task_id, ()):
                            if not future.done():
                                future.set_result(None)
            except asyncio.CancelledError:
                raise
            except Exception:
                self._subscribed.clear()
                logger.warning("completion subscription lost; reconnecting", exc_info=True)
                await asyncio.sleep(backoff_s)  # backoff before reconnecting, not synchronisation
                backoff_s = min(backoff_s * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
