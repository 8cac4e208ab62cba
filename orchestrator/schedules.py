"""Schedules: when a schedule's ticks fall, and which due ticks fire. Pure: the router that holds the pools lease
reads due schedules from Redis, asks `plan` what to fire, submits each fire as an ordinary task whose
idempotency key names the schedule and the tick (a tick fired twice finds its task), and advances the schedule
only if nobody advanced it meanwhile — so each tick fires exactly once across replicas, restarts and crashes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

Overlap = Literal["skip", "queue", "cancel_previous"]
CatchUp = Literal["none", "latest", "all"]


@dataclass(frozen=True, slots=True)
class Timing:
    """When a schedule fires: a 5-field cron expression in a timezone, or every `interval_s` seconds from
    `anchor` (its creation)."""

    cron: str | None
    timezone: str
    interval_s: float | None
    anchor: float

    def after(self, t: float) -> float:
        """The first tick strictly after unix time `t`."""
        if self.interval_s is not None:
            periods = math.floor((t - self.anchor) / self.interval_s) + 1
            return self.anchor + max(periods, 1) * self.interval_s if t >= self.anchor else self.anchor
        assert self.cron is not None
        start = datetime.fromtimestamp(math.floor(t) + 1, tz=ZoneInfo(self.timezone))
        # CronSim yields ticks at or after `start`, on whole minutes: strictly after t.
        return next(CronSim(self.cron, start)).timestamp()

    def upcoming(self, t: float, count: int) -> list[float]:
        ticks = []
        for _ in range(count):
            t = self.after(t)
            ticks.append(t)
        return ticks

    def due(self, first: float, now: float, keep: int) -> tuple[list[float], int, float]:
        """The ticks from `first` (a tick) up to `now`: the last `keep` of them, how many earlier ones were
        dropped, and the tick after them."""
        if first > now:
            return [], 0, first
        if self.interval_s is not None:  # arithmetic: an outage of any length costs nothing
            count = math.floor((now - first) / self.interval_s) + 1
            kept = [first + i * self.interval_s for i in range(max(count - keep, 0), count)]
            return kept, count - len(kept), first + count * self.interval_s
        kept, dropped, tick = [], 0, first
        while tick <= now:
            kept.append(tick)
            if len(kept) > keep:
                kept.pop(0)
                dropped += 1
            tick = self.after(tick)
        return kept, dropped, tick


def timing_problem(cron: str | None, timezone: str, interval_s: float | None) -> dict[str, str]:
    """Why a schedule's timing is unusable, by field (empty: usable)."""
    if (cron is None) == (interval_s is None):
        return {"params.cron": "give either cron or interval_s"}
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return {"params.timezone": f"unknown timezone {timezone[:64]!r} (an IANA name such as Europe/Berlin)"}
    if cron is not None:
        if len(cron.split()) != 5:
            return {"params.cron": "5 fields: minute hour day-of-month month day-of-week"}
        try:
            CronSim(cron, datetime.now(UTC))
        except CronSimError as exc:
            return {"params.cron": f"not a cron expression: {exc}"}
    return {}


@dataclass(frozen=True, slots=True)
class Plan:
    fire: list[float]  # the ticks to fire now, oldest first
    missed: list[float]  # due ticks too late to fire (by the catch-up policy)
    dropped: int  # due ticks beyond `max_catch_up`, older than all of those
    next_tick: float  # the schedule's next tick after these

    def skipped_before(self, tick: float) -> int:
        """Ticks that never fire, of those before `tick`."""
        return self.dropped + sum(1 for missed in self.missed if missed < tick)


def plan(timing: Timing, next_tick: float, now: float, catch_up: CatchUp, grace_s: float,
         max_catch_up: int) -> Plan:
    """Which of the due ticks (from `next_tick` up to `now`) fire. Ticks at most `grace_s` late are on time and
    fire under every policy; when some are later than that (the orchestrator was down), `none` skips the late
    ones, `latest` fires only the last due tick, `all` fires every due tick — at most `max_catch_up`, the latest
    ones."""
    due, dropped, following = timing.due(next_tick, now, max_catch_up)
    if catch_up == "all" or all(now - t <= grace_s for t in due):
        fire = due
    elif catch_up == "latest":
        fire = due[-1:]
    else:
        fire = [t for t in due if now - t <= grace_s]
    return Plan(fire, [t for t in due if t not in fire], dropped, following)


def fire_key(schedule_id: str, tick: float) -> str:
    """The idempotency key of a tick's task: a tick submitted twice finds its task."""
    return f"schedule:{schedule_id}:{round(tick * 1000)}"
