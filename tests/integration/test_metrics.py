"""/metrics: Prometheus text that parses and moves as tasks run."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RAY_METRICS_PORT, Deployed, deployed, make_settings
from tests.fakeprovider import RunningFakeProvider
from tests.integration.test_spine import finished, result
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration


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


def test_worker_metrics_reach_rays_prometheus_endpoint(system: Deployed) -> None:
    """ray.util.metrics from the worker actors: what the Ray dashboard's metrics show."""
    task_id = result(system.base_url, "run_task", {"tool": "echo", "prompt": "ray metrics"})["task_id"]
    finished(system.base_url, task_id)
    url = f"http://127.0.0.1:{RAY_METRICS_PORT[0]}/metrics"

    def exported() -> bool:
        try:
            text = httpx.get(url, timeout=5).text
        except httpx.HTTPError:
            return False
        return any(sample.name.startswith("ray_orchestrator_worker_tasks_finished") and
                   sample.labels.get("worker_type") == "reasoning" and sample.labels.get("status") == "succeeded"
                   and sample.value >= 1
                   for family in text_string_to_metric_families(text) for sample in family.samples)

    wait_until(exported, 60, "the worker's task counter on Ray's metrics endpoint")
