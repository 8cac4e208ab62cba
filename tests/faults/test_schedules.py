"""Schedules through the whole system: each tick fires exactly once across a router SIGKILL and a Redis kill -9
(count the tasks in Redis), each catch-up policy after a 10 s outage of the firer, and the API's checks and tenant
isolation."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from orchestrator.auth import hash_key, new_key
from orchestrator.naming import router_name
from tests import redis_view
from tests.conftest import Deployed, deployed, make_settings
from tests.faults.load import actor_pid, restarted_pid
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration

KEYS = {name: new_key() for name in ("alice", "bob", "ops")}
OUTAGE_S = 10.0
REDIS_OUTAGE_S = 3.0
LATE_MS = 2000  # the grace (1 s) and what a submit may take on a loaded machine
SLACK = 4  # outage ticks that may still be on time when firing resumes (the lease is taken again first)


@pytest.fixture(scope="module")
def dedicated_redis(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """This module's own redis-server (AOF fsynced on every write), so one test can kill and restart it."""
    server = RedisServer(aof=True, appendfsync="always")
    request.addfinalizer(server.stop)
    yield server.start()


@pytest.fixture(scope="module")
def system(dedicated_redis: RedisServer, ray_session: int) -> Iterator[Deployed]:
    keys = {name: {"hash": hash_key(key), "tenant": name, "scopes": ["admin"] if name == "ops" else ["submit", "read"]}
            for name, key in KEYS.items()}
    settings = make_settings(dedicated_redis.url, auth={"keys": keys, "quotas": {"bob": {"max_priority": 5}}},
                             limits={"max_schedules_per_tenant": 4})
    with deployed(settings, ray_session) as running:
        yield running


