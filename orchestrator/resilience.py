"""How the orchestrator treats a provider: retry delays, and the contract of the shared limits gate.

The gate itself (rate limits, concurrency, circuit breaker) lives in Redis so that every worker in
every process shares one budget; see `orchestrator/adapters/provider_gate.py`.
"""

from __future__ import annotations

import enum
import hashlib
import random
from dataclasses import dataclass
from typing import Protocol

from orchestrator.settings import ProviderSettings

# A 429 carrying Retry-After is followed to the letter, plus a little spread so workers told the
# same instant do not all return at once.
RETRY_AFTER_SPREAD_S = 0.05


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int
    base_s: float
    max_s: float

    @classmethod
    def of(cls, provider: ProviderSettings) -> RetryPolicy:
        return cls(provider.max_retries, provider.backoff_base_s, provider.backoff_max_s)

    def delay_s(self, retry: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry` (0-based): what the provider asked for, else
        full-jitter exponential backoff."""
        if retry_after_s is not None:
            return retry_after_s + rng.uniform(0, RETRY_AFTER_SPREAD_S)
        return rng.uniform(0, min(self.max_s, self.base_s * 2**retry))


class Outcome(enum.Enum):
    """How a provider call ended, as the circuit breaker and the limits see it."""

    OK = "ok"
    FAILED = "failed"  # 5xx, timeout, connection error: counts towards opening the circuit
    LIMITED = "limited"  # 429: everyone on this account waits Retry-After; not the provider's fault
    NEUTRAL = "neutral"  # a 4xx that was the request's fault, or the call was cancelled


@dataclass(frozen=True, slots=True)
class Account:
    """One provider account: the unit that budgets (rate limits) are kept for."""

    provider: str
    key_fingerprint: str  # so two API keys of one provider have separate budgets; never the key itself

    @classmethod
    def of(cls, provider: str, api_key: str | None) -> Account:
        digest = hashlib.sha256(api_key.encode()).hexdigest()[:16] if api_key else "nokey"
        return cls(provider, digest)


@dataclass(frozen=True, slots=True)
class Permit:
    account: Account
    permit_id: str
    tokens: int  # estimated tokens charged at admission; corrected with the real usage on release


class CircuitOpenError(Exception):
    """The provider's circuit is open: calls are refused without trying until the next probe."""

    def __init__(self, provider: str, retry_in_s: float) -> None:
        super().__init__(provider, retry_in_s)
        self.provider, self.retry_in_s = provider, retry_in_s

    def __str__(self) -> str:
        return f"circuit open for provider {self.provider!r} after repeated failures; next probe in {self.retry_in_s:.1f}s"


class ProviderGate(Protocol):
    """Admission to a provider shared by all workers: rate limits, concurrency and the circuit breaker."""

    async def acquire(self, account: Account, limits: ProviderSettings, tokens: int, lease_s: float) -> Permit:
        """Wait until the account's budgets admit one call of about `tokens` tokens; raises CircuitOpenError."""
        ...

    async def release(
        self, permit: Permit, limits: ProviderSettings, outcome: Outcome,
        tokens_used: int | None = None, retry_after_s: float | None = None,
    ) -> None:
        """Report how the call ended: frees its concurrency slot, corrects its token charge, feeds the breaker."""
        ...


class OpenGate:
    """No shared limits: admits every call (unit tests, and tools built without Redis)."""

    async def acquire(self, account: Account, limits: ProviderSettings, tokens: int, lease_s: float) -> Permit:
        return Permit(account, "local", tokens)

    async def release(
        self, permit: Permit, limits: ProviderSettings, outcome: Outcome,
        tokens_used: int | None = None, retry_after_s: float | None = None,
    ) -> None:
        return None


def estimate_tokens(prompt_chars: int, max_tokens: int | None) -> int:
    """A pre-call guess of prompt + completion tokens (about 4 characters a token); corrected after the call."""
    return max(1, prompt_chars // 4) + (max_tokens if max_tokens is not None else 256)
