"""OpenAITool against the fake OpenAI-compatible provider over real loopback HTTP."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from pydantic import SecretStr

from deployments.fake_provider import FakeProviderConfig
from orchestrator.errors import ToolError
from orchestrator.settings import ProviderSettings, ToolSettings
from orchestrator.tools.base import ToolCall
from orchestrator.tools.openai import (
    PROGRESS_CHARS,
    PROGRESS_INTERVAL_S,
    OpenAITool,
    chat_completions_url,
)
from tests.fakeprovider import RunningFakeProvider, fake_provider
from tests.support import RecordingContext

pytestmark = pytest.mark.integration

KEY_ENV = "FAKE_PROVIDER_API_KEY"
NO_RETRIES = ProviderSettings(max_retries=0, rate_limited_budget_s=0)  # one call each: these tests see each failure as it comes
QUICK_RETRIES = ProviderSettings(max_retries=3, backoff_base_s=0.01, backoff_max_s=0.05)


def call(deadline: float | None = None, **tool_input: Any) -> ToolCall:
    return ToolCall(task_id="t1", attempt=1, input=tool_input, deadline=deadline)


@pytest.fixture(autouse=True)
def no_keys_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (KEY_ENV, "DEEPSEEK_API_KEY", "PERPLEXITY_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def provider() -> Iterator[RunningFakeProvider]:
    with fake_provider(FakeProviderConfig()) as running:
        yield running


MakeTool = Callable[..., OpenAITool]


@pytest.fixture
async def make_tool(provider: RunningFakeProvider) -> AsyncIterator[MakeTool]:
    tools: list[OpenAITool] = []

    def make(limits: ProviderSettings | None = None, **overrides: Any) -> OpenAITool:
        fields: dict[str, Any] = {"kind": "openai", "base_url": provider.base_url, "model": "fake-model",
                                  "api_key_env": KEY_ENV, "timeout_s": 10.0, **overrides}
        tool = OpenAITool("fake", ToolSettings(**fields), limits=limits or NO_RETRIES)
        tools.append(tool)
        return tool

    yield make
    for tool in tools:
        await tool.aclose()


async def test_non_streaming_completion(make_tool: MakeTool) -> None:
    result = await make_tool(stream=False).run(call(prompt="hello world"), RecordingContext())
    assert result == {
        "text": "echo: hello world",
        "model": "fake-model",
        "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
        "finish_reason": "stop",
        "tool": "fake",
        "provider": "fake",
    }


async def test_streaming_completion_reports_deltas_and_partial_text(
    provider: RunningFakeProvider, make_tool: MakeTool
) -> None:
    provider.control(latency_ms=300)  # 100 ms between the three pieces: each becomes its own progress event
    ctx = RecordingContext()
    result = await make_tool(stream=True).run(call(prompt="hello world"), ctx)
    assert result["text"] == "echo: hello world"
    assert result["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert result["finish_reason"] == "stop"
    assert "".join(p["delta"] for p in ctx.progress_calls) == "echo: hello world"
    assert [p["chars"] for p in ctx.progress_calls] == [
        len("".join(p["delta"] for p in ctx.progress_calls[: i + 1])) for i in range(len(ctx.progress_calls))
    ]
    partials = [c["partial"] for c in ctx.checkpoints]
    assert partials and partials[-1] == "echo: hello world"
    assert all("echo: hello world".startswith(p) for p in partials)
    assert len(ctx.progress_calls) >= 2  # pieces 100 ms apart are not all folded into one report


async def test_fast_stream_progress_is_throttled(provider: RunningFakeProvider, make_tool: MakeTool) -> None:
    reply = "w " * 1000
    provider.control(responses={"many": reply})
    ctx = RecordingContext()
    started = time.monotonic()
    result = await make_tool(stream=True).run(call(prompt="many words"), ctx)
    elapsed_s = time.monotonic() - started
    assert result["text"] == reply
    assert "".join(p["delta"] for p in ctx.progress_calls) == reply
    # At most one report per PROGRESS_CHARS or per PROGRESS_INTERVAL_S, plus the first and the final flush.
    assert len(ctx.progress_calls) <= len(reply) / PROGRESS_CHARS + elapsed_s / PROGRESS_INTERVAL_S + 2
    assert len(ctx.progress_calls) < 1000
    assert len(ctx.checkpoints) == len(ctx.progress_calls)


async def test_request_carries_system_messages_and_options(provider: RunningFakeProvider, make_tool: MakeTool) -> None:
    tool = make_tool(stream=False, max_tokens=50)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "again"}]
    result = await tool.run(call(messages=messages, system="be brief", temperature=0.2), RecordingContext())
    assert result["text"] == "echo: again"
    sent = provider.stats()["last_request"]
    assert sent["messages"] == [{"role": "system", "content": "be brief"}, *messages]
    assert sent["temperature"] == 0.2
    assert sent["max_tokens"] == 50
    assert sent["model"] == "fake-model"
    assert sent["stream"] is False


async def test_max_tokens_truncates_with_length_finish(make_tool: MakeTool) -> None:
    result = await make_tool(stream=True).run(call(prompt="one two three four", max_tokens=2), RecordingContext())
    assert result["text"] == "echo: one "
    assert result["finish_reason"] == "length"


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_map_returns_configured_text(
    provider: RunningFakeProvider, make_tool: MakeTool, stream: bool
) -> None:
    code = "def add(a, b):\n    return a + b\n"
    provider.control(responses={"write add": code})
    result = await make_tool(stream=stream).run(call(prompt="please write add in Python"), RecordingContext())
    assert result["text"] == code


async def test_correct_key_is_accepted(provider: RunningFakeProvider, make_tool: MakeTool) -> None:
    provider.control(api_key="sk-fake")
    result = await make_tool(api_key=SecretStr("sk-fake")).run(call(prompt="hi"), RecordingContext())
    assert result["text"] == "echo: hi"


@pytest.mark.parametrize("key", [None, "sk-wrong"])
async def test_rejected_key_names_the_env_var(provider: RunningFakeProvider, make_tool: MakeTool, key: str | None) -> None:
    provider.control(api_key="sk-fake")
    tool = make_tool(api_key=SecretStr(key) if key else None)
    with pytest.raises(ToolError) as caught:
        await tool.run(call(prompt="hi"), RecordingContext())
    assert KEY_ENV in str(caught.value)
    assert "401" in str(caught.value)
    assert not caught.value.tool_retryable
    assert "sk-wrong" not in str(caught.value)


@pytest.mark.parametrize("stream", [False, True])
async def test_rate_limit_is_retryable_with_retry_after(
    provider: RunningFakeProvider, make_tool: MakeTool, stream: bool
) -> None:
    provider.control(fail_next=1, fail_status=429, retry_after_s=3)
    tool = make_tool(stream=stream)
    with pytest.raises(ToolError) as caught:
        await tool.run(call(prompt="hi"), RecordingContext())
    assert caught.value.tool_retryable
    assert str(caught.value) == "provider rate limit (429): retry after 3s (still rate limited after 1 attempts, 0.0s)"
    # The failure was for the next request only.
    assert (await tool.run(call(prompt="hi"), RecordingContext()))["text"] == "echo: hi"


async def test_rate_limit_is_retried_after_the_time_the_provider_asked(
    provider: RunningFakeProvider, make_tool: MakeTool
) -> None:
    provider.control(fail_next=2, fail_status=429, retry_after_s=0.3)
    ctx = RecordingContext()
    started = time.monotonic()
    result = await make_tool(limits=QUICK_RETRIES).run(call(prompt="hi"), ctx)
    assert result["text"] == "echo: hi"
    assert time.monotonic() - started >= 0.6  # two waits of Retry-After, not the 10-50 ms backoff
    retries = [p for p in ctx.progress_calls if "retry" in p]
    assert [r["retry"] for r in retries] == [1, 2] and all(r["in_s"] >= 0.3 for r in retries)
    assert "429" in retries[0]["reason"]


@pytest.mark.parametrize("status", [500, 503])
async def test_server_error_is_retryable(provider: RunningFakeProvider, make_tool: MakeTool, status: int) -> None:
    provider.control(fail_next=1, fail_status=status)
    with pytest.raises(ToolError) as caught:
        await make_tool().run(call(prompt="hi"), RecordingContext())
    assert caught.value.tool_retryable
    assert f"provider error {status}" in str(caught.value)
    provider.control(fail_next=3, fail_status=status)
    assert (await make_tool(limits=QUICK_RETRIES).run(call(prompt="hi"), RecordingContext()))["text"] == "echo: hi"
    assert provider.stats()["requests"] == 1 + 4


@pytest.mark.parametrize("stream", [False, True])
async def test_malformed_response_is_a_provider_failure(
    provider: RunningFakeProvider, make_tool: MakeTool, stream: bool
) -> None:
    provider.control(malformed_next=1)
    with pytest.raises(ToolError) as caught:
        await make_tool(stream=stream).run(call(prompt="hi"), RecordingContext())
    assert caught.value.tool_retryable
    assert "malformed" in str(caught.value)


@pytest.mark.parametrize("stream", [False, True])
async def test_slow_provider_times_out_retryably(
    provider: RunningFakeProvider, make_tool: MakeTool, stream: bool
) -> None:
    provider.control(latency_ms=2000)
    with pytest.raises(ToolError) as caught:
        await make_tool(stream=stream, timeout_s=0.2).run(call(prompt="one two three"), RecordingContext())
    assert caught.value.tool_retryable
    assert "timed out after 0.2s" in str(caught.value)


async def test_task_deadline_caps_the_call(provider: RunningFakeProvider, make_tool: MakeTool) -> None:
    provider.control(latency_ms=2000)
    started = time.monotonic()
    with pytest.raises(ToolError) as caught:
        await make_tool(timeout_s=30).run(call(deadline=time.time() + 0.2, prompt="hi"), RecordingContext())
    assert time.monotonic() - started < 1.5
    assert "deadline" in str(caught.value)
    assert not caught.value.tool_retryable


async def test_passed_deadline_fails_before_calling(provider: RunningFakeProvider, make_tool: MakeTool) -> None:
    with pytest.raises(ToolError, match="deadline passed"):
        await make_tool().run(call(deadline=time.time() - 1, prompt="hi"), RecordingContext())
    assert provider.stats()["requests"] == 0


async def test_connection_refused_is_retryable() -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/v1"
    tool = OpenAITool("down", ToolSettings(kind="openai", base_url=base_url, model="m"), limits=NO_RETRIES)
    try:
        with pytest.raises(ToolError) as caught:
            await tool.run(call(prompt="hi"), RecordingContext())
    finally:
        await tool.aclose()
    assert caught.value.tool_retryable
    assert str(caught.value) == f"cannot reach provider at {base_url} (gave up after 1 attempts)"


@pytest.mark.parametrize(
    ("preset", "base_url", "model"),
    [
        ("deepseek", "https://api.deepseek.com", "deepseek-chat"),
        ("deepseek-reasoner", "https://api.deepseek.com", "deepseek-reasoner"),
        ("perplexity", "https://api.perplexity.ai", "sonar"),
    ],
)
async def test_presets_post_to_base_url_chat_completions(preset: str, base_url: str, model: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:  # stands in for the real provider
        seen.append(request)
        return httpx.Response(200, json={
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })

    settings = ToolSettings(kind="openai", preset=preset, api_key=SecretStr("sk-test"), stream=False)
    assert settings.base_url == base_url
    tool = OpenAITool(preset, settings, transport=httpx.MockTransport(handler))
    try:
        assert tool.url == f"{base_url}/chat/completions"
        result = await tool.run(call(prompt="hi"), RecordingContext())
    finally:
        await tool.aclose()
    assert result["text"] == "ok"
    assert [str(r.url) for r in seen] == [f"{base_url}/chat/completions"]
    assert seen[0].headers["authorization"] == "Bearer sk-test"


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("https://api.deepseek.com", "https://api.deepseek.com/chat/completions"),
        ("https://api.perplexity.ai/", "https://api.perplexity.ai/chat/completions"),
        ("http://127.0.0.1:8901/v1", "http://127.0.0.1:8901/v1/chat/completions"),
    ],
)
def test_chat_completions_url(base_url: str, expected: str) -> None:
    assert chat_completions_url(base_url) == expected


@pytest.mark.parametrize(("preset", "env"), [("deepseek", "DEEPSEEK_API_KEY"), ("perplexity", "PERPLEXITY_API_KEY")])
async def test_missing_key_for_remote_provider_fails_fast(preset: str, env: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request may be sent without a key")

    tool = OpenAITool(preset, ToolSettings(kind="openai", preset=preset), transport=httpx.MockTransport(handler))
    try:
        with pytest.raises(ToolError) as caught:
            await tool.run(call(prompt="hi"), RecordingContext())
    finally:
        await tool.aclose()
    assert env in str(caught.value)
    assert not caught.value.tool_retryable


@pytest.mark.parametrize(
    ("tool_input", "valid"),
    [
        ({"prompt": "hi"}, True),
        ({"messages": [{"role": "user", "content": "hi"}], "system": "s", "temperature": 2, "max_tokens": 1}, True),
        ({}, False),
        ({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, False),
        ({"messages": [{"role": "tool", "content": "hi"}]}, False),
        ({"messages": []}, False),
        ({"prompt": "hi", "temperature": 2.5}, False),
        ({"prompt": "hi", "max_tokens": 0}, False),
        ({"prompt": "hi", "top_k": 3}, False),
    ],
)
def test_input_schema(tool_input: dict[str, Any], valid: bool) -> None:
    jsonschema.Draft202012Validator.check_schema(OpenAITool.input_schema)
    assert jsonschema.Draft202012Validator(OpenAITool.input_schema).is_valid(tool_input) is valid
