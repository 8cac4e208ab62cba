"""API keys on the HTTP faces: the caller of a request, and the refusal when there is none."""

from __future__ import annotations

import json

from starlette.datastructures import Headers
from starlette.responses import Response

from orchestrator.adapters.key_store import KeyRing
from orchestrator.auth import Principal
from orchestrator.errors import ForbiddenError, StorageUnavailableError, UnauthenticatedError
from orchestrator.jsonrpc import to_jsonrpc_error

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="mcp-orchestrator"'}
NOT_IN = (UnauthenticatedError, StorageUnavailableError)
"""What `caller` raises: no valid key (401), or the runtime keys could not be read lately (503, retryable)."""


async def caller(keys: KeyRing, headers: Headers) -> Principal:
    """Who sent the request (raises one of NOT_IN)."""
    return await keys.authenticate(headers.get("authorization"))


def refusal(exc: UnauthenticatedError | ForbiddenError | StorageUnavailableError) -> Response:
    """401 (with the bearer challenge), 403 or 503, the body a JSON-RPC error as every face answers errors."""
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": to_jsonrpc_error(exc)}, separators=(",", ":"))
    if isinstance(exc, UnauthenticatedError):
        return Response(body, status_code=401, media_type="application/json", headers=CHALLENGE)
    if isinstance(exc, StorageUnavailableError):
        return Response(body, status_code=503, media_type="application/json", headers={"Retry-After": "1"})
    return Response(body, status_code=403, media_type="application/json")
