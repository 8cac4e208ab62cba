"""API keys on the HTTP faces: the caller of a request, and the refusal when there is none."""

from __future__ import annotations

import json

from starlette.datastructures import Headers
from starlette.responses import Response

from orchestrator.auth import Authenticator, Principal
from orchestrator.errors import ForbiddenError, UnauthenticatedError
from orchestrator.jsonrpc import to_jsonrpc_error

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="mcp-orchestrator"'}


def caller(authenticator: Authenticator, headers: Headers) -> Principal:
    """Who sent the request (raises UnauthenticatedError)."""
    return authenticator.authenticate(headers.get("authorization"))


def refusal(exc: UnauthenticatedError | ForbiddenError) -> Response:
    """401 (with the bearer challenge) or 403, the body a JSON-RPC error as every face answers errors."""
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": to_jsonrpc_error(exc)}, separators=(",", ":"))
    if isinstance(exc, UnauthenticatedError):
        return Response(body, status_code=401, media_type="application/json", headers=CHALLENGE)
    return Response(body, status_code=403, media_type="application/json")
