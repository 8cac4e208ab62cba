"""Listing pages: the cursor names a position and nothing else is accepted; merged shard pages skip no row a
shard has not examined and repeat none."""

from __future__ import annotations

import pytest

from orchestrator.auth import Principal
from orchestrator.errors import InvalidParamsError
from orchestrator.finder import tenants_of
from orchestrator.listing import ShardPage, decode_cursor, encode_cursor, merge, page_of


def test_a_cursor_names_its_position() -> None:
    assert decode_cursor(encode_cursor((1765000000123, "2-abc_DEF"))) == (1765000000123, "2-abc_DEF")


@pytest.mark.parametrize("cursor", ["x", "!!!!", encode_cursor((1, "a")) + "A", "MjoxOmE", "MTp4OmE", "MToxOg"])
def test_anything_else_is_refused_naming_the_cursor(cursor: str) -> None:
    with pytest.raises(InvalidParamsError) as refused:
        decode_cursor(cursor)
    assert list(refused.value.fields) == ["params.cursor"]


def rows(*positions: tuple[int, str]) -> list[tuple[tuple[int, str], str]]:
    return [(p, p[1]) for p in positions]


def test_a_page_stops_at_the_highest_floor_of_the_shards_not_done() -> None:
    # shard a examined down to (50, a); shard b is done; shard c examined down to (70, c) and found nothing
    pages = [ShardPage(rows((90, "a1"), (60, "a2"), (50, "a3")), (50, "a3")),
             ShardPage(rows((80, "b1"), (40, "b2")), None),
             ShardPage([], (70, "c"))]
    got, position = merge(pages, limit=10)
    assert got == ["a1", "b1"] and position == (70, "c")  # a2, a3 and b2 come on a later page, after (70, c)


def test_a_full_page_continues_after_its_last_row() -> None:
    pages = [ShardPage(rows((90, "a"), (80, "c")), (80, "c")), ShardPage(rows((80, "d"), (10, "b")), None)]
    got, position = merge(pages, limit=2)
    assert got == ["a", "d"] and position == (80, "d")


def test_the_last_page_has_no_cursor() -> None:
    assert merge([ShardPage(rows((3, "x")), None), ShardPage([], None)], limit=5) == (["x"], None)
    assert page_of(rows((3, "x"), (2, "y"), (1, "z")), after=(2, "y"), limit=5) == (["z"], None)


def test_a_non_admin_lists_its_own_tenant_only() -> None:
    alice = Principal("a", "alice", frozenset({"read"}))
    admin = Principal("root", "ops", frozenset({"admin"}))
    assert tenants_of(None, alice) == ["alice"] and tenants_of("alice", alice) == ["alice"]
    with pytest.raises(InvalidParamsError) as refused:
        tenants_of("bob", alice)
    assert list(refused.value.fields) == ["params.tenant"]
    assert tenants_of(None, admin) is None and tenants_of("bob", admin) == ["bob"]
