"""The stuck-task sweep's decisions."""

from __future__ import annotations

from orchestrator.recovery import Held, sweep

NOW, TIMEOUT = 1000.0, 30.0


def test_an_idle_entry_held_by_a_silent_worker_restarts_it() -> None:
    held = [Held("1-0", "w0", since=NOW - 60), Held("2-0", "w1", since=NOW - 60)]
    decision = sweep(["1-0"], held, {"w0": NOW - 45, "w1": NOW - 1}, NOW, TIMEOUT)
    assert decision.restart == {"w0"} and decision.claim == ()


def test_a_fresh_dispatch_or_a_live_worker_is_not_stuck() -> None:
    held = [Held("1-0", "w0", since=NOW - 5), Held("2-0", "w1", since=NOW - 60)]
    decision = sweep(["1-0", "2-0"], held, {"w0": NOW - 100, "w1": NOW - 2}, NOW, TIMEOUT)
    assert decision.restart == frozenset()


def test_a_worker_never_heard_from_counts_as_silent() -> None:
    decision = sweep(["1-0"], [Held("1-0", "w0", since=NOW - 60)], {}, NOW, TIMEOUT)
    assert decision.restart == {"w0"}


def test_entries_nobody_holds_are_claimed() -> None:
    decision = sweep(["1-0", "3-0"], [Held("1-0", "w0", since=NOW - 60)], {"w0": NOW}, NOW, TIMEOUT)
    assert decision.claim == ("3-0",) and decision.restart == frozenset()
