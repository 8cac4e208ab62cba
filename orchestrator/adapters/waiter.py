"""Wait for tasks to finish: one pub/sub subscription per process fans out to every waiting caller."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

logger = logging.getLogger(__name__)

# Pub/sub is fire-and-forget: a message lost while reconnecting must not strand a waiter, so
# waiters also re-check the record at this interval.
RECHECK_INTERVAL_S = 1.0


class CompletionWaiter:
    def __init__(self, client: aioredis.Redis, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def wait(self, task_id: str, timeout_s: float, finished: Callable[[], Awaitable[bool]]) -> bool:
        """True once `finished()` holds for the task, False if `timeout_s` passes first."""
        self._ensure_listener()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.setdefault(task_id, set()).add(future)
        try:
            with contextlib.suppress(TimeoutError):  # subscribe before the first check, so no finish slips by
                await asyncio.wait_for(self._subscribed.wait(), timeout=min(timeout_s, RECHECK_INTERVAL_S))
            while True:
                if await finished():
                    return True
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(future), timeout=min(remaining, RECHECK_INTERVAL_S))
        finally:
            waiters = self._waiters.get(task_id)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[task_id]

    def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="completion-waiter")

    async def _listen(self) -> None:
        backoff_s = 0.1
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self._subscribed.set()
                backoff_s = 0.1
                async for message in pubsub.listen():
                    for future in self._waiters.get(message["data"], ()):
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
