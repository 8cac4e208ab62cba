"""Who is calling: API keys (kept only as hashes) mapped to a tenant and scopes, and what each scope allows.

Keys are random 256-bit tokens, so one SHA-256 is the right hash: a slow password hash (bcrypt, argon2)
protects guessable secrets, and would only cost every request milliseconds here.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.errors import UnauthenticatedError
from orchestrator.settings import SCOPES, ApiKeySettings, AuthSettings, QuotaSettings

KEY_PREFIX = "orch_"
SUBMIT, READ, ADMIN, METRICS, URGENT = SCOPES
_BEARER = "bearer "
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: the key's name, its tenant, its scopes."""

    key_id: str
    tenant: str | None
    scopes: frozenset[str]

    @property
    def admin(self) -> bool:
        """An operator: may use every method and sees every tenant's tasks and sagas."""
        return ADMIN in self.scopes

    @property
    def internal(self) -> bool:
        """The orchestrator itself (the saga coordinator running a tenant's steps and compensations)."""
        return self.key_id == SYSTEM

    def can(self, scope: str) -> bool:
        return self.admin or scope in self.scopes

    def sees(self, tenant: str | None) -> bool:
        """Whether a task or saga owned by `tenant` exists for this caller (otherwise it is "not found")."""
        return self.admin or (tenant is not None and tenant == self.tenant)


ANONYMOUS = Principal("anonymous", None, frozenset(SCOPES))
"""The caller when no keys are configured (auth off): the orchestrator only listens on loopback then."""


SYSTEM = "system"


def system(tenant: str | None) -> Principal:
    """The orchestrator acting on its own, e.g. the saga coordinator submitting a tenant's steps."""
    return Principal(SYSTEM, tenant, frozenset(SCOPES))


def quota_of(who: Principal, settings: AuthSettings) -> QuotaSettings | None:
    """The quota `who`'s submits are held to: its tenant's; None (not limited) for an admin or the system."""
    return None if who.admin or who.tenant is None else settings.quota_for(who.tenant)


def max_priority(who: Principal, quota: QuotaSettings | None, threshold: int) -> int:
    """The highest priority `who` may submit at: 10 with the `urgent` scope (admins have every scope), else the
    tenant's `max_priority`, else just below the preemption threshold — so only those trusted with it can
    preempt everyone else's work."""
    if who.can(URGENT):
        return 10
    if quota is not None and quota.max_priority is not None:
        return quota.max_priority
    return threshold - 1


def new_key() -> str:
    """A fresh API key: 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The form a key is configured in (`auth.keys.<name>.hash`)."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    """Turns an `Authorization` header into a Principal; with no keys configured everyone is ANONYMOUS."""

    def __init__(self, settings: AuthSettings) -> None:
        self._by_hash: Mapping[str, Principal] = {
            key.hash: _principal(name, key) for name, key in settings.keys.items()
        }

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller named by a `Bearer <key>` header; raises UnauthenticatedError (never echoing the key)."""
        if not self._by_hash:
            return ANONYMOUS
        if authorization is None or not authorization.lower().startswith(_BEARER):
            raise UnauthenticatedError("no API key: send the header `Authorization: Bearer <key>`")
        # A dict lookup by digest leaks nothing useful through timing: the digest of a guess is unpredictable.
        principal = self._by_hash.get(hash_key(authorization[len(_BEARER):].strip()))
        if principal is None:
            raise UnauthenticatedError("invalid API key")
        return principal


def _principal(name: str, key: ApiKeySettings) -> Principal:
    return Principal(name, key.tenant, frozenset(key.scopes))


def is_loopback(host: str) -> bool:
    """Whether `host` (an interface to bind) is reachable only from this machine."""
    name = host.strip("[]").lower()
    if name in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def unsafe_bind(host: str, settings: AuthSettings, proxy: str = "serve") -> str | None:
    """Why serving on `host` must be refused (no keys, yet reachable from other machines), or None."""
    if settings.keys or (is_loopback(host) and proxy != "haproxy"):
        return None
    where = "every interface (the HAProxy ingress binds them all)" if proxy == "haproxy" else repr(host)
    return (f"refusing to listen on {where} without API keys: anyone who can reach it could run tasks. "
            "Configure auth.keys (`orchestrator keys create`), or listen on 127.0.0.1 with the Serve proxy")
