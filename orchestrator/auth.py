"""Who is calling: API keys (kept only as hashes) mapped to a tenant and scopes, and what each scope allows.

Keys come from two sources that merge: settings (`auth.keys`, fixed until a redeploy) and Redis (created,
listed and revoked at runtime, optionally expiring; each ingress replica keeps a snapshot, see
`orchestrator.adapters.key_store`). Auth is on as soon as either source has ever had a key, or `auth.required`
is set; only then may the orchestrator serve more than loopback.

Keys are random 256-bit tokens, so one SHA-256 is the right hash: a slow password hash (bcrypt, argon2)
protects guessable secrets, and would only cost every request milliseconds here.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from orchestrator.errors import StorageUnavailableError, UnauthenticatedError
from orchestrator.settings import SCOPES, ApiKeySettings, AuthSettings, QuotaSettings

logger = logging.getLogger(__name__)

KEY_PREFIX = "orch_"
SUBMIT, READ, ADMIN, METRICS, URGENT = SCOPES
REASONS = ("missing", "unknown", "expired", "revoked")
"""Why an authentication failed: the label values of `orchestrator_auth_failures_total` (never the key)."""
LOG_EVERY_S = 10.0  # at most one log line per reason this often, carrying the count since the previous one
STALE_AFTER_S = 10.0  # runtime keys not confirmed from Redis for this long are not trusted (revocations unseen)
_BEARER = "bearer "
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_MAX_NAMES_LOGGED = 5


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: the key's name, its tenant, its scopes; `credential` tells apart two keys that
    had the same name (a runtime key's name is free again once it is revoked); `internal` is the orchestrator."""

    key_id: str
    tenant: str | None
    scopes: frozenset[str]
    credential: str = ""
    internal: bool = False

    @property
    def admin(self) -> bool:
        """An operator: may use every method and sees every tenant's tasks and sagas."""
        return ADMIN in self.scopes

    def can(self, scope: str) -> bool:
        return self.admin or scope in self.scopes

    def sees(self, tenant: str | None) -> bool:
        """Whether a task or saga owned by `tenant` exists for this caller (otherwise it is "not found")."""
        return self.admin or (tenant is not None and tenant == self.tenant)


ANONYMOUS = Principal("anonymous", None, frozenset(SCOPES))
"""The caller when auth is off (no key anywhere): the orchestrator only listens on loopback then."""


SYSTEM = "system"


def system(tenant: str | None) -> Principal:
    """The orchestrator acting on its own, e.g. the saga coordinator submitting a tenant's steps."""
    return Principal(SYSTEM, tenant, frozenset(SCOPES), internal=True)


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
    """The form a key is kept in: `auth.keys.<name>.hash` in settings, the record's field in Redis."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


# ---------------------------------------------------------------- keys created at runtime


@dataclass(frozen=True, slots=True)
class RuntimeKey:
    """A key created at runtime (its record in Redis): whom it is for, and when it stops working."""

    name: str
    tenant: str
    scopes: frozenset[str]
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None

    def ended(self, now: float) -> Literal["revoked", "expired"] | None:
        """Why it no longer works ("revoked", "expired"), or None while it does."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return None



@dataclass(frozen=True, slots=True)
class KeySnapshot:
    """The runtime keys as a replica last read them.

    Args:
        keys: by hash, the ended ones included (a refusal names why).
        managed: keys were created at runtime here at least once; auth stays on for good (revoking the last key
            must not open the door).
        confirmed_at: when Redis last confirmed this is current.
    """

    keys: Mapping[str, RuntimeKey]
    managed: bool
    confirmed_at: float


@dataclass(frozen=True, slots=True)
class FailureLine:
    """One log line about refused requests: of one reason, `count` of them since the previous such line."""

    reason: str
    count: int
    key_names: tuple[str, ...] = ()  # of the expired or revoked keys presented (names are not secret)


@dataclass(slots=True)
class FailureTally:
    """Failed authentications: counts by reason not yet added to the shared totals, and the log lines due —
    at most one per reason every `every_s`, the first one at once."""

    every_s: float = LOG_EVERY_S
    unflushed: Counter[str] = field(default_factory=Counter[str])
    _pending: Counter[str] = field(default_factory=Counter[str])
    _names: dict[str, set[str]] = field(default_factory=dict[str, set[str]])
    _last_line: dict[str, float] = field(default_factory=dict[str, float])

    def note(self, reason: str, now: float, key_name: str | None = None) -> list[FailureLine]:
        """Count one failure; the line to log now, if one is due."""
        self.unflushed[reason] += 1
        self._pending[reason] += 1
        if key_name is not None and len(names := self._names.setdefault(reason, set())) < _MAX_NAMES_LOGGED:
            names.add(key_name)
        return self.due(now, reason)

    def due(self, now: float, only: str | None = None) -> list[FailureLine]:
        """The lines whose time has come (failures pending, none logged for their reason within `every_s`)."""
        lines: list[FailureLine] = []
        for reason in REASONS if only is None else (only,):
            count = self._pending[reason]
            if count and now - self._last_line.get(reason, -self.every_s) >= self.every_s:
                lines.append(FailureLine(reason, count, tuple(sorted(self._names.pop(reason, ())))))
                self._pending[reason] = 0
                self._last_line[reason] = now
        return lines

    def take(self) -> dict[str, int]:
        """The counts not yet flushed (and forget them: give them back with `restore` if the flush failed)."""
        counts = {reason: n for reason, n in self.unflushed.items() if n}
        self.unflushed.clear()
        return counts

    def restore(self, counts: Mapping[str, int]) -> None:
        self.unflushed.update(counts)