def call(system: Deployed, who: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    reply = httpx.post(f"{system.base_url}/v2/rpc", json=body, headers={"authorization": f"Bearer {KEYS[who]}"},
                       timeout=60)
    return dict(reply.json())


def ok(system: Deployed, who: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    reply = call(system, who, method, params)
    assert "error" not in reply, reply
    return dict(reply["result"])


def every_second(system: Deployed, who: str, catch_up: str, **extra: Any) -> str:
    params = {"interval_s": 1, "tool": "echo", "input": {"prompt": catch_up}, "catch_up": catch_up, **extra}
    return str(ok(system, who, "create_schedule", params)["schedule_id"])


def fires(system: Deployed, schedule_id: str) -> list[tuple[int, int]]:
    """(tick, created) in ms of each of the schedule's tasks stored in Redis — the tick from its idempotency key —
    oldest tick first: a tick fired twice shows twice."""
    conn = redis_view.client(system.settings)
    try:
        found = []
        for task_id in redis_view.task_ids(conn, system.settings):
            record = redis_view.stored(conn, system.settings, task_id) or {}
            if record.get("a") == f"schedule:{schedule_id}":
                found.append((int(record["k"].rsplit(":", 1)[1]), int(record["c"])))
        return sorted(found)
    finally:
        conn.close()


def once_each(found: list[tuple[int, int]]) -> list[int]:
    ticks = [tick for tick, _ in found]
    assert len(set(ticks)) == len(ticks), Counter(ticks).most_common(3)
    return ticks


def schedule(system: Deployed, schedule_id: str) -> dict[str, Any]:
    return ok(system, "ops", "get_schedule", {"schedule_id": schedule_id})


def fired_past(system: Deployed, schedule_id: str, when: float, timeout_s: float = 30) -> dict[str, Any]:
    """The schedule once it stands past `when` (its due ticks up to then dealt with)."""
    state: dict[str, Any] = {}

    def past() -> bool:
        state.update(schedule(system, schedule_id))
        return bool(state["next_ms"] > when * 1000)

    wait_until(past, timeout_s, f"schedule {schedule_id} to pass {when}")
    return state


def test_each_tick_fires_once_across_a_router_kill(system: Deployed) -> None:
    schedule_id = every_second(system, "alice", "all")
    wait_until(lambda: schedule(system, schedule_id)["fired"] >= 2, 30, "two fires")
    old = actor_pid(router_name(0), system.settings.namespace)
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: restarted_pid(router_name(0), system.settings.namespace, old) is not None, 60,
               "Ray to restart the router")
    state = fired_past(system, schedule_id, time.time() + 2)  # its lease expired, it caught up, it went on
    ok(system, "alice", "pause_schedule", {"schedule_id": schedule_id})
    ticks = once_each(fires(system, schedule_id))
    assert ticks == list(range(ticks[0], ticks[-1] + 1, 1000))  # none missed, the outage's included
    assert len(ticks) == ok(system, "alice", "get_schedule", {"schedule_id": schedule_id})["fired"] >= state["fired"]
    assert state["skipped"] == 0


def test_each_tick_fires_once_across_a_redis_kill(system: Deployed, dedicated_redis: RedisServer) -> None:
    schedule_id = every_second(system, "alice", "all")
    wait_until(lambda: schedule(system, schedule_id)["fired"] >= 2, 30, "two fires")
    dedicated_redis.kill()
    time.sleep(REDIS_OUTAGE_S)  # the fault's duration (Redis stays down this long), not synchronisation
    dedicated_redis.start()  # same port, same dir: the AOF brings back every acknowledged write
    fired_past(system, schedule_id, time.time() + 2, timeout_s=60)
    ok(system, "alice", "pause_schedule", {"schedule_id": schedule_id})
    ticks = once_each(fires(system, schedule_id))
    assert ticks == list(range(ticks[0], ticks[-1] + 1, 1000))  # the outage's ticks fired after it, once each
    assert len(ticks) == schedule(system, schedule_id)["fired"]


def test_each_catch_up_policy_after_an_outage(system: Deployed) -> None:
    ids = {policy: every_second(system, "ops", policy, grace_s=1) for policy in ("none", "latest", "all")}
    for schedule_id in ids.values():
        wait_until(lambda s=schedule_id: schedule(system, s)["fired"] >= 1, 30, "a first fire")
    router = actor_pid(router_name(0), system.settings.namespace)
    os.kill(router, signal.SIGSTOP)  # nobody fires
    try:
        before = {policy: schedule(system, s) for policy, s in ids.items()}
        time.sleep(OUTAGE_S)  # the fault's duration (the firer stays down this long), not synchronisation
    finally:
        os.kill(router, signal.SIGCONT)
    back = time.time()
    after = {policy: fired_past(system, s, back) for policy, s in ids.items()}
    for policy, schedule_id in ids.items():
        found = fires(system, schedule_id)
        ticks = once_each(found)
        late = [tick for tick, created in found if created - tick > LATE_MS]  # fired more than the grace late
        advanced = (after[policy]["next_ms"] - before[policy]["next_ms"]) // 1000  # ticks dealt with since
        fired, skipped = (after[policy][n] - before[policy][n] for n in ("fired", "skipped"))
        assert fired + skipped == advanced >= OUTAGE_S, (policy, fired, skipped, advanced)
        if policy == "all":  # every tick of the outage, late
            assert ticks == list(range(ticks[0], ticks[-1] + 1, 1000)) and len(late) >= OUTAGE_S - SLACK
        elif policy == "latest":  # of the late ticks, at most the last
            assert len(late) <= 1 and skipped >= OUTAGE_S - SLACK, (late, skipped)
        else:  # none of them
            assert late == [] and skipped >= OUTAGE_S - SLACK, (late, skipped)
    for schedule_id in ids.values():
        ok(system, "ops", "delete_schedule", {"schedule_id": schedule_id})


def test_schedules_belong_to_their_tenant_and_bad_ones_name_the_field(system: Deployed) -> None:
    params = {"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin", "tool": "echo", "input": {"prompt": "daily"},
              "overlap": "skip", "name": "standup"}
    mine = ok(system, "bob", "create_schedule", params)
    assert mine["spec"]["tenant"] == "bob" and mine["paused"] is False and len(mine["upcoming"]) == 5
    assert all(time.gmtime(t).tm_wday < 5 for t in mine["upcoming"])  # weekdays only
    assert call(system, "alice", "get_schedule", {"schedule_id": mine["schedule_id"]})["error"]["code"] == -32014
    assert call(system, "alice", "delete_schedule", {"schedule_id": mine["schedule_id"]})["error"]["code"] == -32014
    assert [s["schedule_id"] for s in ok(system, "bob", "list_schedules", {})["schedules"]] == [mine["schedule_id"]]
    assert call(system, "bob", "list_schedules", {"tenant": "alice"})["error"]["code"] == -32602
    assert mine["schedule_id"] in {s["schedule_id"] for s in ok(system, "ops", "list_schedules", {})["schedules"]}

    paused = ok(system, "bob", "pause_schedule", {"schedule_id": mine["schedule_id"]})
    assert paused["paused"] is True and paused["upcoming"] == []
    assert ok(system, "bob", "resume_schedule", {"schedule_id": mine["schedule_id"]})["upcoming"] == mine["upcoming"]

    bad = [({"cron": "61 * * * *"}, "params.cron"), ({"cron": None, "interval_s": None}, "params.cron"),
           ({"timezone": "Mars/Olympus"}, "params.timezone"), ({"tool": "nope"}, "params.tool"),
           ({"priority": 9}, "params.priority")]  # bob's quota: at most 5
    for change, field in bad:
        error = call(system, "bob", "create_schedule", {**params, **change})["error"]
        assert error["code"] == -32602 and field in error["data"]["fields"], (change, error)
    for i in range(3):
        ok(system, "bob", "create_schedule", {**params, "name": f"more-{i}"})
    full = call(system, "bob", "create_schedule", params)["error"]
    assert full["code"] == -32013 and "has 4 schedules, its limit" in full["message"]
    assert ok(system, "bob", "delete_schedule", {"schedule_id": mine["schedule_id"]})["deleted"] is True
    assert call(system, "bob", "get_schedule", {"schedule_id": mine["schedule_id"]})["error"]["code"] == -32014


def test_a_skipped_tick_that_a_dead_firer_had_fired_counts_as_fired(system: Deployed) -> None:
    """overlap=skip, the previous fire still running: a tick is skipped — unless a firer that died between its
    submit and its record had fired it already; then its task is the tick's run, not a stranger."""
    slow = {"tool": "echo", "input": {"prompt": "slow", "delay_ms": 60_000}}
    schedule_id = str(ok(system, "alice", "create_schedule", {**slow, "interval_s": 2, "overlap": "skip"})["schedule_id"])
    wait_until(lambda: schedule(system, schedule_id)["runs"], 30, "the first fire")
    tick = next(t for t in schedule(system, schedule_id)["upcoming"] if t > time.time() + 1.5)
    # What the dead firer left behind: the tick's task, submitted with the tick's key and never recorded.
    task_id = ok(system, "alice", "run_task", {**slow, "idempotency_key": f"schedule:{schedule_id}:{round(tick * 1000)}"})[
        "task_id"]
    state = fired_past(system, schedule_id, tick)
    assert {"tick": tick, "task_id": task_id} in state["runs"] and state["last_task"] == task_id, state
    assert state["fired"] == 2, state  # the first fire and this one; the ticks between were skipped
    ok(system, "alice", "delete_schedule", {"schedule_id": schedule_id})
    for run in state["runs"]:
        call(system, "alice", "cancel_task", {"task_id": run["task_id"]})
