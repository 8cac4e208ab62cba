"""Following a task's events: its history (kept in its record), then live, until it ends — as Server-Sent Events
or as MCP progress."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

from orchestrator.adapters.channels import Channels
from orchestrator.adapters.task_store import TaskStore
from orchestrator.codec import FINAL_TYPES, Event
from orchestrator.errors import InvalidParamsError

EVENT_ID = re.compile(r"^\d{1,10}$")
KEEPALIVE = ": keep-alive\n\n"
REREAD_S = 15.0  # with no news, the history is read again (and a keep-alive sent) this often


def check_event_id(last_event_id: str | None) -> int:
    """The event number to resume after; 0 replays everything."""
    if last_event_id is None or last_event_id == "":
        return 0
    if not EVENT_ID.match(last_event_id):
        raise InvalidParamsError({"Last-Event-ID": "must be an event id from this stream, like 7"})
    return int(last_event_id)


async def follow(store: TaskStore, channels: Channels, task_id: str, after: int, reread_s: float = REREAD_S,
                 for_s: float | None = None) -> AsyncIterator[Event | None]:
    """The task's events after event number `after`, then each new one as it happens; None while nothing
    happens for `reread_s`; ends after the final event, or after `for_s` seconds (the client resumes). The
    caller checks first that the task exists and is the client's to follow."""
    loop = asyncio.get_running_loop()
    ends = None if for_s is None else loop.time() + for_s
    async with channels.listen(store.keys.task_channel(task_id)) as nudges:
        while ends is None or loop.time() < ends:  # subscribed before reading: no event falls in between
            news = [event for event in await store.history(task_id) if event.seq > after]
            for event in news:
                yield event
                after = event.seq
                if event.type in FINAL_TYPES:
                    return
            if not news:
                try:
                    async with asyncio.timeout(reread_s if ends is None else min(reread_s, ends - loop.time())):
                        await nudges.get()
                except TimeoutError:
                    yield None
                    continue
            with contextlib.suppress(asyncio.QueueEmpty):  # one read covers every nudge that came meanwhile
                while True:
                    nudges.get_nowait()


def sse_frame(event: Event | None) -> str:
    if event is None:
        return KEEPALIVE
    return f"id: {event.seq}\nevent: {event.type}\ndata: {event.data}\n\n"