class Authenticator:
    """Turns an `Authorization` header into a Principal, from the settings' keys and the latest snapshot of
    the runtime keys; with no key anywhere (and auth not required) everyone is ANONYMOUS."""

    def __init__(self, settings: AuthSettings, clock: Callable[[], float] = time.time) -> None:
        self._by_hash: Mapping[str, Principal] = {
            key.hash: _principal(name, key) for name, key in settings.keys.items()
        }
        self._required = settings.required
        self._clock = clock
        self._runtime: KeySnapshot | None = None
        self.failures = FailureTally()

    @property
    def loaded(self) -> bool:
        """Whether the runtime keys were read at least once."""
        return self._runtime is not None

    def load(self, snapshot: KeySnapshot) -> None:
        """Use these runtime keys from now on."""
        self._runtime = snapshot

    def confirm(self, now: float) -> None:
        """Redis says the runtime keys have not changed since the snapshot: it is current as of `now`."""
        if self._runtime is not None:
            self._runtime = KeySnapshot(self._runtime.keys, self._runtime.managed, now)

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller named by a `Bearer <key>` header; raises UnauthenticatedError (never echoing the key), or
        StorageUnavailableError when the answer depends on runtime keys this replica could not read lately."""
        now = self._clock()
        if not self._by_hash and not self._required and not self._fresh(now).managed:
            return ANONYMOUS
        if authorization is None or not authorization.lower().startswith(_BEARER):
            raise self._refuse("missing", now)
        digest = hash_key(authorization[len(_BEARER):].strip())
        # A dict lookup by digest leaks nothing useful through timing: the digest of a guess is unpredictable.
        principal = self._by_hash.get(digest)
        if principal is not None:  # settings keys work even while Redis is unreachable
            return principal
        found = self._fresh(now).keys.get(digest)
        if found is None:
            raise self._refuse("unknown", now)
        ended = found.ended(now)
        if ended is not None:
            raise self._refuse(ended, now, found.name)
        return Principal(found.name, found.tenant, found.scopes, credential=digest)

    def report(self, now: float) -> None:
        """Log the failure lines that are due (called periodically, so a burst's count is not left unsaid)."""
        for line in self.failures.due(now):
            _log(line)

    def _fresh(self, now: float) -> KeySnapshot:
        runtime = self._runtime
        if runtime is None:
            raise StorageUnavailableError("the API keys kept in Redis have not been read yet")
        if now - runtime.confirmed_at > STALE_AFTER_S:
            raise StorageUnavailableError(f"the API keys kept in Redis could not be read for {STALE_AFTER_S:g} s")
        return runtime

    def _refuse(self, reason: str, now: float, key_name: str | None = None) -> UnauthenticatedError:
        for line in self.failures.note(reason, now, key_name):
            _log(line)
        return UnauthenticatedError(_WHY[reason])


_WHY = {
    "missing": "no API key: send the header `Authorization: Bearer <key>`",
    "unknown": "invalid API key",
    "expired": "API key expired",
    "revoked": "API key revoked",
}


def _log(line: FailureLine) -> None:
    # The values are in the message too: a Serve replica's log keeps only the message.
    names = f" keys={','.join(line.key_names)}" if line.key_names else ""
    logger.warning("authentication refused: reason=%s count=%d%s", line.reason, line.count, names,
                   extra={"reason": line.reason, "count": line.count, "key_names": list(line.key_names)})


def _principal(name: str, key: ApiKeySettings) -> Principal:
    return Principal(name, key.tenant, frozenset(key.scopes), credential=key.hash)


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
    """Why serving on `host` must be refused (auth may be off, yet it is reachable from other machines), or None.

    Keys in Redis do not count: they are data, and an emptied Redis would open the door. Serving other
    interfaces needs keys in settings, or `auth.required` (then an empty Redis refuses everyone)."""
    if settings.keys or settings.required or (is_loopback(host) and proxy != "haproxy"):
        return None
    where = "every interface (the HAProxy ingress binds them all)" if proxy == "haproxy" else repr(host)
    return (f"refusing to listen on {where} without API keys: anyone who can reach it could run tasks. "
            "Configure auth.keys (`orchestrator keys create --for-settings`), or set auth.required and create keys "
            "in Redis (`orchestrator keys create --redis-url …`), or listen on 127.0.0.1 with the Serve proxy")
