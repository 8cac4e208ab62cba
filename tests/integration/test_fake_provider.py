"""The fake OpenAI-compatible provider over real loopback HTTP: pacing, rate limits, errors, stats and its command."""

from __future__ import annotations

import json
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from deployments.fake_provider import FakeProviderConfig, config_from_options, sample_latency_ms
from tests.fakeprovider import RunningFakeProvider, fake_provider
from tests.support import eventually, free_port, wait_until

pytestmark = pytest.mark.integration

COMPLETIONS = "/v1/chat/completions"


def chat(prompt: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": prompt}], **extra}


@pytest.fixture
def running(request: pytest.FixtureRequest) -> Iterator[tuple[RunningFakeProvider, httpx.Client]]:
    """A provider with the test's config (`@pytest.mark.parametrize("running", [config], indirect=True)`) and a client."""
    config: FakeProviderConfig = getattr(request, "param", FakeProviderConfig())
    with fake_provider(config) as provider, httpx.Client(base_url=provider.url, timeout=10) as client:
        yield provider, client


def retry_after(response: httpx.Response) -> float:
    """The advertised wait, checking that both headers say the same."""
    seconds = float(response.headers["retry-after"])
    assert int(response.headers["retry-after-ms"]) == round(seconds * 1000)
    return seconds


# ---------------------------------------------------------------- rate limits


@pytest.mark.parametrize("running", [FakeProviderConfig(rate_limit_rpm=30, rate_limit_burst=3)], indirect=True)
def test_rpm_admits_the_burst_then_429_until_the_bucket_refills(running: tuple[RunningFakeProvider, httpx.Client]) -> None:
    provider, client = running
    started = time.monotonic()
    assert [client.post(COMPLETIONS, json=chat()).status_code for _ in range(3)] == [200, 200, 200]
    limited = client.post(COMPLETIONS, json=chat())
    elapsed_s = time.monotonic() - started
    assert limited.status_code == 429
    error = limited.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert "requests per min" in error["message"]
    # One request refills in 2 s at 30 RPM; the bucket started draining no earlier than `started`.
    wait_s = retry_after(limited)
    assert 2.0 - elapsed_s - 0.001 <= wait_s <= 2.0
    # A rejected request takes nothing from the bucket: the wait only shrinks.
    again = client.post(COMPLETIONS, json=chat())
    assert again.status_code == 429
    again_wait_s = retry_after(again)
    assert again_wait_s <= wait_s
    time.sleep(again_wait_s)  # the protocol: wait as advised, then retry
    assert client.post(COMPLETIONS, json=chat()).status_code == 200
    stats = provider.stats()
    assert (stats["admitted"], stats["completed"], stats["rate_limited"]) == (4, 4, 2)


@pytest.mark.parametrize(
    "running",
    [FakeProviderConfig(rate_limit_tpm=600, rate_limit_token_burst=20, reply_tokens=3)],  # 10 tokens/s, 20 at once
    indirect=True,
)
def test_tpm_charges_prompt_and_completion_words(running: tuple[RunningFakeProvider, httpx.Client]) -> None:
    provider, client = running
    twelve_words = " ".join(["word"] * 12)
    first = client.post(COMPLETIONS, json=chat(twelve_words))  # 12 + 3 = 15 of 20
    assert first.status_code == 200
    assert first.json()["usage"]["total_tokens"] == 15
    limited = client.post(COMPLETIONS, json=chat(twelve_words))  # needs 10 more: ~1 s
    assert limited.status_code == 429
    assert limited.json()["error"]["type"] == "tokens"
    assert 0 < retry_after(limited) <= 1.0
    # The rejected request charged nothing: a 1 + 3 token request still fits in what is left.
    assert client.post(COMPLETIONS, json=chat("small")).status_code == 200
    # More than the bucket holds can never be admitted: 429 without a Retry-After.
    too_large = client.post(COMPLETIONS, json=chat(" ".join(["word"] * 30)))
    assert too_large.status_code == 429
    assert "Request too large" in too_large.json()["error"]["message"]
    assert "retry-after" not in too_large.headers
    limited = client.post(COMPLETIONS, json=chat(twelve_words))
    assert limited.status_code == 429
    time.sleep(retry_after(limited))  # the protocol: wait as advised, then retry
    assert client.post(COMPLETIONS, json=chat(twelve_words)).status_code == 200
    stats = provider.stats()
    assert stats["prompt_tokens"] == 12 + 1 + 12
    assert stats["completion_tokens"] == 3 * 3
    assert stats["rate_limited"] == 3


async def test_concurrency_limit_counts_open_streams() -> None:
    slow = FakeProviderConfig(max_concurrency=2, reply_tokens=30, latency_ms=60_000)  # a token every 2 s
    with fake_provider(slow) as provider:
        async with httpx.AsyncClient(base_url=provider.url, timeout=10) as client:
            async with (
                client.stream("POST", COMPLETIONS, json=chat(stream=True)) as first,
                client.stream("POST", COMPLETIONS, json=chat(stream=True)) as second,
            ):
                assert (first.status_code, second.status_code) == (200, 200)
                limited = await client.post(COMPLETIONS, json=chat())
                assert limited.status_code == 429
                assert limited.headers["retry-after"] == "0.1"
                assert limited.headers["retry-after-ms"] == "100"
                assert "concurrent" in limited.json()["error"]["message"]
                assert (provider.stats()["in_flight"], provider.stats()["max_in_flight"]) == (2, 2)
            # Both clients hung up mid-stream: their slots free without the streams finishing.

            async def drained() -> bool:
                return provider.stats()["in_flight"] == 0

            await eventually(drained, timeout_s=5, what="the closed streams to leave flight")
            provider.control(latency_ms=0)
            assert (await client.post(COMPLETIONS, json=chat())).status_code == 200
            assert provider.stats()["rate_limited"] == 1


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize("running", [FakeProviderConfig(error_ratio=0.25, seed=7)], indirect=True)
def test_error_ratio_fails_that_share_reproducibly(running: tuple[RunningFakeProvider, httpx.Client]) -> None:
    provider, client = running
    first = [client.post(COMPLETIONS, json=chat()).status_code for _ in range(200)]
    provider.control(seed=7)  # setting the seed restarts the draws
    second = [client.post(COMPLETIONS, json=chat()).status_code for _ in range(200)]
    assert first == second
    assert set(first) == {200, 503}
    assert 30 <= first.count(503) <= 70  # 50 expected; the seed makes the count fixed
    assert provider.stats()["errors"] == 2 * first.count(503)
    provider.control(error_ratio=1, error_status=502)
    failed = client.post(COMPLETIONS, json=chat())
    assert failed.status_code == 502
    assert failed.json()["error"]["type"] == "server_error"


def test_down_answers_503_until_up_again(running: tuple[RunningFakeProvider, httpx.Client]) -> None:
    provider, client = running
    provider.control(down=True)
    assert client.post(COMPLETIONS, json=chat()).status_code == 503
    assert client.get("/v1/models").status_code == 503
    provider.control(down=False)
    assert client.post(COMPLETIONS, json=chat()).status_code == 200


def test_control_rejects_invalid_changes(running: tuple[RunningFakeProvider, httpx.Client]) -> None:
    provider, client = running
    for change in ({"latency_distribution": "pareto"}, {"error_ratio": 1.5}, {"rate_limit_rpm": 0}, {"nope": 1}):
        response = client.post("/_control", json=change)
        assert response.status_code == 422, change
        assert next(iter(change)) in response.json()["error"]["message"]
    assert client.post("/_control", json={}).json() == FakeProviderConfig().model_dump()


# ---------------------------------------------------------------- pacing


@pytest.mark.parametrize("stream", [False, True])
def test_first_byte_ms_delays_the_response_headers(stream: bool) -> None:
    with fake_provider(FakeProviderConfig(first_byte_ms=300)) as provider:
        started = time.monotonic()
        with httpx.stream("POST", f"{provider.url}{COMPLETIONS}", json=chat(stream=stream), timeout=10) as response:
            headers_s = time.monotonic() - started
            assert response.status_code == 200
            response.read()
    assert headers_s >= 0.3


def test_latency_is_spread_over_the_stream_after_the_first_byte() -> None:
    config = FakeProviderConfig(first_byte_ms=200, latency_ms=600, latency_distribution="fixed", reply_tokens=4)
    with fake_provider(config) as provider:
        started = time.monotonic()
        with httpx.stream("POST", f"{provider.url}{COMPLETIONS}", json=chat(stream=True), timeout=10) as response:
            headers_s = time.monotonic() - started
            lines = [line for line in response.iter_lines() if line.startswith("data: {")]
        total_s = time.monotonic() - started
    assert headers_s >= 0.2
    assert total_s >= 0.6  # latency_ms is the whole completion, first byte included
    deltas = [json.loads(line[len("data: "):])["choices"][0]["delta"].get("content", "") for line in lines]
    assert "".join(deltas) == "tok1 tok2 tok3 tok4"


@pytest.mark.parametrize("running", [FakeProviderConfig(reply_tokens=500)], indirect=True)
def test_reply_tokens_makes_long_streams(running: tuple[RunningFakeProvider, httpx.Client]) -> None:
    _, client = running
    with client.stream("POST", COMPLETIONS, json=chat(stream=True)) as response:
        chunks = [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: {")]
    contents = [c["choices"][0]["delta"]["content"] for c in chunks if "content" in c["choices"][0]["delta"]]
    assert len(contents) == 500
    assert "".join(contents) == " ".join(f"tok{i}" for i in range(1, 501))
    assert chunks[-1]["usage"]["completion_tokens"] == 500
    truncated = client.post(COMPLETIONS, json=chat(max_tokens=3)).json()
    assert truncated["choices"][0] == {
        "index": 0, "message": {"role": "assistant", "content": "tok1 tok2 tok3 "}, "finish_reason": "length"
    }


@pytest.mark.parametrize(
    ("distribution", "low", "high"),
    [("fixed", 100, 100), ("uniform", 60, 140), ("normal", 0, 220), ("lognormal", 0, 500)],
)
def test_latency_samples_stay_in_bounds_and_repeat_with_a_seed(distribution: Any, low: float, high: float) -> None:
    rng = random.Random(3)
    samples = [sample_latency_ms(rng, 100, 40, distribution) for _ in range(2000)]
    rng = random.Random(3)
    assert [sample_latency_ms(rng, 100, 40, distribution) for _ in range(2000)] == samples
    assert all(low <= s <= high for s in samples)
    assert abs(statistics.fmean(samples) - 100) < 5
    if distribution != "fixed":
        assert len(set(samples)) > 1000
        assert statistics.stdev(samples) > 15


@pytest.mark.parametrize("distribution", ["uniform", "normal", "lognormal"])
def test_latency_is_never_negative(distribution: Any) -> None:
    rng = random.Random(1)
    samples = [sample_latency_ms(rng, 10, 50, distribution) for _ in range(1000)]
    assert min(samples) >= 0
    assert max(samples) > 10


def test_provider_waits_at_least_the_sampled_latency() -> None:
    config = FakeProviderConfig(latency_ms=150, latency_jitter_ms=50, latency_distribution="uniform", seed=11)
    with fake_provider(config) as provider, httpx.Client(base_url=provider.url, timeout=10) as client:
        durations = []
        for _ in range(3):
            started = time.monotonic()
            assert client.post(COMPLETIONS, json=chat()).status_code == 200
            durations.append(time.monotonic() - started)
    assert all(d >= 0.1 for d in durations)  # uniform in [100, 200] ms: its lower bound holds per request


# ---------------------------------------------------------------- stats


def test_stats_count_every_outcome_and_reset(running: tuple[RunningFakeProvider, httpx.Client]) -> None:
    provider, client = running
    provider.control(api_key="sk-fake")
    key = {"Authorization": "Bearer sk-fake"}
    assert client.post(COMPLETIONS, json=chat("one two"), headers=key).status_code == 200  # 2 + 3 tokens
    assert client.post(COMPLETIONS, json=chat("one two")).status_code == 401
    provider.control(down=True)
    assert client.post(COMPLETIONS, json=chat(), headers=key).status_code == 503
    provider.control(down=False, fail_next=1, fail_status=429)
    assert client.post(COMPLETIONS, json=chat(), headers=key).status_code == 429
    provider.control(malformed_next=1)
    assert client.post(COMPLETIONS, json=chat(), headers=key).status_code == 200  # a broken body
    streamed = chat("three", stream=True)
    with client.stream("POST", COMPLETIONS, json=streamed, headers=key) as response:
        assert response.status_code == 200
        response.read()  # 1 + 2 tokens
    wait_until(lambda: provider.stats()["in_flight"] == 0, what="the stream to leave flight")
    stats = provider.stats()
    assert {k: stats[k] for k in ("requests", "admitted", "completed", "rate_limited", "errors", "client_errors",
                                  "malformed", "in_flight", "max_in_flight", "prompt_tokens", "completion_tokens")} == {
        "requests": 6, "admitted": 3, "completed": 2, "rate_limited": 1, "errors": 1, "client_errors": 1,
        "malformed": 1, "in_flight": 0, "max_in_flight": 1, "prompt_tokens": 3, "completion_tokens": 5,
    }
    assert stats["first_admission_at"] is not None
    assert stats["first_admission_at"] <= stats["last_admission_at"] <= time.time()
    assert stats["last_request"] == streamed

    cleared = provider.reset_stats()
    assert cleared == provider.stats()
    assert all(cleared[k] == 0 for k in ("requests", "admitted", "completed", "errors", "in_flight", "prompt_tokens"))
    assert (cleared["first_admission_at"], cleared["last_request"]) == (None, None)


# ---------------------------------------------------------------- the command


def test_options_map_to_config() -> None:
    config = config_from_options({"rpm": 60, "burst": 4, "jitter_ms": 5, "concurrency": 2, "seed": 9, "model": None})
    assert (config.rate_limit_rpm, config.rate_limit_burst, config.latency_jitter_ms) == (60, 4, 5)
    assert (config.max_concurrency, config.seed, config.model) == (2, 9, "fake-model")
    with pytest.raises(ValueError, match="--error-ratio"):
        config_from_options({"error_ratio": 2})


def test_fake_llm_command_serves_until_interrupted() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["fake-llm", "--port", str(port), "--model", "cli-model", "--api-key", "sk-cli", "--rpm", "600",
            "--burst", "5", "--first-byte-ms", "10", "--seed", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def serving() -> bool:
        if proc.poll() is not None:
            return True  # exited: fail below with its output
        try:
            return httpx.get(f"{url}/_stats", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(serving, timeout_s=20, what="`orchestrator fake-llm` to answer")
        assert proc.poll() is None, proc.communicate()
        reply = httpx.post(f"{url}{COMPLETIONS}", json=chat("hello there"),
                           headers={"Authorization": "Bearer sk-cli"}, timeout=10)
        assert reply.status_code == 200
        assert reply.json()["model"] == "cli-model"
        assert reply.json()["choices"][0]["message"]["content"] == "echo: hello there"
        config = httpx.post(f"{url}/_control", json={}, timeout=10).json()
        assert (config["rate_limit_rpm"], config["rate_limit_burst"], config["first_byte_ms"]) == (600, 5, 10)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            stdout, stderr = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0, stderr
    assert "fake-llm stopped" in stdout
