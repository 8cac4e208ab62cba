"""Runs the fake OpenAI-compatible provider on a free loopback port in a background thread, for tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from deployments.fake_provider import FakeProviderConfig, create_app
from tests.support import served

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunningFakeProvider:
    url: str  # http://127.0.0.1:<port>

    @property
    def base_url(self) -> str:
        """What an `openai` tool's `base_url` should be."""
        return f"{self.url}/v1"

    def control(self, **changes: Any) -> dict[str, Any]:
        """Merge `changes` into the running provider's config (POST /_control)."""
        response = httpx.post(f"{self.url}/_control", json=changes)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        """Counters (requests, completed, rate_limited, errors, in_flight, tokens, …) and the last request body."""
        response = httpx.get(f"{self.url}/_stats")
        response.raise_for_status()
        return response.json()

    def reset_stats(self) -> dict[str, Any]:
        """Zero the counters (POST /_reset_stats); in_flight stays what is really in flight."""
        response = httpx.post(f"{self.url}/_reset_stats")
        response.raise_for_status()
        return response.json()


@contextmanager
def fake_provider(config: FakeProviderConfig | None = None, startup_timeout_s: float = 10) -> Iterator[RunningFakeProvider]:
    """Serve a fresh provider for the duration of the block."""
    with served(create_app(config), "/_stats", startup_timeout_s) as url:
        yield RunningFakeProvider(url=url)
