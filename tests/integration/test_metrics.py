"""/metrics: Prometheus text that parses and moves as tasks run."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deployments.fake_provider import FakeProviderConfig
from tests.conftest import Deployed, deployed, make_settings
from tests.fakeprovider import RunningFakeProvider, fake_provider
from tests.integration.test_spine import finished, result
from tests.support import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def provider() -> Iterator[RunningFakeProvider]:
    with fake_provider(FakeProviderConfig()) as running:
        yield running


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int, provider: RunningFakeProvider) -> Iterator[Deployed]:
    llm = {"kind": "openai", "base_url": provider.base_url, "model": "fake-model", "provider": "fake"}
    settings = make_settings(redis_server.url, tools={"llm": llm},
                             providers={"fake": {"backoff_base_s": 0.01, "rate_limited_budget_s": 5}})
    with deployed(settings, ray_session) as running:
        yield running


def scrape(system: Deployed) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = httpx.get(f"{system.base_url}/metrics", timeout=30)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_parse_and_move_as_tasks_run(system: Deployed, provider: RunningFakeProvider) -> None:
    before = scrape(system)
    succeeded = (("status", "succeeded"), ("worker_type", "reasoning"))
    assert ("orchestrator_pool_workers", (("worker_type", "reasoning"),)) in before
    assert before[("orchestrator_provider_circuit_state", (("provider", "fake"),))] == 0

    ids = [result(system.base_url, "run_task", {"tool": "echo", "prompt": f"m{i}"})["task_id"] for i in range(4)]
    provider.control(fail_next=1, fail_status=429, retry_after_s=0.05)
    ids.append(result(system.base_url, "run_task", {"tool": "llm", "prompt": "hello"})["task_id"])
    for task_id in ids:
        assert finished(system.base_url, task_id)["status"] == "succeeded"

    after = scrape(system)
    assert after[("orchestrator_tasks_finished_total", succeeded)] - before.get(
        ("orchestrator_tasks_finished_total", succeeded), 0) == 5
    run_count = ("orchestrator_task_duration_seconds_count", (("phase", "run"), ("worker_type", "reasoning")))
    assert after[run_count] - before.get(run_count, 0) == 5
    assert after[("orchestrator_provider_calls_total", (("outcome", "limited"), ("provider", "fake")))] >= 1
    assert after[("orchestrator_provider_calls_total", (("outcome", "ok"), ("provider", "fake")))] >= 1
    assert after[("orchestrator_tokens_total", (("tool", "llm"),))] > 0
    assert after[("orchestrator_active_tasks", ())] == 0
