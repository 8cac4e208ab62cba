"""When a schedule's ticks fall and which due ticks fire, without Redis or Ray."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from orchestrator.schedules import Timing, fire_key, plan, timing_problem

EVERY_10S = Timing(None, "UTC", 10.0, anchor=1000.0)


def test_an_interval_ticks_from_its_anchor() -> None:
    assert EVERY_10S.after(1000.0) == 1010.0 and EVERY_10S.after(1009.9) == 1010.0
    assert EVERY_10S.after(1010.0) == 1020.0 and EVERY_10S.after(500.0) == 1000.0
    assert EVERY_10S.upcoming(1000.0, 3) == [1010.0, 1020.0, 1030.0]


def test_cron_ticks_in_its_timezone_across_a_dst_change() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    daily = Timing("30 2 * * *", "Europe/Berlin", None, anchor=0)
    before = datetime(2026, 3, 28, 12, 0, tzinfo=berlin).timestamp()
    # 02:30 does not exist on 29 March 2026 in Berlin (clocks jump 02:00 → 03:00): the tick is 03:30 or 03:00
    # as cronsim decides, never twice, and the next day is 02:30 again.
    first, second = daily.upcoming(before, 2)
    assert datetime.fromtimestamp(first, berlin).day == 29 and datetime.fromtimestamp(second, berlin).hour == 2
    weekdays = Timing("0 9 * * 1-5", "UTC", None, anchor=0)
    friday = datetime(2026, 12, 4, 10, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    assert datetime.fromtimestamp(weekdays.after(friday), ZoneInfo("UTC")).strftime("%a %H:%M") == "Mon 09:00"


def test_ticks_on_time_fire_under_every_policy() -> None:
    for catch_up in ("none", "latest", "all"):  # a firer running late by two ticks, within the grace: none lost
        todo = plan(EVERY_10S, 1010.0, 1021.0, catch_up, grace_s=15, max_catch_up=100)
        assert (todo.fire, todo.missed, todo.next_tick) == ([1010.0, 1020.0], [], 1030.0), catch_up
    early = plan(EVERY_10S, 1010.0, 1009.0, "all", grace_s=15, max_catch_up=100)
    assert (early.fire, early.next_tick) == ([], 1010.0)


def test_after_an_outage_each_catch_up_policy() -> None:
    # Due since 1010, now 1101: ticks 1010 … 1100 (10 of them); only 1100 is within the grace.
    none = plan(EVERY_10S, 1010.0, 1101.0, "none", grace_s=5, max_catch_up=100)
    assert none.fire == [1100.0] and len(none.missed) == 9 and none.next_tick == 1110.0
    latest = plan(EVERY_10S, 1010.0, 1101.0, "latest", grace_s=0.5, max_catch_up=100)
    assert latest.fire == [1100.0] and latest.skipped_before(1110.0) == 9
    everything = plan(EVERY_10S, 1010.0, 1101.0, "all", grace_s=5, max_catch_up=100)
    assert everything.fire == [1010.0 + 10 * i for i in range(10)] and everything.skipped_before(1110.0) == 0
    bounded = plan(EVERY_10S, 1010.0, 1101.0, "all", grace_s=5, max_catch_up=3)
    assert bounded.fire == [1080.0, 1090.0, 1100.0] and bounded.dropped == 7
    year = plan(Timing(None, "UTC", 1.0, anchor=0), 1.0, 366 * 86_400.0, "all", grace_s=5, max_catch_up=2)
    assert len(year.fire) == 2 and year.dropped == 366 * 86_400 - 2  # arithmetic, not a walk over every tick


def test_a_plan_stopped_early_counts_only_the_skips_before_where_it_stopped() -> None:
    none = plan(EVERY_10S, 1010.0, 1101.0, "none", grace_s=35, max_catch_up=100)  # 1070 … 1100 on time
    assert none.fire == [1070.0, 1080.0, 1090.0, 1100.0] and none.skipped_before(1080.0) == 6


@pytest.mark.parametrize(("cron", "timezone", "interval_s", "field", "why"), [
    (None, "UTC", None, "params.cron", "either cron or interval_s"),
    ("* * * * *", "UTC", 60.0, "params.cron", "either cron or interval_s"),
    ("* * * *", "UTC", None, "params.cron", "5 fields"),
    ("61 * * * *", "UTC", None, "params.cron", "not a cron expression"),
    ("* * * * *", "Mars/Olympus", None, "params.timezone", "unknown timezone"),
])
def test_bad_timings_name_the_field(cron: str | None, timezone: str, interval_s: float | None, field: str,
                                    why: str) -> None:
    assert why in timing_problem(cron, timezone, interval_s).get(field, "")


def test_a_ticks_key_names_the_schedule_and_the_tick() -> None:
    assert fire_key("abc", 1010.0) == "schedule:abc:1010000" != fire_key("abc", 1020.0)
