"""A pool whose tasks wait on a provider's rate limit is provider-bound: the SLA policy does not grow it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Deployed, deployed, make_settings
from tests.fakeprovider import RunningFakeProvider
from tests.integration.test_spine import finished, result
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int, provider: RunningFakeProvider) -> Iterator[Deployed]:
    llm = {"kind": "openai", "base_url": provider.base_url, "model": "fake-model", "provider": "slow-account"}
    targets = {"min_workers": 1, "max_workers": 3, "queue_wait_p95_s": 0.5, "cooldown_up_s": 0}
    settings = make_settings(redis_server.url, tools={"llm": llm}, pools={"reasoning": {"workers": 1, "slots": 4}},
                             providers={"slow-account": {"requests_per_minute": 120}},  # one call per 0.5 s
                             sla={"interval_s": 0.5, "pools": {"reasoning": targets}})
    with deployed(settings, ray_session) as running:
        yield running


def test_a_provider_bound_pool_is_not_grown(system: Deployed) -> None:
    ids = [result(system.base_url, "run_task", {"tool": "llm", "prompt": f"p{i}"})["task_id"] for i in range(16)]
    reasons: list[str] = []

    def held_for_the_provider() -> bool:
        sla = result(system.base_url, "status")["sla"].get("reasoning", {})
        reasons.append(sla.get("reason", ""))
        return "provider-bound" in reasons[-1]

    wait_until(held_for_the_provider, 30, "the SLA policy to see the pool is provider-bound")
    workers = [w for w in result(system.base_url, "status")["workers"] if w["worker_type"] == "reasoning"]
    assert len(workers) == 1  # more workers would only wait on the same rate limit
    assert all(finished(system.base_url, t, timeout_s=60)["status"] == "succeeded" for t in ids)
