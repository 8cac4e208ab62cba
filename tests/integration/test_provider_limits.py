"""Provider limits through the whole system: two worker processes share one budget; 429 storms fail nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from deployments.fake_provider import FakeProviderConfig
from tests.conftest import Deployed, deployed, make_settings
from tests.fakeprovider import RunningFakeProvider, fake_provider
from tests.integration.test_spine import finished, result
from tests.support import RedisServer

pytestmark = pytest.mark.integration

RPM, CONCURRENCY = 300, 3  # one request per 200 ms; three at once


@pytest.fixture(scope="module")
def limited_provider() -> Iterator[RunningFakeProvider]:
    # The provider enforces its limits (429 above them), with a burst of 2 for network jitter.
    config = FakeProviderConfig(latency_ms=150, rate_limit_rpm=RPM, rate_limit_burst=2, max_concurrency=CONCURRENCY)
    with fake_provider(config) as running:
        yield running


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int, limited_provider: RunningFakeProvider) -> Iterator[Deployed]:
    tool = {"kind": "openai", "base_url": limited_provider.base_url, "model": "fake-model", "timeout_s": 10}
    settings = make_settings(
        redis_server.url,
        pools={"reasoning": {"workers": 2, "slots": 8}},
        tools={"paced": {**tool, "provider": "fake"}, "unpaced": {**tool, "provider": "fake-unconfigured"}},
        providers={"fake": {"requests_per_minute": RPM, "max_concurrency": CONCURRENCY},
                   "fake-unconfigured": {"backoff_base_s": 0.05}},
    )
    with deployed(settings, ray_session) as running:
        yield running


def run_all(system: Deployed, tool: str, n: int) -> list[dict[str, Any]]:
    calls = [{"tool": tool, "prompt": f"task {i}"} for i in range(n)]
    ids = [result(system.base_url, "run_task", params)["task_id"] for params in calls]
    return [finished(system.base_url, task_id, timeout_s=90) for task_id in ids]


def test_two_workers_share_one_budget(system: Deployed, limited_provider: RunningFakeProvider) -> None:
    limited_provider.reset_stats()
    records = run_all(system, "paced", 16)
    assert [r["status"] for r in records] == ["succeeded"] * 16, [r.get("error") for r in records]
    assert len({r["worker"] for r in records}) == 2  # both worker processes called the provider
    stats = limited_provider.stats()
    assert stats["rate_limited"] == 0  # the shared gate kept both inside the provider's limits
    assert stats["max_in_flight"] <= CONCURRENCY
    span_s = stats["last_admission_at"] - stats["first_admission_at"]
    assert span_s >= (16 - 1) * 60 / RPM * 0.9  # never faster than the limit, whoever called


def test_a_429_storm_fails_no_task(system: Deployed, limited_provider: RunningFakeProvider) -> None:
    limited_provider.reset_stats()
    records = run_all(system, "unpaced", 16)  # 16 slots at once against 3 concurrent / 5 per second
    assert [r["status"] for r in records] == ["succeeded"] * 16, [r.get("error") for r in records]
    assert limited_provider.stats()["rate_limited"] > 0  # the storm happened, and retries rode it out
    assert all(r["result"]["text"] == f"echo: task {i}" for i, r in enumerate(records))
