"""The `openai` tool: one chat completion from any OpenAI-compatible API (DeepSeek, Perplexity, vLLM, Ollama)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx

from orchestrator import tracing
from orchestrator.errors import ToolError
from orchestrator.resilience import (
    Account,
    CircuitOpenError,
    OpenGate,
    Outcome,
    ProviderGate,
    RetryPolicy,
    estimate_tokens,
)
from orchestrator.settings import ProviderSettings, ToolSettings
from orchestrator.tools.base import JsonValue, Tool, ToolCall, ToolContext

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.1  # a fast stream must not turn into thousands of event writes
PROGRESS_CHARS = 200
_ERROR_DETAIL_CHARS = 200
LEASE_MARGIN_S = 5.0  # a concurrency lease outlives the call's own timeout by this much


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One provider behind an openai tool: the tool's own, or one of its fallbacks."""

    tool: str
    settings: ToolSettings
    provider: str  # the account its limits are kept under
    limits: ProviderSettings

    @property
    def url(self) -> str:
        return chat_completions_url(self.settings.base_url or "")


class ProviderCallError(Exception):
    """One call to one provider failed; says whether to retry it and whether another provider may help."""

    def __init__(self, message: str, outcome: Outcome, retryable: bool, *, fallback: bool = True,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message, outcome, retryable, fallback, retry_after_s)
        self.message, self.outcome, self.retryable = message, outcome, retryable
        self.fallback, self.retry_after_s = fallback, retry_after_s

    def __str__(self) -> str:
        return self.message


