"""The `keys` admin method's behaviour: create, list and revoke API keys kept in Redis; each change audited."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from orchestrator.adapters.key_store import KeyStore
from orchestrator.auth import Principal, RuntimeKey, hash_key, new_key
from orchestrator.errors import InvalidParamsError
from orchestrator.models import ApiKeyInfo, ApiKeyRecord, KeysParams, KeysResult
from orchestrator.settings import RESERVED_KEY_NAMES, AuthSettings

Audit = Callable[[str, str, Mapping[str, Any], float], Awaitable[None]]
"""Records an operator action: who, what, details, when (TaskStore.audit)."""


class KeyService:
    def __init__(self, settings: AuthSettings, store: KeyStore, audit: Audit, clock: Callable[[], float]) -> None:
        self._settings, self._store, self._audit, self._clock = settings, store, audit, clock

    async def keys(self, params: KeysParams, who: Principal) -> KeysResult:
        """Create (answering the key once), list or revoke runtime keys; `who` is recorded in the audit log."""
        if params.action == "list":
            return KeysResult(action="list", keys=await self.listing(params.all))
        if params.action == "create":
            return await self._create(params, who)
        return await self._revoke(params, who)

    async def listing(self, everything: bool) -> list[ApiKeyInfo]:
        """The settings' keys, then the runtime ones by name (only the working ones unless `everything`)."""
        now = self._clock()
        found = [ApiKeyInfo(name=name, tenant=key.tenant, scopes=list(key.scopes), source="settings", status="active")
                 for name, key in sorted(self._settings.keys.items())]
        runtime = sorted(await self._store.records(), key=lambda item: (item[0].name, item[0].created_at))
        for record, revoked_at in runtime:
            info = _info(record, revoked_at, now)
            if everything or info.status == "active":
                found.append(info)
        return found

    async def _create(self, params: KeysParams, who: Principal) -> KeysResult:
        fields: dict[str, str] = {}
        if params.tenant is None:
            fields["params.tenant"] = "required for action 'create'"
        if params.scopes is None:
            fields["params.scopes"] = "required for action 'create'"
        if params.ttl_s is not None and params.expires_at is not None:
            fields["params.expires_at"] = "give ttl_s or expires_at, not both"
        now = self._clock()
        expires_at = params.expires_at.timestamp() if params.expires_at is not None else None
        if params.ttl_s is not None:
            expires_at = now + params.ttl_s
        if expires_at is not None and expires_at <= now:
            fields["params.expires_at"] = "in the past"
        if params.name is not None and params.name in self._settings.keys:
            fields["params.name"] = (f"a key named {params.name!r} is configured in settings (auth.keys); "
                                     "choose another name")
        elif params.name is not None and params.name.lower() in RESERVED_KEY_NAMES:
            fields["params.name"] = f"{params.name!r} is reserved; choose another name"
        if fields:
            raise InvalidParamsError(fields)
        assert params.tenant is not None and params.scopes is not None
        key = new_key()
        digest = hash_key(key)
        name = params.name or f"{params.tenant}-{digest[-6:]}"  # never a piece of the key: names show up in audits
        record = ApiKeyRecord(name=name, tenant=params.tenant, scopes=sorted(set(params.scopes)), created_at=now,
                              expires_at=expires_at, created_by=who.key_id)
        outcome = await self._store.create(digest, record, now)
        if outcome == "name taken":
            raise InvalidParamsError({"params.name": f"a working key is named {name!r}: revoke it first, or "
                                                     "choose another name"})
        if outcome != "created":  # 256 random bits met an existing key: never in practice
            raise InvalidParamsError({"params": "the new key collided with an existing one; try again"})
        await self._audit(who.key_id, "keys.create", {"name": name, "tenant": record.tenant, "scopes": record.scopes,
                                                      "expires_at": expires_at}, now)
        return KeysResult(action="create", key=key, info=_info(record, None, now))

    async def _revoke(self, params: KeysParams, who: Principal) -> KeysResult:
        name = params.name
        if name is None:
            raise InvalidParamsError({"params.name": "required for action 'revoke'"})
        if name in self._settings.keys:
            raise InvalidParamsError({"params.name": (
                f"key {name!r} is configured in settings (auth.keys.{name}): it cannot be revoked at runtime; "
                "remove it from the settings (config file or ORCH_AUTH__KEYS__* variables) and redeploy")})
        now = self._clock()
        record = await self._store.revoke(name, now)
        if record is None:
            raise InvalidParamsError({"params.name": f"no key named {name!r} to revoke (`keys list` names them)"})
        await self._audit(who.key_id, "keys.revoke", {"name": name, "tenant": record.tenant}, now)
        return KeysResult(action="revoke", info=_info(record, now, now))


def _info(record: ApiKeyRecord, revoked_at: float | None, now: float) -> ApiKeyInfo:
    key = RuntimeKey(record.name, record.tenant, frozenset(record.scopes), record.created_at, record.expires_at,
                     revoked_at)
    return ApiKeyInfo(name=record.name, tenant=record.tenant, scopes=list(record.scopes), source="runtime",
                      status=key.ended(now) or "active",
                      created_at=record.created_at, expires_at=record.expires_at, revoked_at=revoked_at,
                      created_by=record.created_by)
