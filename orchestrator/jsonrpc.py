"""The JSON-RPC 2.0 protocol: envelopes, batches, params validation, error mapping and the OpenRPC document."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaError
from pydantic import BaseModel, ConfigDict, TypeAdapter
from pydantic import ValidationError as ModelError
from pydantic_core import to_json

from orchestrator.auth import Principal
from orchestrator.errors import ForbiddenError, InvalidParamsError, OrchestratorError

logger = logging.getLogger(__name__)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

_ENVELOPE_KEYS = frozenset({"jsonrpc", "method", "params", "id"})
_REF_TEMPLATE = "#/components/schemas/{model}"
_MAX_REPR = 100
_MAX_INT_DIGITS = 4300  # CPython's own default cap on int(str) (sys.get_int_max_str_digits)
_OUT_OF_RANGE_REASON = f"number out of range: not a finite double, or an integer of more than {_MAX_INT_DIGITS} digits"


@dataclass(frozen=True, slots=True)
class RequestContext:
    principal: Principal  # the authenticated caller (auth.ANONYMOUS when auth is off): no default, fails closed
    version: int = 1  # API version of the endpoint (1 or 2)


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    params: type[BaseModel]  # extra="forbid"; its field order is the positional order
    result: Any  # anything pydantic.TypeAdapter accepts
    summary: str
    handler: Callable[[BaseModel, RequestContext], Awaitable[Any]]
    scope: str | None = None  # what the caller's key needs; None: any authenticated caller


@dataclass(frozen=True, slots=True)
class _Entry:
    method: Method
    validator: Draft202012Validator
    positional: tuple[str, ...]


class _EdgeError(Exception):
    """A protocol-level failure (-32700..-32601) detected by the dispatcher itself."""

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(code, message, data)
        self.code, self.message, self.data = code, message, data


class _NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _OutOfRange:
    """Stands in for a number token no float or sane int can hold (1e400, 5000 digits), so its field can be named."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<number out of range>"


_OUT_OF_RANGE = _OutOfRange()


class _Repeated(dict[str, Any]):
    """A JSON object in which some member names occurred more than once (the last value won)."""

    def __init__(self, pairs: list[tuple[str, Any]], repeated: list[str]) -> None:
        super().__init__(pairs)
        self.repeated = repeated


def to_jsonrpc_error(exc: Exception) -> dict[str, Any]:
    """Turn any exception into a JSON-RPC error object; the only place this happens."""
    if isinstance(exc, _EdgeError):
        error: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if exc.data is not None:
            error["data"] = exc.data
        return error
    if isinstance(exc, OrchestratorError):
        return {"code": exc.code, "message": str(exc), "data": exc.data()}
    if isinstance(exc, InvalidParamsError):
        return {"code": INVALID_PARAMS, "message": "Invalid params", "data": {"fields": exc.fields}}
    logger.exception("unhandled error", exc_info=exc)
    return {"code": INTERNAL_ERROR, "message": "Internal error"}


