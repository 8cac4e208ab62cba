"""The `openai` tool: one chat completion from any OpenAI-compatible API (DeepSeek, Perplexity, vLLM, Ollama)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx

from orchestrator.errors import ToolError
from orchestrator.settings import ToolSettings
from orchestrator.tools.base import JsonValue, Tool, ToolCall, ToolContext

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.1  # a fast stream must not turn into thousands of event writes
PROGRESS_CHARS = 200
_ERROR_DETAIL_CHARS = 200


class OpenAITool(Tool):
    """Calls `{base_url}/chat/completions`, streaming deltas as throttled progress and checkpoints."""

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
        self, name: str, settings: ToolSettings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        """Args: transport: only for tests that stub a provider we cannot run (httpx.MockTransport)."""
        super().__init__(name)
        if not settings.base_url or not settings.model:
            raise ValueError(f"openai tool {name!r} needs base_url and model")
        self._settings = settings
        self._base_url = settings.base_url
        self._model = settings.model
        self.url = chat_completions_url(settings.base_url)
        self._clock: Callable[[], float] = time.time
        # One client per tool: connections to the provider are reused across calls.
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(settings.timeout_s), transport=transport)

    async def aclose(self) -> None:
        """Close the provider connections."""
        await self._client.aclose()

    def request_body(self, tool_input: Mapping[str, JsonValue]) -> dict[str, Any]:
        """The chat-completions request for one validated tool input."""
        if "messages" in tool_input:
            messages = [{"role": m["role"], "content": m["content"]} for m in tool_input["messages"]]
        else:
            messages = [{"role": "user", "content": tool_input["prompt"]}]
        if "system" in tool_input:
            messages.insert(0, {"role": "system", "content": tool_input["system"]})
        body: dict[str, Any] = {
            "model": tool_input.get("model", self._model),
            "messages": messages,
            "stream": self._settings.stream,
        }
        max_tokens = tool_input.get("max_tokens", self._settings.max_tokens)
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if "temperature" in tool_input:
            body["temperature"] = tool_input["temperature"]
        return body

    async def run(self, call: ToolCall, ctx: ToolContext) -> JsonValue:
        """One completion; every failure is a `ToolError` saying what went wrong and whether a retry may help."""
        headers = self._headers()
        body = self.request_body(call.input)
        limit_s, by_deadline = self._time_limit_s(call.deadline)
        try:
            async with asyncio.timeout(limit_s):
                async with self._client.stream("POST", self.url, json=body, headers=headers) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise self._http_error(response)
                    if response.headers.get("content-type", "").startswith("text/event-stream"):
                        result = await self._read_stream(response, ctx)
                    else:  # some servers ignore `stream: true`
                        await response.aread()
                        result = _parse_completion(response.content)
        except (TimeoutError, httpx.TimeoutException):
            if by_deadline:
                raise ToolError(f"task deadline reached while waiting for the provider ({limit_s:.3g}s)") from None
            raise ToolError(f"provider timed out after {limit_s:g}s", retryable=True) from None
        except httpx.ConnectError:
            raise ToolError(f"cannot reach provider at {self._base_url}", retryable=True) from None
        except httpx.RequestError as exc:  # `from None` everywhere: httpx errors carry the request, and so the key
            message = f"request to provider at {self._base_url} failed: {type(exc).__name__}"
            raise ToolError(message, retryable=True) from None
        logger.debug("completion done", extra={"tool": self.name, "task_id": call.task_id})
        return result

    def _headers(self) -> dict[str, str]:
        key = self._settings.api_key
        if key is not None:
            return {"Authorization": f"Bearer {key.get_secret_value()}"}
        if not _is_local(self._base_url):
            raise ToolError(f"no API key for tool {self.name!r}: {self._key_hint()}")
        return {}

    def _key_hint(self) -> str:
        env = self._settings.api_key_env
        return f"set {env}" if env else "set api_key in the tool's settings"

    def _time_limit_s(self, deadline: float | None) -> tuple[float, bool]:
        """Seconds this call may take, and whether the task deadline (not timeout_s) set it."""
        timeout_s = self._settings.timeout_s
        if deadline is None:
            return timeout_s, False
        left_s = deadline - self._clock()
        if left_s <= 0:
            raise ToolError("task deadline passed before the provider was called")
        return (left_s, True) if left_s < timeout_s else (timeout_s, False)

    def _http_error(self, response: httpx.Response) -> ToolError:
        status = response.status_code
        detail = _error_detail(response)
        if status in (401, 403):
            return ToolError(f"provider rejected the API key for tool {self.name!r} ({status}); {self._key_hint()}")
        if status == 429:
            return ToolError(f"provider rate limit (429): {_retry_after_hint(response)}", retryable=True)
        if status >= 500:
            return ToolError(f"provider error {status}: {detail}", retryable=True)
        return ToolError(f"provider refused the request ({status}): {detail}")

    async def _read_stream(self, response: httpx.Response, ctx: ToolContext) -> dict[str, Any]:
        text: list[str] = []
        pending: list[str] = []
        chars = reported_chars = 0
        reported_at = float("-inf")
        model, usage, finish_reason, done = self._model, None, None, False
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
            raise ToolError("provider stream ended before the completion finished", retryable=True)
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
    try:
        data = json.loads(content)
        choice = data["choices"][0]
        text = choice["message"]["content"] or ""
        if not isinstance(text, str):
            raise TypeError("content is not a string")
        return _result(text, data.get("model"), data.get("usage"), choice.get("finish_reason"))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise ToolError("malformed response from provider: not an OpenAI chat completion") from None


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
        raise ToolError("malformed stream from provider: a chunk is not an OpenAI completion chunk") from None


def _result(text: str, model: Any, usage: Any, finish_reason: Any) -> dict[str, Any]:
    counts = usage if isinstance(usage, dict) else {}
    return {
        "text": text,
        "model": model,
        "usage": {k: _count(counts.get(k)) for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
        "finish_reason": finish_reason,
    }


def _retry_after_hint(response: httpx.Response) -> str:
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return "no retry-after given"
    try:
        return f"retry after {float(value):g}s"
    except ValueError:
        return f"retry after {value}"  # an HTTP date


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _error_detail(response: httpx.Response) -> str:
    """The provider's own error message, short; never our request."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text
    return str(message).strip()[:_ERROR_DETAIL_CHARS] or response.reason_phrase
