"""Runs the fake OpenAI-compatible provider on a free loopback port in a background thread, for tests."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from deployments.fake_provider import FakeProviderConfig, create_app

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
    # We bind and listen ourselves: the port is known up front and early connections wait in the backlog.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"fake-provider-{port}", daemon=True)
    thread.start()
    provider = RunningFakeProvider(url=f"http://127.0.0.1:{port}")
    try:
        # One request with a deadline: it is answered as soon as the server accepts from the backlog.
        httpx.get(f"{provider.url}/_stats", timeout=startup_timeout_s).raise_for_status()
        yield provider
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
