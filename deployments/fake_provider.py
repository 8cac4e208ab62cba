"""A fake OpenAI-compatible chat-completions server for tests, benchmarks and offline demos.

Latency (with a seeded distribution and a slow first byte), token streaming, provider-style rate
limits (RPM and TPM token buckets, a concurrency cap; 429 with Retry-After), 5xx at a set ratio,
an outage switch, malformed bodies and canned replies are set by `FakeProviderConfig` and can be
changed while it runs through `POST /_control`. `GET /_stats` counts what it answered.

    python -m deployments.fake_provider --port 8901 --latency-ms 50 --rpm 60 --burst 5
    orchestrator fake-llm --port 8901 --latency-ms 50 --rpm 60 --burst 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.types import Receive, Scope, Send

logger = logging.getLogger(__name__)

LatencyDistribution = Literal["fixed", "uniform", "normal", "lognormal"]

CONCURRENCY_RETRY_AFTER_S = 0.1  # a hint only: a slot frees when some stream ends, which we cannot foresee
_LIMIT_FIELDS = ("rate_limit_rpm", "rate_limit_burst", "rate_limit_tpm", "rate_limit_token_burst")


class FakeProviderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = "fake-model"
    api_key: str | None = Field(default=None, description="when set, requests need `Authorization: Bearer <key>`")
    # latency
    latency_ms: int = Field(default=0, ge=0, description="mean total time of a completion, first byte included")
    latency_jitter_ms: int = Field(
        default=0, ge=0, description="spread around latency_ms: half-width (uniform) or standard deviation (normal, lognormal)"
    )
    latency_distribution: LatencyDistribution = Field(default="uniform", description="'fixed' ignores the jitter")
    first_byte_ms: int = Field(
        default=0, ge=0, description="delay before the response headers; the rest of the latency is spread over the chunks"
    )
    seed: int | None = Field(default=None, description="seeds the latency and error_ratio draws; setting it restarts them")
    # replies
    reply_tokens: int | None = Field(default=None, ge=1, description="reply 'tok1 tok2 … tokN' instead of echo/responses")
    responses: dict[str, str] = Field(
        default_factory=dict, description="last user message contains key -> reply with value; else 'echo: <message>'"
    )
    # rate limits (None: unlimited)
    rate_limit_rpm: float | None = Field(default=None, gt=0, description="requests per minute, a token bucket")
    rate_limit_burst: int = Field(default=1, ge=1, description="capacity of the request bucket")
    rate_limit_tpm: float | None = Field(default=None, gt=0, description="prompt+completion words per minute")
    rate_limit_token_burst: int | None = Field(
        default=None, ge=1, description="capacity of the token bucket; default one minute's worth (rate_limit_tpm)"
    )
    max_concurrency: int | None = Field(default=None, ge=1, description="requests in flight, open streams included")
    # failures
    down: bool = Field(default=False, description="an outage: every completion answers 503 at once")
    error_ratio: float = Field(default=0.0, ge=0, le=1, description="this share of admitted completions fails")
    error_status: int = Field(default=503, ge=500, le=599)
    fail_next: int = Field(default=0, ge=0, description="answer this many next completions with fail_status")
    fail_status: int = Field(default=500, ge=400, le=599)
    retry_after_s: float = Field(default=1.0, ge=0, description="Retry-After sent with a fail_next 429")
    malformed_next: int = Field(default=0, ge=0, description="answer this many next completions with a broken body")


# ---------------------------------------------------------------- latency


def sample_latency_ms(rng: random.Random, mean_ms: float, jitter_ms: float, distribution: LatencyDistribution) -> float:
    """One completion's total latency in ms, never negative.

    Bounds: fixed = mean; uniform in [mean - jitter, mean + jitter]; normal (sd = jitter) cut to
    mean ± 3 jitter; lognormal with that mean and sd, capped at mean + 10 jitter. All clamped at 0.
    """
    if distribution == "fixed" or jitter_ms <= 0:
        return max(mean_ms, 0.0)
    if distribution == "uniform":
        value = rng.uniform(mean_ms - jitter_ms, mean_ms + jitter_ms)
    elif distribution == "normal":
        value = min(max(rng.gauss(mean_ms, jitter_ms), mean_ms - 3 * jitter_ms), mean_ms + 3 * jitter_ms)
    else:
        if mean_ms <= 0:
            return 0.0
        sigma2 = math.log1p((jitter_ms / mean_ms) ** 2)
        value = min(rng.lognormvariate(math.log(mean_ms) - sigma2 / 2, math.sqrt(sigma2)), mean_ms + 10 * jitter_ms)
    return max(value, 0.0)


# ---------------------------------------------------------------- rate limits


@dataclass(slots=True)
class TokenBucket:
    """Refilled continuously at `rate_per_s` up to `capacity`; starts full."""

    rate_per_s: float
    capacity: float
    tokens: float
    updated_at: float  # monotonic seconds

    @classmethod
    def full(cls, rate_per_s: float, capacity: float, now: float) -> TokenBucket:
        return cls(rate_per_s, capacity, capacity, now)

    def wait_s(self, cost: float, now: float) -> float | None:
        """Seconds until `cost` can be taken (0: now); None when it exceeds the capacity (never)."""
        self._refill(now)
        if cost > self.capacity:
            return None
        return max(0.0, (cost - self.tokens) / self.rate_per_s)

    def take(self, cost: float, now: float) -> None:
        self._refill(now)
        self.tokens -= cost

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + max(now - self.updated_at, 0.0) * self.rate_per_s)
        self.updated_at = now


@dataclass(frozen=True, slots=True)
class _Rejection:
    kind: str  # OpenAI's error type: "requests" or "tokens"
    message: str
    retry_after_s: float | None  # None: retrying cannot help


def _limit_buckets(cfg: FakeProviderConfig, now: float) -> tuple[TokenBucket | None, TokenBucket | None]:
    rpm = None if cfg.rate_limit_rpm is None else TokenBucket.full(cfg.rate_limit_rpm / 60, cfg.rate_limit_burst, now)
    tpm = None
    if cfg.rate_limit_tpm is not None:
        capacity = cfg.rate_limit_token_burst if cfg.rate_limit_token_burst is not None else cfg.rate_limit_tpm
        tpm = TokenBucket.full(cfg.rate_limit_tpm / 60, capacity, now)
    return rpm, tpm


# ---------------------------------------------------------------- state and stats


@dataclass(slots=True)
class _Stats:
    requests: int = 0  # every POST /v1/chat/completions
    admitted: int = 0  # passed the rate limits
    completed: int = 0  # answered 200 with a well-formed completion
    rate_limited: int = 0  # answered 429
    errors: int = 0  # answered 5xx
    client_errors: int = 0  # answered another 4xx (bad body, bad key)
    malformed: int = 0  # answered a broken body (malformed_next)
    in_flight: int = 0  # admitted and not yet fully answered
    max_in_flight: int = 0
    prompt_tokens: int = 0  # served in 200 answers
    completion_tokens: int = 0
    first_admission_at: float | None = None  # unix time
    last_admission_at: float | None = None
    last_request: Any = None
    last_traceparent: str | None = None  # the W3C trace context header of the last completion request


class _Slot:
    """One admitted request's place in flight; releasing twice is harmless."""

    def __init__(self, stats: _Stats) -> None:
        self._stats = stats
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._stats.in_flight -= 1