class Dispatcher:
    """Answers JSON-RPC 2.0 request bodies by calling the methods it was built with."""

    def __init__(
        self,
        methods: Sequence[Method],
        *,
        max_batch: int = 100,
        max_depth: int = 32,
        title: str = "MCP Orchestrator",
        version: str = "1",
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        """Args: extensions: `x-…` members added to the OpenRPC document (e.g. the tools and their schemas)."""
        if any(not key.startswith("x-") for key in extensions or {}):
            raise ValueError("OpenRPC extension members must start with 'x-'")
        discover = Method("rpc.discover", _NoParams, dict[str, Any], "This service's OpenRPC document.", self._discover)
        self._entries: dict[str, _Entry] = {}
        for method in [*methods, discover]:
            if method.name in self._entries or (method.name.startswith("rpc.") and method is not discover):
                raise ValueError(f"method name {method.name!r} is taken or reserved")
            schema = method.params.model_json_schema()
            positional = tuple(schema.get("properties", {}))
            self._entries[method.name] = _Entry(method, Draft202012Validator(schema), positional)
        self._max_batch, self._max_depth = max_batch, max_depth
        self._openrpc = {**_build_openrpc([e.method for e in self._entries.values()], title, version),
                         **(extensions or {})}

    def openrpc(self) -> dict[str, Any]:
        """The OpenRPC 1.3 document describing every method, `rpc.discover` included."""
        return copy.deepcopy(self._openrpc)

    async def handle(self, body: bytes, ctx: RequestContext, *, path_method: str | None = None) -> bytes | None:
        """Answer one HTTP body; None when there is nothing to send (only notifications).

        Args:
            path_method: set on a per-method endpoint; the envelope must then name this method.
        """
        try:
            doc = _parse(body, self._max_depth)
            if isinstance(doc, list) and not doc:
                raise _EdgeError(INVALID_REQUEST, "Invalid Request", {"reason": "empty batch"})
            if isinstance(doc, list) and len(doc) > self._max_batch:
                reason = f"batch of {len(doc)} requests exceeds the limit of {self._max_batch}"
                raise _EdgeError(INVALID_REQUEST, "Invalid Request", {"reason": reason, "max_batch": self._max_batch})
        except _EdgeError as exc:
            return _encode(_error_reply(None, to_jsonrpc_error(exc)))
        if not isinstance(doc, list):
            reply = await self._answer(doc, ctx, path_method)
            return None if reply is None else _encode(reply)
        members = cast(list[Any], doc)
        shared = _shared_ids(members)
        replies = await asyncio.gather(*(self._answer(member, ctx, path_method, shared) for member in members))
        kept = [reply for reply in replies if reply is not None]
        return _encode("[" + ",".join(kept) + "]") if kept else None

    async def _answer(self, request: Any, ctx: RequestContext, path_method: str | None,
                      shared: Mapping[Any, int] | None = None) -> str | None:
        """One serialized response for one batch member, or None for a notification.

        Args:
            shared: ids used by more than one member of the batch, with their counts; such members are refused.
        """
        request_id = _request_id(request)
        try:
            name, raw_params = _check_envelope(request)
            if shared and "id" in request and request["id"] in shared:
                shown = json.dumps(request["id"])[:_MAX_REPR]
                raise _invalid_request(f"id {shown} is used by {shared[request['id']]} requests in this batch; "
                                       "ids must be unique, so none of them was run")
        except _EdgeError as exc:  # invalid requests are answered even without an id
            return _error_reply(request_id, to_jsonrpc_error(exc))
        is_notification = "id" not in request
        try:
            entry = self._resolve(name, path_method)
            scope = entry.method.scope
            if scope is not None and not ctx.principal.can(scope):  # before validation: no hints for outsiders
                raise ForbiddenError(name, scope)
            params = _validate(entry, raw_params)
            result = await entry.method.handler(params, ctx)
            if is_notification:
                return None
            return '{"jsonrpc":"2.0","id":' + _dumps(request_id) + ',"result":' + _result_json(result) + "}"
        except Exception as exc:  # the edge: every failure becomes a wire error
            error = to_jsonrpc_error(exc)
            return None if is_notification else _error_reply(request_id, error)

    def _resolve(self, name: str, path_method: str | None) -> _Entry:
        if path_method is not None and name != path_method:
            raise _EdgeError(METHOD_NOT_FOUND, "Method not found", {"method": name, "expected": path_method})
        entry = self._entries.get(name)
        if entry is None or (path_method is not None and entry.method.name.startswith("rpc.")):
            known = sorted(n for n in self._entries if path_method is None or not n.startswith("rpc."))
            raise _EdgeError(METHOD_NOT_FOUND, "Method not found", {"method": name, "known": known})
        return entry

    async def _discover(self, params: BaseModel, ctx: RequestContext) -> dict[str, Any]:
        return self._openrpc


def _parse(body: bytes, max_depth: int) -> Any:
    """Decode a body as strict JSON (UTF-8, no NaN/Infinity) no deeper than `max_depth`.

    Out-of-range numbers and objects with repeated member names are kept as markers (`_OUT_OF_RANGE`,
    `_Repeated`) so that the envelope check or the params check can name where they are.
    """
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_reject_constant, parse_int=_parse_int,
                         parse_float=_parse_float, object_pairs_hook=_parse_object)
    except UnicodeDecodeError:
        raise _EdgeError(PARSE_ERROR, "Parse error", {"reason": "body is not valid UTF-8"}) from None
    except json.JSONDecodeError as exc:
        reason = f"invalid JSON at line {exc.lineno} column {exc.colno}"
        raise _EdgeError(PARSE_ERROR, "Parse error", {"reason": reason}) from None
    except RecursionError:  # the C decoder recurses once per level; far too deep to check ourselves
        raise _too_deep(max_depth) from None
    if _exceeds_depth(doc, max_depth):
        raise _too_deep(max_depth)
    return doc


def _reject_constant(name: str) -> Any:
    raise _EdgeError(PARSE_ERROR, "Parse error", {"reason": f"{name} is not valid JSON"})


def _parse_int(text: str) -> int | _OutOfRange:
    if len(text) - text.startswith("-") > _MAX_INT_DIGITS:
        return _OUT_OF_RANGE
    try:
        return int(text)
    except ValueError:  # the interpreter's digit cap was lowered below ours
        return _OUT_OF_RANGE


