"""Retry delays and token estimates: the pure part of provider protection."""

from __future__ import annotations

import random

from orchestrator.resilience import Account, RetryPolicy, estimate_tokens


def test_backoff_is_jittered_capped_and_honours_retry_after() -> None:
    policy = RetryPolicy(max_retries=5, base_s=0.5, max_s=4.0)
    rng = random.Random(7)
    delays = [policy.delay_s(retry, None, rng) for retry in range(8) for _ in range(50)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) == len(delays)  # jittered
    assert all(2.5 <= policy.delay_s(4, 2.5, rng) <= 2.55 for _ in range(50))  # what the provider asked
    assert max(policy.delay_s(6, None, rng) for _ in range(200)) > 2.0  # grows towards the cap


def test_accounts_are_per_provider_and_key_and_never_hold_the_key() -> None:
    a, b = Account.of("deepseek", "sk-one"), Account.of("deepseek", "sk-two")
    assert a != b and a == Account.of("deepseek", "sk-one")
    assert "sk-one" not in repr(a) and Account.of("deepseek", None).key_fingerprint == "nokey"


def test_token_estimate_counts_prompt_and_completion() -> None:
    assert estimate_tokens(400, 100) == 200
    assert estimate_tokens(0, None) == 1 + 256
