"""The provider gate in Redis: rate limits, concurrency and the circuit breaker, shared by every worker.

Each admission and each release is one Lua script, timed by Redis's own clock, so workers in
different processes (and on different nodes) see one budget and one breaker per provider.

- Requests per minute and tokens per minute are GCRA meters (a token bucket kept as one timestamp):
  `burst` requests may go back to back, then one every 60/rpm seconds; tokens are charged at
  admission from an estimate and corrected with the provider's reported usage on release.
- Concurrency is a sorted set of leases (permit → expiry), so a worker that dies mid-call frees its
  slot when the lease runs out.
- A 429's Retry-After pauses the whole account, not only the caller.
- The breaker opens after `breaker_failures` consecutive failures, refuses calls for
  `breaker_open_s`, then lets exactly one probe through: success closes it, failure reopens it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import defaultdict

import redis.asyncio as aioredis

from orchestrator.adapters.keys import Keys
from orchestrator.adapters.task_store import storage_errors
from orchestrator.resilience import Account, CircuitOpenError, Outcome, Permit
from orchestrator.settings import ProviderSettings

IDLE_TTL_MS = 600_000  # an account's state is dropped after ten idle minutes
WAITING_TTL_S = 600.0  # a waiter that died is no longer counted after this
CONCURRENCY_POLL_S = 0.01  # a full concurrency budget frees up at an unknown time: look again this often

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: account, inflight, breaker
# ARGV: ms per request (0 = no rpm), burst, ms per token (0 = no tpm), tokens, max concurrency (0 = none),
#       lease ms, permit id, idle ttl ms
# → {1, 0} admitted; {0, wait ms} wait and ask again; {-1, ms until a probe may go} circuit open
ACQUIRE = _NOW + """
local request_ms, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local token_ms, tokens = tonumber(ARGV[3]), tonumber(ARGV[4])
local max_inflight, lease_ms, permit, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])

local breaker = redis.call('HMGET', KEYS[3], 'state', 'open_until', 'probe', 'probe_until')
local probe = false
if breaker[1] == 'open' then
  local open_until = tonumber(breaker[2])
  if now < open_until then return {-1, open_until - now} end
  probe = true
elseif breaker[1] == 'half_open' then
  local probe_until = tonumber(breaker[4]) or 0
  if breaker[3] ~= permit and now < probe_until then return {-1, probe_until - now} end
  probe = true  -- the probe's lease ran out (its worker died): this call probes instead
end

local account = redis.call('HMGET', KEYS[1], 'request_tat', 'token_tat', 'paused_until')
local wait = math.max(0, (tonumber(account[3]) or 0) - now)
local request_tat = math.max(tonumber(account[1]) or now, now)
local token_tat = math.max(tonumber(account[2]) or now, now)
if request_ms > 0 then
  wait = math.max(wait, request_tat - (burst - 1) * request_ms - now)
end
if token_ms > 0 then
  wait = math.max(wait, token_tat - (burst - 1) * request_ms - now)
end
if max_inflight > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= max_inflight then wait = math.max(wait, 1) end
end
if wait > 0 then return {0, wait} end

if request_ms > 0 then redis.call('HSET', KEYS[1], 'request_tat', request_tat + request_ms) end
if token_ms > 0 then redis.call('HSET', KEYS[1], 'token_tat', token_tat + tokens * token_ms) end
if request_ms > 0 or token_ms > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
if max_inflight > 0 then
  redis.call('ZADD', KEYS[2], now + lease_ms, permit)
  redis.call('PEXPIRE', KEYS[2], math.max(ttl, lease_ms))
end
if probe then
  redis.call('HSET', KEYS[3], 'state', 'half_open', 'probe', permit, 'probe_until', now + lease_ms)
end
return {1, 0}
"""

# KEYS: account, inflight, breaker, totals
# ARGV: permit id, outcome, token correction, ms per token, retry-after ms, breaker failures, open ms, idle ttl ms,
#       provider
# → the breaker's state after this call
RELEASE = _NOW + """
local permit, outcome = ARGV[1], ARGV[2]
local token_delta, token_ms, retry_after_ms = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local threshold, open_ms, ttl = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])

redis.call('ZREM', KEYS[2], permit)
redis.call('HINCRBY', KEYS[4], 'provider:' .. ARGV[9] .. '|' .. outcome, 1)
if token_ms > 0 and token_delta ~= 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  local tat = tonumber(redis.call('HGET', KEYS[1], 'token_tat')) or now
  redis.call('HSET', KEYS[1], 'token_tat', math.max(now, tat + token_delta * token_ms))
end
if outcome == 'limited' and retry_after_ms > 0 then
  local paused = tonumber(redis.call('HGET', KEYS[1], 'paused_until')) or 0
  redis.call('HSET', KEYS[1], 'paused_until', math.max(paused, now + retry_after_ms))
  redis.call('PEXPIRE', KEYS[1], ttl)
