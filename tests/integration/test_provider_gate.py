"""The provider gate on a real Redis: rate limits, concurrency, 429 pauses and the circuit breaker."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from orchestrator.adapters.provider_gate import RedisProviderGate
from orchestrator.adapters.task_store import redis_client
from orchestrator.resilience import Account, CircuitOpenError, Outcome
from orchestrator.settings import ProviderSettings, RedisSettings
from tests.support import RedisServer

pytestmark = pytest.mark.integration

ACCOUNT = Account.of("fake", "sk-test")


@pytest.fixture
async def gate(redis_server: RedisServer) -> AsyncIterator[RedisProviderGate]:
    client = redis_client(RedisSettings(url=redis_server.url))
    yield RedisProviderGate(client, f"g{uuid.uuid4().hex[:8]}")
    await client.aclose()


async def admit(gate: RedisProviderGate, limits: ProviderSettings, n: int, tokens: int = 1) -> list[float]:
    """Acquire and release `n` permits one after another; the times they were admitted."""
    times = []
    for _ in range(n):
        permit = await gate.acquire(ACCOUNT, limits, tokens, lease_s=10)
        times.append(time.monotonic())
        await gate.release(permit, limits, Outcome.OK)
    return times


async def test_requests_per_minute_allow_a_burst_then_pace(gate: RedisProviderGate) -> None:
    limits = ProviderSettings(requests_per_minute=600, burst=3)  # one per 100 ms after 3 back to back
    times = await admit(gate, limits, 8)
    assert times[2] - times[0] < 0.1
    assert times[-1] - times[2] >= 5 * 0.1 * 0.95  # Redis's clock is in ms


async def test_tokens_per_minute_pace_by_the_tokens_charged(gate: RedisProviderGate) -> None:
    limits = ProviderSettings(tokens_per_minute=60_000)  # 1,000 tokens a second
    times = await admit(gate, limits, 3, tokens=200)
    assert times[2] - times[0] >= 2 * 0.2 * 0.95
    # Real usage below the estimate is refunded: the next call is admitted at once.
    permit = await gate.acquire(ACCOUNT, limits, 500, lease_s=10)
    await gate.release(permit, limits, Outcome.OK, tokens_used=1)
    started = time.monotonic()
    await admit(gate, limits, 1)
    assert time.monotonic() - started < 0.45


async def test_concurrency_waits_for_a_release(gate: RedisProviderGate) -> None:
    limits = ProviderSettings(max_concurrency=2)
    first = await gate.acquire(ACCOUNT, limits, 1, lease_s=10)
    await gate.acquire(ACCOUNT, limits, 1, lease_s=10)
    third = asyncio.ensure_future(gate.acquire(ACCOUNT, limits, 1, lease_s=10))
    await asyncio.sleep(0.2)  # give it every chance to get in wrongly
    assert not third.done()
    await gate.release(first, limits, Outcome.OK)
    await asyncio.wait_for(third, timeout=5)


async def test_a_dead_holders_lease_expires(gate: RedisProviderGate) -> None:
    limits = ProviderSettings(max_concurrency=1)
    await gate.acquire(ACCOUNT, limits, 1, lease_s=0.3)  # never released: its worker "died"
    await asyncio.wait_for(gate.acquire(ACCOUNT, limits, 1, lease_s=10), timeout=5)


async def test_a_429_pauses_the_whole_account(gate: RedisProviderGate) -> None:
    limits = ProviderSettings()
    permit = await gate.acquire(ACCOUNT, limits, 1, lease_s=10)
    await gate.release(permit, limits, Outcome.LIMITED, retry_after_s=0.4)
    started = time.monotonic()
    await admit(gate, limits, 1)
    assert time.monotonic() - started >= 0.35
    other = Account.of("fake", "another-key")  # another key of the provider has its own budget
    started = time.monotonic()
    await gate.release(await gate.acquire(other, limits, 1, lease_s=10), limits, Outcome.OK)
    assert time.monotonic() - started < 0.35


async def test_circuit_opens_after_consecutive_failures_and_one_probe_closes_it(gate: RedisProviderGate) -> None:
    limits = ProviderSettings(breaker_failures=3, breaker_open_s=0.3)
    for outcome in (Outcome.FAILED, Outcome.FAILED, Outcome.OK, Outcome.FAILED, Outcome.FAILED):
        await gate.release(await gate.acquire(ACCOUNT, limits, 1, lease_s=10), limits, outcome)
    assert await gate.breaker_state("fake") == "closed"  # the success in between reset the count
    await gate.release(await gate.acquire(ACCOUNT, limits, 1, lease_s=10), limits, Outcome.FAILED)
    assert await gate.breaker_state("fake") == "open"
    with pytest.raises(CircuitOpenError, match="circuit open for provider 'fake'"):
        await gate.acquire(ACCOUNT, limits, 1, lease_s=10)

    probe = await _eventually_admitted(gate, limits)
    assert await gate.breaker_state("fake") == "half_open"
    with pytest.raises(CircuitOpenError):  # one probe at a time
        await gate.acquire(ACCOUNT, limits, 1, lease_s=10)
    await gate.release(probe, limits, Outcome.FAILED)
    assert await gate.breaker_state("fake") == "open"  # the probe failed: open again

    probe = await _eventually_admitted(gate, limits)
    await gate.release(probe, limits, Outcome.OK)
    assert await gate.breaker_state("fake") == "closed"
    await admit(gate, limits, 2)


async def _eventually_admitted(gate: RedisProviderGate, limits: ProviderSettings) -> object:
    deadline = time.monotonic() + 5
    while True:
        try:
            return await gate.acquire(ACCOUNT, limits, 1, lease_s=10)
        except CircuitOpenError as exc:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(exc.retry_in_s)  # what the breaker said to wait


_OTHER_PROCESS = """
import asyncio, json, sys, time
from orchestrator.adapters.provider_gate import RedisProviderGate
from orchestrator.adapters.task_store import redis_client
from orchestrator.resilience import Account, Outcome
from orchestrator.settings import ProviderSettings, RedisSettings

async def main(url, prefix, n):
    client = redis_client(RedisSettings(url=url))
    gate = RedisProviderGate(client, prefix)
    limits = ProviderSettings(requests_per_minute=1200)
    times = []
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(n):
        permit = await gate.acquire(Account.of("fake", "sk-test"), limits, 1, lease_s=10)
        times.append(time.time())
        await gate.release(permit, limits, Outcome.OK)
    print(json.dumps(times), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_rate_limit_holds_across_processes(redis_server: RedisServer) -> None:
    prefix = f"g{uuid.uuid4().hex[:8]}"
    client = redis_client(RedisSettings(url=redis_server.url))
    gate = RedisProviderGate(client, prefix)
    limits = ProviderSettings(requests_per_minute=1200)  # one per 50 ms, burst 1
    child = subprocess.Popen([sys.executable, "-c", _OTHER_PROCESS, redis_server.url, prefix, "10"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        child.stdin.write("go\n")
        child.stdin.flush()
        ours = []
        for _ in range(10):
            permit = await gate.acquire(ACCOUNT, limits, 1, lease_s=10)
            ours.append(time.time())
            await gate.release(permit, limits, Outcome.OK)
        theirs = json.loads(await asyncio.to_thread(child.stdout.readline))
    finally:
        child.kill()
        child.wait()
        await client.aclose()
    merged = sorted(ours + theirs)
    assert theirs and ours
    # 20 admissions at one per 50 ms take at least 19 intervals, whoever made them.
    assert merged[-1] - merged[0] >= 19 * 0.05 * 0.9