class OpenAITool(Tool):
    """Calls `{base_url}/chat/completions`, streaming deltas as throttled progress and checkpoints.

    Each call passes the provider gate (shared rate limits, concurrency, circuit breaker), is retried
    with backoff that honours Retry-After, and falls back to the next provider of the chain when one
    cannot answer.
    """

    kind: ClassVar[str] = "openai"
    input_schema: ClassVar[Mapping[str, JsonValue]] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "description": "a single user message"},
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "role": {"enum": ["system", "user", "assistant"]},
                        "content": {"type": "string"},
                    },
                    "required": ["role", "content"],
                    "additionalProperties": False,
                },
            },
            "system": {"type": "string", "description": "prepended as a system message"},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "max_tokens": {"type": "integer", "minimum": 1},
            "model": {"type": "string", "minLength": 1, "description": "overrides the tool's model"},
        },
        "oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}],
        "additionalProperties": False,
    }

    def __init__(
        self,
        name: str,
        settings: ToolSettings,
        *,
        limits: ProviderSettings | None = None,
        fallbacks: Sequence[Endpoint] = (),
        gate: ProviderGate | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """Args: transport: only for tests that stub a provider we cannot run (httpx.MockTransport)."""
        super().__init__(name)
        if not settings.base_url or not settings.model:
            raise ValueError(f"openai tool {name!r} needs base_url and model")
        own = Endpoint(name, settings, settings.provider or name, limits or ProviderSettings())
        self._chain = (own, *fallbacks)
        self._settings = settings
        self.url = own.url
        self._gate: ProviderGate = gate or OpenGate()
        self._rng = rng or random.Random()
        self._clock: Callable[[], float] = time.time
        # One client per tool: connections to the providers are reused across calls.
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(settings.timeout_s), transport=transport)

    async def aclose(self) -> None:
        """Close the provider connections."""
        await self._client.aclose()

    def request_body(self, tool_input: Mapping[str, JsonValue], endpoint: Endpoint | None = None) -> dict[str, Any]:
        """The chat-completions request for one validated tool input."""
        settings = (endpoint or self._chain[0]).settings
        body: dict[str, Any] = {
            # A model named in the input belongs to the tool's own provider; a fallback uses its own.
            "model": tool_input.get("model", settings.model) if endpoint in (None, self._chain[0]) else settings.model,
            "messages": _messages(tool_input),
            "stream": settings.stream,
        }
        max_tokens = tool_input.get("max_tokens", settings.max_tokens)
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if "temperature" in tool_input:
            body["temperature"] = tool_input["temperature"]
        return body

    async def run(self, call: ToolCall, ctx: ToolContext) -> JsonValue:
        """One completion from the first provider of the chain that can give it.

        Every failure is a `ToolError` saying what went wrong and whether a retry of the task may help.
        """
        own = self._chain[0].settings
        with tracing.span(f"chat {call.input.get('model', own.model)}", kind=tracing.SpanKind.CLIENT) as span:
            if span.is_recording():
                span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.provider.name": self._chain[0].provider,
                                     "gen_ai.request.model": str(call.input.get("model", own.model)),
                                     "server.address": urlsplit(self.url).hostname or ""})
            failures: list[str] = []
            for i, endpoint in enumerate(self._chain):
                try:
                    result = await self._call_with_retries(endpoint, call, ctx)
                except ProviderCallError as exc:
                    failures.append(f"{endpoint.tool}: {exc}" if len(self._chain) > 1 else str(exc))
                    if not exc.fallback or i == len(self._chain) - 1:
                        tracing.failed(span, "; ".join(failures))
                        raise ToolError("; ".join(failures), retryable=exc.retryable) from None
                    following = self._chain[i + 1].tool
                    tracing.event("fallback", {"from": endpoint.tool, "to": following, "reason": str(exc)})
                    await ctx.progress({"fallback": following, "reason": str(exc)})
                    continue
                logger.debug("completion done", extra={"tool": endpoint.tool, "task_id": call.task_id})
                if span.is_recording():
                    span.set_attributes(_span_result(result, endpoint))
                return {**result, "tool": endpoint.tool, "provider": endpoint.provider}
        raise AssertionError("unreachable: the chain is never empty")

    async def _call_with_retries(self, endpoint: Endpoint, call: ToolCall, ctx: ToolContext) -> dict[str, Any]:
        policy = RetryPolicy.of(endpoint.limits)
        headers = self._headers(endpoint)
        tracing.inject(headers)  # the provider joins the trace (W3C traceparent)
        body = self.request_body(call.input, endpoint)
        account = Account.of(endpoint.provider, headers.get("Authorization"))
        tokens = estimate_tokens(sum(len(m["content"]) for m in body["messages"]), body.get("max_tokens"))
        lease_s = endpoint.settings.timeout_s + LEASE_MARGIN_S
        failures, limited, limited_s = 0, 0, 0.0
        while True:
            asked_at = self._clock()
            try:
                permit = await self._gate.acquire(account, endpoint.limits, tokens, lease_s)
            except CircuitOpenError as exc:
                tracing.event("circuit open", {"tool": endpoint.tool, "reason": str(exc)})
                raise ProviderCallError(str(exc), Outcome.NEUTRAL, retryable=True) from None
            tracing.event("admitted", {"tool": endpoint.tool, "waited_ms": round((self._clock() - asked_at) * 1000, 3)})
            try:
                result = await self._call_once(endpoint, call.deadline, headers, body, ctx)
            except ProviderCallError as exc:
                await self._gate.release(permit, endpoint.limits, exc.outcome, retry_after_s=exc.retry_after_s)
                if not exc.retryable:
                    raise
                if exc.outcome is Outcome.LIMITED:
                    delay_s = policy.delay_s(limited, exc.retry_after_s, self._rng)
                    if limited_s + delay_s > endpoint.limits.rate_limited_budget_s:
                        exc.message += f" (still rate limited after {limited + 1} attempts, {limited_s:.1f}s)"
                        raise
                    limited, limited_s = limited + 1, limited_s + delay_s
                else:
                    if failures >= policy.max_retries:
                        exc.message += f" (gave up after {failures + 1} attempts)"
                        raise
                    delay_s = policy.delay_s(failures, exc.retry_after_s, self._rng)
                    failures += 1
                if call.deadline is not None and self._clock() + delay_s >= call.deadline:
                    raise ToolError(f"task deadline too close to retry after: {exc}") from None
                retry = {"retry": failures + limited, "tool": endpoint.tool, "in_s": round(delay_s, 3),
                         "reason": str(exc)}
                tracing.event("retry", retry)
                await ctx.progress(retry)
                await asyncio.sleep(delay_s)  # backoff: pacing, not synchronisation
                continue
            except BaseException:
                await asyncio.shield(self._gate.release(permit, endpoint.limits, Outcome.NEUTRAL))
                raise
            used = result["usage"]["total_tokens"] or None
            await self._gate.release(permit, endpoint.limits, Outcome.OK, tokens_used=used)
            return result

    async def _call_once(
        self, endpoint: Endpoint, deadline: float | None, headers: dict[str, str], body: dict[str, Any],
        ctx: ToolContext,
    ) -> dict[str, Any]:
        """One HTTP request; failures become `ProviderCallError`s, the task deadline a `ToolError`."""
        limit_s, by_deadline = self._time_limit_s(endpoint, deadline)
        try:
            async with asyncio.timeout(limit_s):
                async with self._client.stream("POST", endpoint.url, json=body, headers=headers) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise self._http_error(endpoint, response)
                    if response.headers.get("content-type", "").startswith("text/event-stream"):
                        return await _read_stream(response, ctx, endpoint.settings.model)
                    await response.aread()  # some servers ignore `stream: true`
                    return _parse_completion(response.content)
        except (TimeoutError, httpx.TimeoutException):
            if by_deadline:
                raise ToolError(f"task deadline reached while waiting for the provider ({limit_s:.3g}s)") from None
            raise ProviderCallError(f"provider timed out after {limit_s:g}s", Outcome.FAILED, True) from None
        except httpx.ConnectError:
            base_url = endpoint.settings.base_url
            raise ProviderCallError(f"cannot reach provider at {base_url}", Outcome.FAILED, True) from None
        except httpx.RequestError as exc:  # `from None` everywhere: httpx errors carry the request, and so the key
            message = f"request to provider at {endpoint.settings.base_url} failed: {type(exc).__name__}"
            raise ProviderCallError(message, Outcome.FAILED, True) from None

    def _headers(self, endpoint: Endpoint) -> dict[str, str]:
        key = endpoint.settings.api_key
        if key is not None:
            return {"Authorization": f"Bearer {key.get_secret_value()}"}
        if not _is_local(endpoint.settings.base_url or ""):
            raise ProviderCallError(f"no API key for tool {endpoint.tool!r}: {_key_hint(endpoint)}",
                                    Outcome.NEUTRAL, retryable=False)
        return {}

    def _time_limit_s(self, endpoint: Endpoint, deadline: float | None) -> tuple[float, bool]:
        """Seconds this call may take, and whether the task deadline (not timeout_s) set it."""
        timeout_s = endpoint.settings.timeout_s
        if deadline is None:
            return timeout_s, False
        left_s = deadline - self._clock()
        if left_s <= 0:
            raise ToolError("task deadline passed before the provider was called")
        return (left_s, True) if left_s < timeout_s else (timeout_s, False)

    def _http_error(self, endpoint: Endpoint, response: httpx.Response) -> ProviderCallError:
        status = response.status_code
        detail = _error_detail(response)
        if status in (401, 403):
            message = f"provider rejected the API key for tool {endpoint.tool!r} ({status}); {_key_hint(endpoint)}"
            return ProviderCallError(message, Outcome.NEUTRAL, retryable=False)
        if status == 429:
            retry_after_s = _retry_after_s(response)
            hint = "no retry-after given" if retry_after_s is None else f"retry after {retry_after_s:g}s"
            return ProviderCallError(f"provider rate limit (429): {hint}", Outcome.LIMITED, True,
                                     retry_after_s=retry_after_s)
        if status >= 500 or status == 408:
            return ProviderCallError(f"provider error {status}: {detail}", Outcome.FAILED, True,
                                     retry_after_s=_retry_after_s(response))
        # 400, 413, 422: the request itself is wrong, another provider would refuse it too
        request_fault = status in (400, 413, 422)
        return ProviderCallError(f"provider refused the request ({status}): {detail}", Outcome.NEUTRAL, False,
                                 fallback=not request_fault)


