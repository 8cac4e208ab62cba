"""Listings newest first: their order, the opaque cursor, and merging the pages shards answer into one.

A listing's order is (created ms, id), both descending; it never changes for a task, so a cursor (the position of
the last row given) is stable while tasks arrive (they sort before it) or change status. A shard examines a
bounded number of candidates per call and says how far down it got (its floor); the merged page holds only rows
at or above the highest floor, so no shard's unexamined rows are skipped, and the next page starts there.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from orchestrator.errors import InvalidParamsError

Position = tuple[int, str]  # (created ms, id)
END_MS = 10**15  # a creation time no task has (the year 33658): "no upper bound"
Row = TypeVar("Row")
_VERSION = "1"
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # task ids (`3-kQ2…`, legacy hex) and saga ids (hex)
_BAD_CURSOR = "not a cursor of this listing: pass `next_cursor` of the previous page unchanged"


@dataclass(frozen=True, slots=True)
class ShardPage(Generic[Row]):
    """What one shard answered: rows newest first, and the last position it examined (None: it has nothing
    older left in the range)."""

    rows: Sequence[tuple[Position, Row]]
    floor: Position | None


def encode_cursor(position: Position) -> str:
    ms, item_id = position
    return base64.urlsafe_b64encode(f"{_VERSION}:{ms}:{item_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The position a cursor names; InvalidParamsError naming `params.cursor` when it is none of ours."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, ms, item_id = text.split(":", 2)
        if version != _VERSION or not ms.isdigit() or not _ID.fullmatch(item_id):
            raise ValueError(text)
        return int(ms), item_id
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidParamsError({"params.cursor": _BAD_CURSOR}) from None


def merge(pages: Sequence[ShardPage[Row]], limit: int) -> tuple[list[Row], Position | None]:
    """One page of at most `limit` rows from the shards' pages, and where the next one starts (None: done)."""
    floors = [page.floor for page in pages if page.floor is not None]
    bound = max(floors) if floors else None
    rows = sorted((row for page in pages for row in page.rows if bound is None or row[0] >= bound),
                  key=lambda row: row[0], reverse=True)
    if len(rows) > limit:
        return [row for _, row in rows[:limit]], rows[limit - 1][0]
    return [row for _, row in rows], bound


def page_of(rows: Sequence[tuple[Position, Row]], after: Position | None, limit: int) -> tuple[list[Row],
                                                                                             Position | None]:
    """A page of rows already at hand (a parent's children, a saga's tasks), after the cursor's position."""
    return merge([ShardPage([row for row in rows if after is None or row[0] < after], None)], limit)