class _State:
    def __init__(self, config: FakeProviderConfig) -> None:
        self.config = config
        self.stats = _Stats()
        self.latency_rng, self.error_rng = _rngs(config.seed)
        self.rpm_bucket, self.tpm_bucket = _limit_buckets(config, time.monotonic())

    def reconfigure(self, config: FakeProviderConfig, changed: set[str]) -> None:
        """Apply a new config; limits whose settings changed start again with full buckets."""
        old, self.config = self.config, config
        if "seed" in changed:
            self.latency_rng, self.error_rng = _rngs(config.seed)
        if any(getattr(old, f) != getattr(config, f) for f in _LIMIT_FIELDS):
            self.rpm_bucket, self.tpm_bucket = _limit_buckets(config, time.monotonic())

    def reset_stats(self) -> None:
        in_flight = self.stats.in_flight  # a live gauge, not a counter
        self.stats = _Stats(in_flight=in_flight, max_in_flight=in_flight)

    def admit(self, cost_tokens: int, now: float) -> _Rejection | _Slot:
        """Take a request slot and its tokens if every limit allows; a rejection consumes nothing."""
        cfg = self.config
        problems: list[tuple[str, str]] = []
        waits: list[float] = []
        if cfg.max_concurrency is not None and self.stats.in_flight >= cfg.max_concurrency:
            problems.append(("requests", f"too many concurrent requests (limit {cfg.max_concurrency})"))
            waits.append(CONCURRENCY_RETRY_AFTER_S)
        if self.rpm_bucket is not None:
            wait_s = self.rpm_bucket.wait_s(1, now)
            if wait_s:
                problems.append(("requests", f"on requests per min (RPM): Limit {cfg.rate_limit_rpm:g}, Requested 1"))
                waits.append(wait_s)
        if self.tpm_bucket is not None:
            wait_s = self.tpm_bucket.wait_s(cost_tokens, now)
            limit = f"Limit {cfg.rate_limit_tpm:g}, Requested {cost_tokens}"
            if wait_s is None:
                return _Rejection(
                    "tokens",
                    f"Request too large for {cfg.model} on tokens per min (TPM): {limit} "
                    f"(at most {self.tpm_bucket.capacity:g} at once). Reduce the prompt or max_tokens.",
                    None,
                )
            if wait_s:
                problems.append(("tokens", f"on tokens per min (TPM): {limit}"))
                waits.append(wait_s)
        if problems:
            retry_after_s = max(waits)
            kind, what = problems[0]
            message = f"Rate limit reached for {cfg.model} {what}. Please try again in {_seconds(retry_after_s)}s."
            return _Rejection(kind, message, retry_after_s)
        if self.rpm_bucket is not None:
            self.rpm_bucket.take(1, now)
        if self.tpm_bucket is not None:
            self.tpm_bucket.take(cost_tokens, now)
        stats = self.stats
        stats.admitted += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        stats.last_admission_at = time.time()
        if stats.first_admission_at is None:
            stats.first_admission_at = stats.last_admission_at
        return _Slot(stats)

    def answered(self, response: Response) -> Response:
        """Count an answer by its status."""
        status = response.status_code
        if status == 200:
            self.stats.completed += 1
        elif status == 429:
            self.stats.rate_limited += 1
        elif status >= 500:
            self.stats.errors += 1
        else:
            self.stats.client_errors += 1
        return response

    def served(self, response: Response, completion: _Completion) -> Response:
        self.stats.prompt_tokens += completion.usage["prompt_tokens"]
        self.stats.completion_tokens += completion.usage["completion_tokens"]
        return self.answered(response)

    def sample_latency_s(self) -> float:
        cfg = self.config
        return sample_latency_ms(self.latency_rng, cfg.latency_ms, cfg.latency_jitter_ms, cfg.latency_distribution) / 1000