def _parse_float(text: str) -> float | _OutOfRange:
    value = float(text)  # 1e400 overflows to inf, which no JSON encoder can write back
    return value if math.isfinite(value) else _OUT_OF_RANGE


def _parse_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    repeated = sorted({name for name, _ in pairs if name in seen or seen.add(name)})
    return _Repeated(pairs, repeated)


def _too_deep(max_depth: int) -> _EdgeError:
    reason = f"JSON nested deeper than {max_depth} levels"
    return _EdgeError(INVALID_REQUEST, "Invalid Request", {"reason": reason, "max_depth": max_depth})


def _exceeds_depth(doc: Any, max_depth: int) -> bool:
    """Whether containers nest deeper than `max_depth`; iterative, so it cannot overflow the stack."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > max_depth:
                return True
            children: Iterable[Any] = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return False


def _is_valid_id(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _request_id(request: Any) -> Any:
    """The id to echo in a reply: the request's, when it has exactly one valid id; else null."""
    if not isinstance(request, dict) or (isinstance(request, _Repeated) and "id" in request.repeated):
        return None
    value: Any = cast(dict[str, Any], request).get("id")
    return value if _is_valid_id(value) else None


def _shared_ids(batch: list[Any]) -> dict[Any, int]:
    """Ids (1 and 1.0 are one id) carried by more than one member of a batch, with how many carry each."""
    counts: Counter[Any] = Counter()
    for member in batch:
        if isinstance(member, dict) and "id" in member:
            value: Any = cast(dict[str, Any], member)["id"]
            if _is_valid_id(value):
                counts[value] += 1
    return {value: count for value, count in counts.items() if count > 1}


def _check_envelope(request: Any) -> tuple[str, Any]:
    """The method name and raw params of a valid request object; raises -32600 otherwise."""
    if not isinstance(request, dict):
        raise _invalid_request("a request must be a JSON object")
    if isinstance(request, _Repeated):
        names = ", ".join(_printable(name) for name in request.repeated)
        raise _invalid_request(f"repeated members: {names}"[: 2 * _MAX_REPR])
    if unknown := sorted(set(request) - _ENVELOPE_KEYS):
        raise _invalid_request(f"unknown members: {', '.join(unknown)}")
    if request.get("jsonrpc") != "2.0":
        raise _invalid_request('"jsonrpc" must be exactly "2.0"')
    if not isinstance(request.get("method"), str):
        raise _invalid_request('"method" must be a string')
    if "params" in request and not isinstance(request["params"], dict | list):
        raise _invalid_request('"params" must be an object or an array')
    if "id" in request and not _is_valid_id(request["id"]):
        raise _invalid_request('"id" must be a string, a number or null')
    return request["method"], request.get("params", {})


def _invalid_request(reason: str) -> _EdgeError:
    return _EdgeError(INVALID_REQUEST, "Invalid Request", {"reason": reason})


def _validate(entry: _Entry, raw: dict[str, Any] | list[Any]) -> BaseModel:
    """Check params against the published JSON Schema, then build the model in strict mode."""
    if isinstance(raw, list):
        if len(raw) > len(entry.positional):
            reason = f"expected at most {len(entry.positional)} positional params, got {len(raw)}"
            raise InvalidParamsError({"params": reason})
        raw = dict(zip(entry.positional, raw))
    fields = _unrepresentable(raw, "params")
    if fields:  # before the schema: its messages would quote these values
        raise InvalidParamsError(fields)
    try:  # the model (strict) is at least as strict as the schema made from it: valid params pass it alone
        return entry.method.params.model_validate_json(json.dumps(raw), strict=True)
    except ModelError as exc:
        model_errors = exc.errors()
    for error in entry.validator.iter_errors(raw):  # the schema names the fields and says why
        for path, reason in _describe(error):
            fields.setdefault(path, reason)
    if not fields:  # what JSON Schema cannot say (formats, strict floats); pydantic's text stays here
        fields = {_path(e["loc"]): f"invalid ({e['type']})" for e in model_errors}
    raise InvalidParamsError(fields)


def _unrepresentable(value: Any, path: str) -> dict[str, str]:
    """Fields no model, store or reply could carry faithfully: out-of-range numbers, lone surrogates, repeated names."""
    found: dict[str, str] = {}
    queue: list[tuple[Any, str]] = [(value, path)]
    for node, where in queue:  # breadth first, in document order; the queue grows while we walk it
        if node is _OUT_OF_RANGE:
            found[where] = _OUT_OF_RANGE_REASON
        elif isinstance(node, str):
            if (at := _lone_surrogate(node)) is not None:
                found[where] = f"not valid Unicode: lone surrogate at character {at}"
        elif isinstance(node, dict):
            obj = cast(dict[str, Any], node)
            repeated: list[str] = getattr(obj, "repeated", [])
            for name in repeated:
                found[f"{where}.{_printable(name)}"] = "member name repeated"
            for name, child in obj.items():
                child_path = f"{where}.{_printable(name)}"
                if (at := _lone_surrogate(name)) is not None:
                    found[child_path] = f"member name is not valid Unicode: lone surrogate at character {at}"
                queue.append((child, child_path))
        elif isinstance(node, list):
            queue.extend((child, f"{where}.{i}") for i, child in enumerate(cast(list[Any], node)))
    return found


