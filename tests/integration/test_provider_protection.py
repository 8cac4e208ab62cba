"""An openai tool behind the shared provider gate: circuit breaker and fallback chain, over real HTTP and Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from deployments.fake_provider import FakeProviderConfig
from orchestrator.adapters.provider_gate import RedisProviderGate
from orchestrator.adapters.task_store import redis_client
from orchestrator.errors import ToolError
from orchestrator.settings import RedisSettings, Settings
from orchestrator.tools.base import ToolCall
from orchestrator.tools.openai import OpenAITool
from orchestrator.tools.registry import ToolDeps, build_tool
from tests.fakeprovider import RunningFakeProvider, fake_provider
from tests.support import RecordingContext, RedisServer

pytestmark = pytest.mark.integration

FAIL_ALWAYS = 1_000_000


def call() -> ToolCall:
    return ToolCall(task_id="t1", attempt=1, input={"prompt": "hi"})


@pytest.fixture
def primary() -> Iterator[RunningFakeProvider]:
    with fake_provider(FakeProviderConfig(model="primary-model")) as running:
        yield running


@pytest.fixture
def backup() -> Iterator[RunningFakeProvider]:
    with fake_provider(FakeProviderConfig(model="backup-model")) as running:
        yield running


@pytest.fixture
async def gate(redis_server: RedisServer) -> AsyncIterator[RedisProviderGate]:
    client = redis_client(RedisSettings(url=redis_server.url))
    yield RedisProviderGate(client, f"p{uuid.uuid4().hex[:8]}")
    await client.aclose()


def settings_for(primary: RunningFakeProvider, backup: RunningFakeProvider, **limits: object) -> Settings:
    quick = {"max_retries": 1, "backoff_base_s": 0.01, "backoff_max_s": 0.02, **limits}
    return Settings(
        tools={
            "main": {"kind": "openai", "base_url": primary.base_url, "model": "primary-model",
                     "provider": "primary", "fallback": ["spare"]},
            "spare": {"kind": "openai", "base_url": backup.base_url, "model": "backup-model", "provider": "backup"},
        },
        providers={"primary": quick, "backup": quick},
    )


@pytest.fixture
async def tool(primary: RunningFakeProvider, backup: RunningFakeProvider,
               gate: RedisProviderGate) -> AsyncIterator[OpenAITool]:
    built = build_tool("main", settings_for(primary, backup, breaker_failures=2, breaker_open_s=0.5),
                       ToolDeps(gate=gate))
    assert isinstance(built, OpenAITool)
    yield built
    await built.aclose()


async def test_fallback_answers_when_the_primary_is_down(
    tool: OpenAITool, primary: RunningFakeProvider, backup: RunningFakeProvider
) -> None:
    primary.control(fail_next=FAIL_ALWAYS, fail_status=503)
    ctx = RecordingContext()
    result = await tool.run(call(), ctx)
    assert result["tool"] == "spare" and result["provider"] == "backup" and result["model"] == "backup-model"
    assert result["text"] == "echo: hi"
    assert primary.stats()["requests"] == 2  # the call and its one retry
    assert [p["fallback"] for p in ctx.progress_calls if "fallback" in p] == ["spare"]


async def test_request_errors_do_not_fall_back(
    tool: OpenAITool, primary: RunningFakeProvider, backup: RunningFakeProvider
) -> None:
    primary.control(fail_next=1, fail_status=400)
    with pytest.raises(ToolError, match=r"main: provider refused the request \(400\)") as caught:
        await tool.run(call(), RecordingContext())
    assert not caught.value.tool_retryable
    assert backup.stats()["requests"] == 0


async def test_every_provider_down_names_each_failure(
    tool: OpenAITool, primary: RunningFakeProvider, backup: RunningFakeProvider
) -> None:
    primary.control(fail_next=FAIL_ALWAYS, fail_status=503)
    backup.control(fail_next=FAIL_ALWAYS, fail_status=500)
    with pytest.raises(ToolError) as caught:
        await tool.run(call(), RecordingContext())
    message = str(caught.value)
    assert caught.value.tool_retryable
    assert "main: provider error 503" in message and "spare: provider error 500" in message
    assert "Traceback" not in message


async def test_circuit_opens_skips_the_provider_and_recovers(
    primary: RunningFakeProvider, backup: RunningFakeProvider, gate: RedisProviderGate
) -> None:
    settings = settings_for(primary, backup, max_retries=0, breaker_failures=2, breaker_open_s=0.5)
    settings.tools["main"].fallback = []
    tool = build_tool("main", settings, ToolDeps(gate=gate))
    try:
        primary.control(fail_next=FAIL_ALWAYS, fail_status=503)
        for _ in range(2):
            with pytest.raises(ToolError, match="provider error 503"):
                await tool.run(call(), RecordingContext())
        assert await gate.breaker_state("primary") == "open"
        with pytest.raises(ToolError, match="circuit open for provider 'primary'") as caught:
            await tool.run(call(), RecordingContext())
        assert caught.value.tool_retryable
        assert primary.stats()["requests"] == 2  # the open circuit did not hammer it

        primary.control(fail_next=0)  # the provider is back
        deadline = time.monotonic() + 10
        while True:  # a caller retrying the task, as a client would
            try:
                result = await tool.run(call(), RecordingContext())
                break
            except ToolError:
                assert time.monotonic() < deadline, "the circuit never let a probe through"
                await asyncio.sleep(0.1)  # poll interval of the retrying caller (bounded by the deadline)
        assert result["text"] == "echo: hi"
        assert await gate.breaker_state("primary") == "closed"
        assert primary.stats()["requests"] == 3  # one probe, no stampede
    finally:
        await tool.aclose()


async def test_open_circuit_sends_calls_to_the_fallback_at_once(
    tool: OpenAITool, primary: RunningFakeProvider, backup: RunningFakeProvider, gate: RedisProviderGate
) -> None:
    primary.control(fail_next=FAIL_ALWAYS, fail_status=503)
    await tool.run(call(), RecordingContext())  # two failures (call + retry): the circuit opens
    assert await gate.breaker_state("primary") == "open"
    result = await tool.run(call(), RecordingContext())
    assert result["tool"] == "spare"
    assert primary.stats()["requests"] == 2 and backup.stats()["requests"] == 2