end

local state = redis.call('HGET', KEYS[3], 'state') or 'closed'
local is_probe = state == 'half_open' and redis.call('HGET', KEYS[3], 'probe') == permit
if outcome == 'ok' then
  if state ~= 'closed' or redis.call('HEXISTS', KEYS[3], 'failures') == 1 then
    redis.call('DEL', KEYS[3])
  end
  return 'closed'
elseif outcome == 'failed' then
  if is_probe or (state == 'closed' and redis.call('HINCRBY', KEYS[3], 'failures', 1) >= threshold) then
    redis.call('HSET', KEYS[3], 'state', 'open', 'open_until', now + open_ms, 'failures', 0)
    redis.call('HDEL', KEYS[3], 'probe', 'probe_until')
    state = 'open'
  end
  redis.call('PEXPIRE', KEYS[3], ttl + open_ms)
elseif is_probe then
  -- neither success nor failure (cancelled, 429, a bad request): let the next call probe
  redis.call('HSET', KEYS[3], 'probe_until', 0)
end
return state
"""


class RedisProviderGate:
    """`ProviderGate` on Redis. One per worker process; waiting callers of one account queue locally
    so that only one of them polls Redis at a time."""

    def __init__(self, client: aioredis.Redis, prefix: str, rng: random.Random | None = None) -> None:
        self._client = client
        self._keys = Keys(prefix)
        self._acquire = client.register_script(ACQUIRE)
        self._release = client.register_script(RELEASE)
        self._queues: defaultdict[Account, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._rng = rng or random.Random()

    async def acquire(self, account: Account, limits: ProviderSettings, tokens: int, lease_s: float) -> Permit:
        permit = Permit(account, uuid.uuid4().hex, tokens)
        args = [
            _ms_per(limits.requests_per_minute), limits.burst, _ms_per(limits.tokens_per_minute), tokens,
            limits.max_concurrency or 0, int(lease_s * 1000), permit.permit_id, IDLE_TTL_MS,
        ]
        keys = self._keys.of_provider(account.provider, account.key_fingerprint)[:3]
        queue = self._queues[account]
        waiting = False
        try:
            if queue.locked():  # another call of this account is waiting for the budget: so will this one
                waiting = await self._mark_waiting(account.provider, permit.permit_id)
            async with queue:
                while True:
                    with storage_errors():
                        admitted, wait_ms = await self._acquire(keys=keys, args=args)
                    if admitted == 1:
                        return permit
                    if admitted == -1:
                        raise CircuitOpenError(account.provider, wait_ms / 1000)
                    waiting = await self._mark_waiting(account.provider, permit.permit_id)
                    # Pacing, not synchronisation: the meter said when the budget admits this call.
                    await asyncio.sleep(max(wait_ms / 1000, CONCURRENCY_POLL_S) * self._rng.uniform(1.0, 1.05))
        finally:
            if waiting:
                with contextlib.suppress(Exception):
                    await self._client.zrem(self._keys.provider_waiting(account.provider), permit.permit_id)

    async def _mark_waiting(self, provider: str, permit_id: str) -> bool:
        """Count this call among those waiting on the provider (until it is admitted, or for WAITING_TTL_S)."""
        with storage_errors():
            await self._client.zadd(self._keys.provider_waiting(provider), {permit_id: time.time() + WAITING_TTL_S})
        return True

    async def waiting(self, provider: str) -> int:
        """Calls waiting on the provider's limits now, across every worker."""
        with storage_errors():
            return int(await self._client.zcount(self._keys.provider_waiting(provider), time.time(), "+inf"))

    async def release(
        self, permit: Permit, limits: ProviderSettings, outcome: Outcome,
        tokens_used: int | None = None, retry_after_s: float | None = None,
    ) -> None:
        delta = 0 if tokens_used is None else tokens_used - permit.tokens
        args = [
            permit.permit_id, outcome.value, delta, _ms_per(limits.tokens_per_minute),
            int((retry_after_s or 0) * 1000), limits.breaker_failures, int(limits.breaker_open_s * 1000), IDLE_TTL_MS,
            permit.account.provider,
        ]
        account = permit.account
        with storage_errors():
            await self._release(keys=self._keys.of_provider(account.provider, account.key_fingerprint), args=args)

    async def breaker_state(self, provider: str) -> str:
        """closed, open or half_open (for status, metrics and tests)."""
        with storage_errors():
            state = await self._client.hget(self._keys.of_provider(provider, "")[2], "state")
        return state or "closed"


def _ms_per(per_minute: float | None) -> float:
    """Milliseconds between two units of a per-minute budget; 0 means unlimited."""
    return 0 if per_minute is None else 60_000 / per_minute