def _rngs(seed: int | None) -> tuple[random.Random, random.Random]:
    """Separate streams, so turning on jitter does not change which requests error_ratio fails."""
    if seed is None:
        return random.Random(), random.Random()
    return random.Random(f"{seed}:latency"), random.Random(f"{seed}:errors")


# ---------------------------------------------------------------- the app


def create_app(config: FakeProviderConfig | None = None) -> FastAPI:
    """The provider app; each app has its own config, random streams, rate-limit buckets and stats."""
    state = _State(config or FakeProviderConfig())
    app = FastAPI(title="fake OpenAI-compatible provider")

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        if state.config.down:
            return _outage()
        denied = _check_auth(state.config, request)
        if denied is not None:
            return denied
        return JSONResponse({"object": "list", "data": [{"id": state.config.model, "object": "model", "owned_by": "fake"}]})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        state.stats.requests += 1
        state.stats.last_traceparent = request.headers.get("traceparent")
        cfg = state.config
        try:
            body = await request.json()
        except ValueError:
            return state.answered(_error(400, "request body is not valid JSON", "invalid_request_error"))
        state.stats.last_request = body
        if cfg.down:
            return state.answered(_outage())
        denied = _check_auth(cfg, request)
        if denied is not None:
            return state.answered(denied)
        if cfg.fail_next > 0:
            cfg.fail_next -= 1
            return state.answered(_failure(cfg))
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages:
            return state.answered(_error(400, "messages must be a non-empty array", "invalid_request_error"))
        stream = bool(body.get("stream"))
        completion = _completion(cfg, body, messages)
        admission = state.admit(completion.usage["total_tokens"], time.monotonic())
        if isinstance(admission, _Rejection):
            return state.answered(_rate_limited(admission))
        handed_off = False  # to the streaming response, which releases the slot when the stream ends
        try:
            if cfg.error_ratio > 0 and state.error_rng.random() < cfg.error_ratio:
                return state.answered(_server_error(cfg.error_status))
            if cfg.malformed_next > 0:
                cfg.malformed_next -= 1
                state.stats.malformed += 1
                return _malformed(stream)
            latency_s = state.sample_latency_s()
            first_byte_s = cfg.first_byte_ms / 1000
            await asyncio.sleep(first_byte_s)
            rest_s = max(latency_s - first_byte_s, 0.0)
            if stream:
                step_s = rest_s / max(len(completion.pieces), 1)
                response = _ReleasingStream(_stream(completion, step_s), admission.release)
                handed_off = True
                return state.served(response, completion)
            await asyncio.sleep(rest_s)  # the provider "thinking"
            return state.served(JSONResponse(completion.message()), completion)
        finally:
            if not handed_off:
                admission.release()

    @app.post("/_control")
    async def control(changes: dict[str, Any]) -> Response:
        try:
            config = FakeProviderConfig.model_validate({**state.config.model_dump(), **changes})
        except ValidationError as exc:
            return _error(422, f"bad control change: {_describe(exc)}", "invalid_request_error")
        state.reconfigure(config, set(changes))
        logger.info("fake provider reconfigured", extra={"changes": sorted(changes)})
        return JSONResponse(state.config.model_dump())

    @app.get("/_stats")
    async def stats() -> dict[str, Any]:
        return asdict(state.stats)

    @app.post("/_reset_stats")
    async def reset_stats() -> dict[str, Any]:
        state.reset_stats()
        return asdict(state.stats)

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