def _span_result(result: Mapping[str, Any], endpoint: Endpoint) -> tracing.Attributes:
    usage = result["usage"]
    return {"gen_ai.response.model": str(result.get("model") or ""), "orchestrator.provider.tool": endpoint.tool,
            "gen_ai.usage.input_tokens": usage["prompt_tokens"], "gen_ai.usage.output_tokens": usage["completion_tokens"],
            "gen_ai.response.finish_reasons": str(result.get("finish_reason") or "")}


def _key_hint(endpoint: Endpoint) -> str:
    env = endpoint.settings.api_key_env
    return f"set {env}" if env else "set api_key in the tool's settings"


def _messages(tool_input: Mapping[str, JsonValue]) -> list[dict[str, str]]:
    if "messages" in tool_input:
        messages = [{"role": m["role"], "content": m["content"]} for m in tool_input["messages"]]
    else:
        messages = [{"role": "user", "content": tool_input["prompt"]}]
    if "system" in tool_input:
        messages.insert(0, {"role": "system", "content": tool_input["system"]})
    return messages


async def _read_stream(response: httpx.Response, ctx: ToolContext, model: str | None) -> dict[str, Any]:
    text: list[str] = []
    pending: list[str] = []
    chars = reported_chars = 0
    reported_at = float("-inf")
    usage, finish_reason, done = None, None, False
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, `: keep-alive` comments, `event:` lines
        payload = line[len("data:"):].strip()
        if payload == "[DONE]":
            done = True
            break
        chunk = _parse_chunk(payload)
        model = chunk.model or model
        usage = chunk.usage or usage
        finish_reason = chunk.finish_reason or finish_reason
        if chunk.content:
            text.append(chunk.content)
            pending.append(chunk.content)
            chars += len(chunk.content)
        now = time.monotonic()
        if pending and (now - reported_at >= PROGRESS_INTERVAL_S or chars - reported_chars >= PROGRESS_CHARS):
            await _report(ctx, pending, chars, text)
            pending, reported_at, reported_chars = [], now, chars
    if pending:
        await _report(ctx, pending, chars, text)
    if not done and finish_reason is None:
        raise ProviderCallError("provider stream ended before the completion finished", Outcome.FAILED, True)
    return _result("".join(text), model, usage, finish_reason)


