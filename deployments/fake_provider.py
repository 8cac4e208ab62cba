"""A fake OpenAI-compatible chat-completions server for tests and offline demos.

Latency, streaming, failures (429 with Retry-After, 5xx, malformed bodies) and canned replies are
set by `FakeProviderConfig` and can be changed while it runs through `POST /_control`.

    python -m deployments.fake_provider --port 8901 --latency-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger(__name__)


class FakeProviderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = "fake-model"
    api_key: str | None = Field(default=None, description="when set, requests need `Authorization: Bearer <key>`")
    latency_ms: int = Field(default=0, ge=0, description="per completion; spread over the chunks when streaming")
    fail_next: int = Field(default=0, ge=0, description="answer this many next completions with fail_status")
    fail_status: int = Field(default=500, ge=400, le=599)
    retry_after_s: float = Field(default=1.0, ge=0, description="Retry-After sent with a 429")
    malformed_next: int = Field(default=0, ge=0, description="answer this many next completions with a broken body")
    responses: dict[str, str] = Field(
        default_factory=dict, description="last user message contains key -> reply with value; else 'echo: <message>'"
    )


class _State:
    def __init__(self, config: FakeProviderConfig) -> None:
        self.config = config
        self.requests = 0
        self.last_request: Any = None


def create_app(config: FakeProviderConfig | None = None) -> FastAPI:
    """The provider app; each app has its own config and stats."""
    state = _State(config or FakeProviderConfig())
    app = FastAPI(title="fake OpenAI-compatible provider")

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        denied = _check_auth(state.config, request)
        if denied is not None:
            return denied
        return JSONResponse({"object": "list", "data": [{"id": state.config.model, "object": "model", "owned_by": "fake"}]})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        state.requests += 1
        cfg = state.config
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body is not valid JSON", "invalid_request_error")
        state.last_request = body
        denied = _check_auth(cfg, request)
        if denied is not None:
            return denied
        if cfg.fail_next > 0:
            cfg.fail_next -= 1
            return _failure(cfg)
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages:
            return _error(400, "messages must be a non-empty array", "invalid_request_error")
        stream = bool(body.get("stream"))
        if cfg.malformed_next > 0:
            cfg.malformed_next -= 1
            return _malformed(stream)
        pieces = _pieces(_reply(cfg, messages))
        finish_reason = "stop"
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, int) and len(pieces) > max_tokens:
            pieces, finish_reason = pieces[:max_tokens], "length"
        completion = _Completion(
            model=str(body.get("model") or cfg.model),
            pieces=pieces,
            finish_reason=finish_reason,
            prompt_tokens=sum(_words(m.get("content")) for m in messages if isinstance(m, dict)),
        )
        if stream:
            return StreamingResponse(_stream(completion, cfg.latency_ms / 1000), media_type="text/event-stream")
        await asyncio.sleep(cfg.latency_ms / 1000)  # the provider "thinking"
        return JSONResponse(completion.message())

    @app.post("/_control")
    async def control(changes: dict[str, Any]) -> Response:
        try:
            state.config = FakeProviderConfig.model_validate({**state.config.model_dump(), **changes})
        except ValidationError as exc:
            why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            return _error(422, f"bad control change: {why}", "invalid_request_error")
        logger.info("fake provider reconfigured", extra={"changes": sorted(changes)})
        return JSONResponse(state.config.model_dump())

    @app.get("/_stats")
    async def stats() -> dict[str, Any]:
        return {"requests": state.requests, "last_request": state.last_request}

    return app


class _Completion:
    def __init__(self, model: str, pieces: list[str], finish_reason: str, prompt_tokens: int) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model
        self.pieces = pieces
        self.finish_reason = finish_reason
        self.text = "".join(pieces)
        completion_tokens = _words(self.text)
        self.usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def message(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.text},
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": self.usage,
        }

    def chunk(self, delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        if finish_reason is not None:
            data["usage"] = self.usage
        return data


async def _stream(completion: _Completion, latency_s: float) -> AsyncIterator[str]:
    step_s = latency_s / max(len(completion.pieces), 1)
    for i, piece in enumerate(completion.pieces):
        await asyncio.sleep(step_s)
        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
        yield _sse(completion.chunk(delta))
    if not completion.pieces:
        await asyncio.sleep(latency_s)
    yield _sse(completion.chunk({}, completion.finish_reason))
    yield "data: [DONE]\n\n"


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _reply(cfg: FakeProviderConfig, messages: list[Any]) -> str:
    last_user = next(
        (m.get("content") for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), ""
    )
    text = last_user if isinstance(last_user, str) else ""
    for key, value in cfg.responses.items():
        if key in text:
            return value
    return f"echo: {text}"


def _pieces(text: str) -> list[str]:
    """Words with their trailing whitespace, so the pieces join back into `text` exactly."""
    return re.findall(r"\s*\S+\s*", text) if text.strip() else ([text] if text else [])


def _words(content: object) -> int:
    return len(content.split()) if isinstance(content, str) else 0


def _check_auth(cfg: FakeProviderConfig, request: Request) -> Response | None:
    if cfg.api_key is None or request.headers.get("authorization") == f"Bearer {cfg.api_key}":
        return None
    return _error(401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key")


def _failure(cfg: FakeProviderConfig) -> Response:
    if cfg.fail_status == 429:
        response = _error(429, "Rate limit reached; slow down.", "rate_limit_error", code="rate_limit_exceeded")
        response.headers["Retry-After"] = f"{cfg.retry_after_s:g}"
        return response
    return _error(cfg.fail_status, "The server had an error while processing your request.", "server_error")


def _malformed(stream: bool) -> Response:
    if stream:
        return Response('data: {"choices": [{"delta": \n\n', media_type="text/event-stream")
    return Response('{"choices": [{"message": ', media_type="application/json")


def _error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=status)


def serve(host: str, port: int, config: FakeProviderConfig | None = None, log_level: str = "warning") -> None:
    """Serve the fake provider until interrupted (blocking)."""
    uvicorn.run(create_app(config), host=host, port=port, log_level=log_level)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.fake_provider", description="Fake OpenAI-compatible provider.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8901)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--api-key", default=None, help="require this bearer key")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = FakeProviderConfig(model=args.model, latency_ms=args.latency_ms, api_key=args.api_key)
    logger.info("fake provider starting", extra={"base_url": f"http://{args.host}:{args.port}/v1"})
    serve(args.host, args.port, config, log_level="info")


if __name__ == "__main__":
    main()
