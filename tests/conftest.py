"""Session fixtures: a redis-server, a Redis Cluster and a Ray instance (Serve on a free port) for the whole run."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.support import RedisCluster, RedisServer, free_port


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """Three masters, no replicas; session fixtures are lazy, so it starts only for a test that asks for it."""
    cluster = RedisCluster().start()
    yield cluster
    cluster.stop()


RAY_METRICS_PORT: list[int] = []  # where the session's Ray exports its Prometheus metrics


@pytest.fixture(scope="session")
def ray_session() -> Iterator[int]:
    """A local Ray of our own (never the machine's), with Serve's HTTP proxy on a free port; yields the port."""
    import ray
    from ray import serve

    from deployments.app import init_local_ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    RAY_METRICS_PORT.append(free_port())
    init_local_ray(num_cpus=4, include_dashboard=False, namespace="tests", log_to_driver=False,
                   _temp_dir=tempfile.mkdtemp(prefix="orch-ray-"), _metrics_export_port=RAY_METRICS_PORT[0])
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # serve.run and serve.delete look at the app's status once a second; every deployment would wait ~1.5 s more.
    from ray.serve._private import client as serve_client

    serve_client.CLIENT_POLLING_INTERVAL_S = 0.05  # type: ignore[attr-defined]
    yield port
    serve.shutdown()
    ray.shutdown()


def make_settings(redis_url: str, **overrides: Any) -> Any:
    """Settings isolated per test: their own Redis key prefix and Ray namespace."""
    from orchestrator.settings import Settings

    unique = uuid.uuid4().hex[:8]
    base: dict[str, Any] = {
        "namespace": f"t{unique}",
        "redis": {"url": redis_url, "prefix": f"t{unique}"},
        "pools": {"reasoning": {"workers": 1, "slots": 4}, "codegen": {"workers": 1, "slots": 2},
                  "ml": {"workers": 0}},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return Settings(**base)


class Deployed:
    """A running orchestrator: its settings and its JSON-RPC base URL."""

    def __init__(self, settings: Any, base_url: str, name: str) -> None:
        self.settings, self.base_url, self.name = settings, base_url, name


@contextmanager
def deployed(settings: Any, serve_port: int) -> Iterator[Deployed]:
    """The whole system deployed under its own route prefix, torn down afterwards."""
    from deployments.app import deploy, teardown

    name = f"app{uuid.uuid4().hex[:8]}"
    deploy(settings, name=name, route_prefix=f"/{name}")
    try:
        yield Deployed(settings, f"http://127.0.0.1:{serve_port}/{name}", name)
    finally:
        teardown(settings, name=name)


@pytest.fixture(scope="session")
def orchestrator(redis_server: RedisServer, ray_session: int) -> Iterator[Deployed]:
    """The default test system, deployed once and shared by every module that uses it: such a module leaves its
    state as it found it (no pauses, scaling, drains, keys; its tasks finish or are cancelled). A module that
    changes it, or wants other settings, deploys its own with `deployed`."""
    with deployed(make_settings(redis_server.url), ray_session) as system:
        yield system


@pytest.fixture(scope="module")
def provider() -> Iterator[Any]:
    """The fake OpenAI-compatible provider with its default config, for one test module
    (a module needing another config defines its own `provider`)."""
    from deployments.fake_provider import FakeProviderConfig
    from tests.fakeprovider import fake_provider

    with fake_provider(FakeProviderConfig()) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium driven by Playwright (Playwright's own browser download is not reachable here)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium")
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (no storage shared between tests) at 1280×800."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    yield context.new_page()
    context.close()