def chat_completions_url(base_url: str) -> str:
    """The endpoint under an OpenAI-compatible base URL (`https://api.deepseek.com`, `http://host/v1`)."""
    return base_url.rstrip("/") + "/chat/completions"


async def _report(ctx: ToolContext, pending: list[str], chars: int, text: list[str]) -> None:
    await ctx.checkpoint({"partial": "".join(text)}, {"delta": "".join(pending), "chars": chars})


def _is_local(base_url: str) -> bool:
    """Loopback and private-network servers (vLLM, Ollama, the fake provider) may run without a key."""
    host = urlsplit(base_url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private


def _parse_completion(content: bytes) -> dict[str, Any]:
    """A provider answering garbage is failing: retryable, and it counts towards its circuit."""
    try:
        data = json.loads(content)
        choice = data["choices"][0]
        text = choice["message"]["content"] or ""
        if not isinstance(text, str):
            raise TypeError("content is not a string")
        return _result(text, data.get("model"), data.get("usage"), choice.get("finish_reason"))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise ProviderCallError("malformed response from provider: not an OpenAI chat completion",
                                Outcome.FAILED, True) from None


@dataclass(frozen=True, slots=True)
class _Chunk:
    content: str
    model: str | None
    usage: Any
    finish_reason: str | None


def _parse_chunk(payload: str) -> _Chunk:
    try:
        data = json.loads(payload)
        choices = data.get("choices") or []  # empty in a usage-only chunk
        content = "".join((c.get("delta") or {}).get("content") or "" for c in choices)
        finish_reason = next((c["finish_reason"] for c in choices if c.get("finish_reason")), None)
        return _Chunk(content, data.get("model"), data.get("usage"), finish_reason)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ProviderCallError("malformed stream from provider: a chunk is not an OpenAI completion chunk",
                                Outcome.FAILED, True) from None


def _result(text: str, model: Any, usage: Any, finish_reason: Any) -> dict[str, Any]:
    counts = usage if isinstance(usage, dict) else {}
    return {
        "text": text,
        "model": model,
        "usage": {k: _count(counts.get(k)) for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
        "finish_reason": finish_reason,
    }


def _retry_after_s(response: httpx.Response) -> float | None:
    """The provider's wait request: `retry-after-ms` (OpenAI), else `Retry-After` in seconds or as an HTTP date."""
    headers = response.headers
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after", "").strip()
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (ValueError, TypeError, OverflowError):
        return None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _error_detail(response: httpx.Response) -> str:
    """The provider's own error message, short; never our request."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text
    return str(message).strip()[:_ERROR_DETAIL_CHARS] or response.reason_phrase
