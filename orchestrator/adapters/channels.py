"""Pub/sub fan-out: one subscription connection per process carries every channel its callers listen on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

logger = logging.getLogger(__name__)


class Channels:
    """Callers `listen(channel)` for messages; channels are (un)subscribed on the one connection as needed.

    Pub/sub is fire-and-forget: a message lost while reconnecting is not replayed, so listeners treat a
    message as a nudge to read the state again, and read it on their own now and then too.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._queues: dict[str, set[asyncio.Queue[str]]] = {}
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def listen(self, channel: str) -> AsyncIterator[asyncio.Queue[str]]:
        """A queue receiving the channel's messages while the context is open (subscribed on entry)."""
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1000)
        async with self._lock:
            first = channel not in self._queues
            self._queues.setdefault(channel, set()).add(queue)
            if first:
                await self._subscribe(channel)
        try:
            yield queue
        finally:
            async with self._lock:
                listeners = self._queues.get(channel)
                if listeners is not None:
                    listeners.discard(queue)
                    if not listeners:
                        del self._queues[channel]
                        with contextlib.suppress(Exception):
                            await self._pubsub.unsubscribe(channel)

    async def _subscribe(self, channel: str) -> None:
        if self._pubsub is None:
            self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(channel)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name="channels")

    async def _read(self) -> None:
        backoff_s = 0.1
        while self._queues:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
                backoff_s = 0.1
            except asyncio.CancelledError:
                raise
            except Exception:  # the connection dropped: redis-py resubscribes on the next read
                logger.warning("subscription lost; reconnecting", exc_info=True)
                await asyncio.sleep(backoff_s)  # backoff before reconnecting, not synchronisation
                backoff_s = min(backoff_s * 2, 5.0)
                continue
            if message is None:
                continue
            for queue in self._queues.get(message["channel"], ()):
                with contextlib.suppress(asyncio.QueueFull):  # a slow listener re-reads the state anyway
                    queue.put_nowait(message["data"])

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