def _completion(cfg: FakeProviderConfig, body: dict[str, Any], messages: list[Any]) -> _Completion:
    pieces = _pieces(_reply(cfg, messages))
    finish_reason = "stop"
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and len(pieces) > max_tokens:
        pieces, finish_reason = pieces[:max_tokens], "length"
    return _Completion(
        model=str(body.get("model") or cfg.model),
        pieces=pieces,
        finish_reason=finish_reason,
        prompt_tokens=sum(_words(m.get("content")) for m in messages if isinstance(m, dict)),
    )


class _ReleasingStream(StreamingResponse):
    """Releases the request's slot when the stream ends however it ends: finished, failed or the client gone."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream")
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


async def _stream(completion: _Completion, step_s: float) -> AsyncIterator[str]:
    for i, piece in enumerate(completion.pieces):
        await asyncio.sleep(step_s)
        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
        yield _sse(completion.chunk(delta))
    if not completion.pieces:
        await asyncio.sleep(step_s)
    yield _sse(completion.chunk({}, completion.finish_reason))
    yield "data: [DONE]\n\n"


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _reply(cfg: FakeProviderConfig, messages: list[Any]) -> str:
    if cfg.reply_tokens is not None:
        return " ".join(f"tok{i}" for i in range(1, cfg.reply_tokens + 1))
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
        response.headers["retry-after-ms"] = str(round(cfg.retry_after_s * 1000))
        return response
    return _server_error(cfg.fail_status)


def _rate_limited(rejection: _Rejection) -> Response:
    response = _error(429, rejection.message, rejection.kind, code="rate_limit_exceeded")
    if rejection.retry_after_s is not None:
        wait_ms = _ceil_ms(rejection.retry_after_s)
        response.headers["Retry-After"] = _seconds(rejection.retry_after_s)
        response.headers["retry-after-ms"] = str(wait_ms)
    return response


def _ceil_ms(value_s: float) -> int:
    """Whole milliseconds, rounded up (at least 1), so a client that waits exactly this long is admitted."""
    return max(math.ceil(round(value_s * 1000, 6)), 1)


def _seconds(value_s: float) -> str:
    """`_ceil_ms` as decimal seconds: 0.35, 1.2, 3."""
    return f"{_ceil_ms(value_s) / 1000:.3f}".rstrip("0").rstrip(".")


def _server_error(status: int) -> Response:
    return _error(status, "The server had an error while processing your request.", "server_error")


def _outage() -> Response:
    return _error(503, "The service is temporarily unavailable (the fake provider is down).", "server_error")


def _malformed(stream: bool) -> Response:
    if stream:
        return Response('data: {"choices": [{"delta": \n\n', media_type="text/event-stream")
    return Response('{"choices": [{"message": ', media_type="application/json")


def _error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=status)


def _describe(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


# ---------------------------------------------------------------- command line

# Command-line option (python name) -> config field; shared by this module's main() and `orchestrator fake-llm`.
CLI_OPTIONS: dict[str, str] = {
    "latency_ms": "latency_ms",
    "jitter_ms": "latency_jitter_ms",
    "distribution": "latency_distribution",
    "first_byte_ms": "first_byte_ms",
    "reply_tokens": "reply_tokens",
    "rpm": "rate_limit_rpm",
    "tpm": "rate_limit_tpm",
    "burst": "rate_limit_burst",
    "token_burst": "rate_limit_token_burst",
    "concurrency": "max_concurrency",
    "error_ratio": "error_ratio",
    "model": "model",
    "api_key": "api_key",
    "seed": "seed",
}


def config_from_options(options: Mapping[str, Any]) -> FakeProviderConfig:
    """The config the command-line options describe (None: the default); ValueError says which option is wrong."""
    unknown = sorted(set(options) - set(CLI_OPTIONS))
    if unknown:
        raise ValueError(f"unknown fake provider options: {', '.join(unknown)}")
    try:
        return FakeProviderConfig(**{CLI_OPTIONS[k]: v for k, v in options.items() if v is not None})
    except ValidationError as exc:
        option_of = {field: option for option, field in CLI_OPTIONS.items()}
        why = "; ".join(
            f"--{option_of.get(str(e['loc'][0]), str(e['loc'][0])).replace('_', '-')}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"invalid fake provider option: {why}") from None


def serve(host: str, port: int, config: FakeProviderConfig | None = None, log_level: str = "warning") -> None:
    """Serve the fake provider until interrupted (blocking); open streams get 1 s to finish."""
    uvicorn.run(create_app(config), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.fake_provider", description="Fake OpenAI-compatible provider.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8901)
    parser.add_argument("--latency-ms", type=int, help="mean total time of a completion")
    parser.add_argument("--jitter-ms", type=int, help="spread of the latency")
    parser.add_argument("--distribution", choices=["fixed", "uniform", "normal", "lognormal"], help="default uniform")
    parser.add_argument("--first-byte-ms", type=int, help="delay before the response headers")
    parser.add_argument("--reply-tokens", type=int, help="reply with this many generated words")
    parser.add_argument("--rpm", type=float, help="requests per minute (token bucket)")
    parser.add_argument("--tpm", type=float, help="prompt+completion tokens per minute (token bucket)")
    parser.add_argument("--burst", type=int, help="request bucket capacity (default 1)")
    parser.add_argument("--token-burst", type=int, help="token bucket capacity (default: the tpm)")
    parser.add_argument("--concurrency", type=int, help="max requests in flight")
    parser.add_argument("--error-ratio", type=float, help="share of completions answered 503")
    parser.add_argument("--model", help="default fake-model")
    parser.add_argument("--api-key", help="require this bearer key")
    parser.add_argument("--seed", type=int, help="seed of the latency and error draws")
    args = vars(parser.parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    try:
        config = config_from_options(args)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.info("fake provider starting", extra={"base_url": f"http://{host}:{port}/v1"})
    try:
        serve(host, port, config, log_level="info")
    except KeyboardInterrupt:
        pass  # uvicorn shut down gracefully, then re-raised the Ctrl-C


if __name__ == "__main__":
    main()