def _lone_surrogate(text: str) -> int | None:
    """Where `text` holds a UTF-16 surrogate that is not part of a pair ("\\ud800" in JSON), if it does."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _printable(name: str) -> str:
    """A member name fit for a field path: lone surrogates spelled as JSON escapes, at most _MAX_REPR characters."""
    if _lone_surrogate(name) is not None:
        name = "".join(f"\\u{ord(c):04x}" if 0xD800 <= ord(c) <= 0xDFFF else c for c in name)
    return name if len(name) <= _MAX_REPR else name[:_MAX_REPR] + "..."


def _describe(error: SchemaError) -> list[tuple[str, str]]:
    """Field paths and short reasons for one JSON Schema error."""
    if error.validator in ("anyOf", "oneOf") and error.context:  # e.g. `int | None`: say why the int failed
        return _describe(_closest(error.context))
    base = _path(error.absolute_path)
    instance: Any = error.instance
    if error.validator == "required" and isinstance(instance, dict):
        required: list[str] = list(error.validator_value)
        return [(f"{base}.{name}", "required") for name in required if name not in instance]
    if error.validator == "additionalProperties" and isinstance(instance, dict) and isinstance(error.schema, dict):
        known: dict[str, Any] = error.schema.get("properties", {})
        return [(f"{base}.{name}", "unknown field") for name in instance if name not in known]
    text = repr(instance)
    message = error.message.replace(text, text[:_MAX_REPR] + "...") if len(text) > _MAX_REPR else error.message
    return [(base, f"{error.validator}: {message[: 2 * _MAX_REPR]}")]


def _closest(alternatives: Sequence[SchemaError]) -> SchemaError:
    """The failure of the alternative the value came closest to: the first branch of its own type, if any."""
    return next((e for e in alternatives if e.validator != "type"), alternatives[0])


def _path(parts: Iterable[str | int]) -> str:
    return ".".join(["params", *map(str, parts)])


def _result_json(result: Any) -> str:
    """A result as JSON text: models, lists or dicts of them, datetimes, enums (pydantic's serializer, in Rust);
    NaN and infinities, which JSON cannot hold, as null."""
    return to_json(result, inf_nan_mode="null").decode()


def _error_reply(request_id: Any, error: dict[str, Any]) -> str:
    return _dumps({"jsonrpc": "2.0", "id": request_id, "error": error})


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _encode(text: str) -> bytes:
    # A lone surrogate (legal as "\ud800" in JSON input) can only sit inside a JSON string, where
    # backslashreplace writes it back as that same JSON escape.
    return text.encode("utf-8", "backslashreplace")


def _build_openrpc(methods: Sequence[Method], title: str, version: str) -> dict[str, Any]:
    """An OpenRPC 1.3 document; every `$defs` moves into components.schemas."""
    schemas: dict[str, Any] = {}
    described: list[dict[str, Any]] = []
    for method in methods:
        params_schema = method.params.model_json_schema(ref_template=_REF_TEMPLATE)
        result_schema = TypeAdapter(method.result).json_schema(ref_template=_REF_TEMPLATE)
        schemas.update(params_schema.pop("$defs", {}))
        schemas.update(result_schema.pop("$defs", {}))
        required = set(params_schema.get("required", ()))
        properties: dict[str, dict[str, Any]] = params_schema.get("properties", {})
        params = [_content_descriptor(name, schema, name in required) for name, schema in properties.items()]
        described.append(
            {
                "name": method.name,
                "summary": method.summary,
                "paramStructure": "either",
                "params": params,
                "result": {"name": "result", "schema": result_schema},
                **({"x-scope": method.scope} if method.scope else {}),  # what the caller's API key needs
            }
        )
    return {
        "openrpc": "1.3.2",
        "info": {"title": title, "version": version},
        "methods": described,
        "components": {"schemas": schemas},
    }


def _content_descriptor(name: str, schema: dict[str, Any], required: bool) -> dict[str, Any]:
    descriptor: dict[str, Any] = {"name": name, "required": required, "schema": schema}
    if "description" in schema:
        descriptor["description"] = schema["description"]
    return descriptor
