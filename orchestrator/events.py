"""Following a task's event stream as Server-Sent Events: replay history, then live, until it ends."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from orchestrator.adapters.task_store import TaskStore
from orchestrator.errors import InvalidParamsError
from orchestrator.models import FINISHED

EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
KEEPALIVE = ": keep-alive\n\n"


def check_event_id(last_event_id: str | None) -> str:
    """The stream position to resume after; "0" replays everything."""
    if last_event_id is None or last_event_id == "":
        return "0"
    if not EVENT_ID.match(last_event_id):
        raise InvalidParamsError({"Last-Event-ID": "must be an event id from this stream, like 1700000000000-0"})
    return last_event_id


async def follow(store: TaskStore, task_id: str, after: str, block_ms: int = 15_000) -> AsyncIterator[str]:
    """SSE frames for the task's events after `after`; a comment while idle; ends after the final state.

    The caller checks first that the task exists and is the client's to follow.
    """
    while True:
        events = await store.events(task_id, after, block_ms)
        if not events:
            yield KEEPALIVE
            continue
        for event_id, fields in events:
            yield f"id: {event_id}\nevent: {fields['type']}\ndata: {fields['data']}\n\n"
            after = event_id
            if fields["type"] in FINISHED:
                return
