"""Schemathesis against the deployed HTTP app's OpenAPI document: no 5xx, and every JSON-RPC reply well-formed.

Bounded and deterministic: a fixed number of examples per operation and generation mode, derandomized, no
wall-clock assertions. The SSE endpoint is fuzzed too: generated task ids never exist, so it answers 404 at once.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.conftest import Deployed, deployed, make_settings
from tests.support import RedisServer

pytestmark = pytest.mark.integration

EXAMPLES_PER_MODE = 15  # per operation: about 12 operations × 2 modes × 15 requests
EDGE_CODES = frozenset({-32700, -32600, -32601, -32602, -32603})
FUZZ = settings(max_examples=EXAMPLES_PER_MODE, derandomize=True, database=None, deadline=None,
                suppress_health_check=list(HealthCheck))
ENVELOPE_MARK = '"jsonrpc": {"const": "2.0"}'  # what a JSON-RPC request body's schema holds


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int) -> Iterator[Deployed]:
    """The default settings, deployed for this module alone: the fuzzer's valid calls pause, scale and drain."""
    with deployed(make_settings(redis_server.url), ray_session) as running:
        yield running


@pytest.fixture(scope="module")
def document(system: Deployed) -> dict[str, Any]:
    """The OpenAPI document the deployed app publishes (its `servers` carry the route prefix)."""
    reply = requests.get(f"{system.base_url}/openapi.json", timeout=30)
    reply.raise_for_status()
    return reply.json()


@pytest.fixture(scope="module")
def rpc_paths(document: dict[str, Any]) -> frozenset[str]:
    """The JSON-RPC endpoints: every operation whose request body is a JSON-RPC envelope or batch."""
    return frozenset(path for path, item in document["paths"].items()
                     if ENVELOPE_MARK in json.dumps(item.get("post", {}).get("requestBody", {})))


def refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(value) for value in node))
    return set()


def check_reply(case: schemathesis.Case, response: schemathesis.Response, rpc_paths: frozenset[str]) -> None:
    """No 5xx, no traceback; a JSON-RPC path answers 204 (only notifications) or well-formed JSON-RPC 2.0.

    Other faces (MCP, SSE, metrics, health) are held to: no 5xx, and any JSON-RPC message they send well-formed.
    """
    text = response.content.decode("utf-8", "replace")
    seen = (case.method, case.path, response.status_code, text[:300])
    assert response.status_code < 500, seen
    assert "Traceback" not in text and 'File "' not in text, seen
    is_json = response.headers.get("content-type", [""])[0].startswith("application/json")
    if case.path not in rpc_paths:
        if is_json and response.content_size == len(response.content):
            decoded = json.loads(response.content)
            if isinstance(decoded, dict) and "jsonrpc" in decoded:
                check_message(decoded)
        return
    if response.status_code == 204:
        assert response.content == b"", seen
        return
    assert is_json and response.content_size == len(response.content), seen
    decoded = json.loads(response.content.decode("utf-8"), parse_constant=_no_constants)
    for reply in decoded if isinstance(decoded, list) else [decoded]:
        check_message(reply)
        assert "error" not in reply or reply["error"]["code"] != -32603, seen  # Internal error: our 500


def check_message(reply: Any) -> None:
    assert isinstance(reply, dict) and reply.get("jsonrpc") == "2.0" and "id" in reply, reply
    assert set(reply) in ({"jsonrpc", "id", "result"}, {"jsonrpc", "id", "error"}), reply
    if "error" in reply:
        error = reply["error"]
        assert isinstance(error, dict) and set(error) - {"data"} == {"code", "message"}, error
        assert isinstance(error["code"], int) and not isinstance(error["code"], bool), error
        assert isinstance(error["message"], str) and error["message"], error
        assert error["code"] in EDGE_CODES or -32099 <= error["code"] <= -32000, error


def _no_constants(name: str) -> Any:
    raise AssertionError(f"{name} in a reply")


def test_the_document_covers_every_face(document: dict[str, Any], rpc_paths: frozenset[str],
                                       system: Deployed) -> None:
    assert {"/v1/rpc", "/v2/rpc", "/v1/run_task", "/v2/run_task", "/v1/status", "/v1/control", "/v1/inject",
            "/v1/analytics"} <= rpc_paths
    assert {"/v1/tasks/{task_id}/events", "/healthz"} <= set(document["paths"])
    # Paths are relative to the route prefix the app is deployed under, which `servers` names.
    assert [server["url"] for server in document["servers"]] == [f"/{system.name}"]


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    defined = {f"#/components/schemas/{name}" for name in document.get("components", {}).get("schemas", {})}
    assert refs(document) <= defined, refs(document) - defined


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors_and_well_formed_replies(document: dict[str, Any], rpc_paths: frozenset[str],
                                                   system: Deployed, mode: GenerationMode) -> None:
    api = schemathesis.openapi.from_dict(document)
    session = requests.Session()
    calls: Counter[str] = Counter()
    for result in api.get_all_operations():
        operation = result.ok()

        @FUZZ
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case: schemathesis.Case) -> None:
            response = case.call(base_url=system.base_url, session=session, timeout=30)
            calls[case.path] += 1
            case.validate_response(response, checks=[not_a_server_error])
            check_reply(case, response, rpc_paths)

        try:
            fuzz()
        except Unsatisfiable:  # nothing in this operation can be made invalid (e.g. GET /healthz)
            assert mode is GenerationMode.NEGATIVE and operation.path not in rpc_paths, operation.label
    assert all(calls[path] > 0 for path in rpc_paths), calls
