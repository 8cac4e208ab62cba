"""An `openai`-kind tool end to end: orchestrator → worker → the fake OpenAI-compatible provider over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deployments.fake_provider import FakeProviderConfig
from tests.conftest import Deployed, deployed, make_settings
from tests.fakeprovider import RunningFakeProvider, fake_provider
from tests.integration.test_spine import result
from tests.support import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def provider() -> Iterator[RunningFakeProvider]:
    with fake_provider(FakeProviderConfig(api_key="sk-test-secret", latency_ms=100)) as running:
        yield running


@pytest.fixture(scope="module")
def llm_orchestrator(redis_server: RedisServer, ray_session: int, provider: RunningFakeProvider) -> Iterator[Deployed]:
    tool = {"kind": "openai", "base_url": provider.base_url, "model": "fake-model", "api_key": "sk-test-secret",
            "worker_type": "codegen", "timeout_s": 10}
    settings = make_settings(redis_server.url, tools={"fake-llm": tool, "fake-llm-nokey": {**tool, "api_key": None}},
                             providers={"fake-llm": {"rate_limited_budget_s": 0.3}})
    with deployed(settings, ray_session) as system:
        yield system


def test_streamed_completion_becomes_the_result(llm_orchestrator: Deployed, provider: RunningFakeProvider) -> None:
    record = result(llm_orchestrator.base_url, "run_task",
                    {"tool": "fake-llm", "prompt": "write a haiku about queues", "wait": 30})
    assert record["status"] == "succeeded", record
    assert record["worker"].startswith("worker:codegen:")
    assert record["result"]["text"] == "echo: write a haiku about queues"
    assert record["result"]["usage"]["completion_tokens"] > 0
    assert record["result"]["finish_reason"] == "stop"
    assert provider.stats()["last_request"]["messages"][-1]["content"] == "write a haiku about queues"


def test_v2_messages_and_options_reach_the_provider(llm_orchestrator: Deployed, provider: RunningFakeProvider) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    record = result(llm_orchestrator.base_url, "run_task",
                    {"tool": "fake-llm", "input": {"messages": messages, "temperature": 0.2}, "wait": 30},
                    path="v2/rpc")
    assert record["status"] == "succeeded" and record["result"]["text"] == "echo: hi there"
    sent = provider.stats()["last_request"]
    assert sent["messages"] == messages and sent["temperature"] == 0.2


def test_provider_errors_reach_the_record_as_clear_messages(llm_orchestrator: Deployed,
                                                            provider: RunningFakeProvider) -> None:
    provider.control(fail_next=1, fail_status=429, retry_after_s=0.2)
    retried = result(llm_orchestrator.base_url, "run_task", {"tool": "fake-llm", "prompt": "x", "wait": 30})
    assert retried["status"] == "succeeded", retried  # 0.2 s of waiting fits the 0.3 s budget
    provider.control(fail_next=2, fail_status=429, retry_after_s=0.2)
    limited = result(llm_orchestrator.base_url, "run_task", {"tool": "fake-llm", "prompt": "x", "wait": 30})
    assert limited["status"] == "failed"
    assert limited["error"]["retryable"] is True
    assert limited["error"]["message"] == (
        "provider rate limit (429): retry after 0.2s (still rate limited after 2 attempts, 0.2s)")
    rejected = result(llm_orchestrator.base_url, "run_task", {"tool": "fake-llm-nokey", "prompt": "x", "wait": 30})
    assert rejected["status"] == "failed" and rejected["error"]["retryable"] is False
    for record in (limited, rejected):
        assert "Traceback" not in record["error"]["message"] and "sk-test-secret" not in record["error"]["message"]
