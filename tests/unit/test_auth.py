"""API keys, principals and the bind rule: pure, no server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestrator.auth import ANONYMOUS, Authenticator, hash_key, is_loopback, new_key, unsafe_bind
from orchestrator.errors import UnauthenticatedError
from orchestrator.settings import AuthSettings, Settings

ALICE, ADMIN = new_key(), new_key()
AUTH = AuthSettings(keys={
    "alice-ci": {"hash": hash_key(ALICE), "tenant": "alice", "scopes": ["submit", "read"]},
    "ops": {"hash": hash_key(ADMIN), "tenant": "ops", "scopes": ["admin"]},
})


def test_new_keys_are_long_random_and_hash_to_the_configured_form() -> None:
    assert ALICE != ADMIN and ALICE.startswith("orch_") and len(ALICE) >= 40
    assert hash_key(ALICE).startswith("sha256:") and len(hash_key(ALICE)) == len("sha256:") + 64
    assert ALICE not in hash_key(ALICE)


def test_a_valid_key_names_its_tenant_and_scopes() -> None:
    alice = Authenticator(AUTH).authenticate(f"Bearer {ALICE}")
    assert (alice.key_id, alice.tenant, alice.scopes) == ("alice-ci", "alice", frozenset({"submit", "read"}))
    assert alice.can("submit") and alice.can("read") and not alice.can("admin") and not alice.can("metrics")
    assert alice.sees("alice") and not alice.sees("bob") and not alice.sees(None)
    assert Authenticator(AUTH).authenticate(f"bearer   {ALICE}  ").key_id == "alice-ci"  # scheme is case-blind


def test_admin_may_do_everything_and_sees_every_tenant() -> None:
    ops = Authenticator(AUTH).authenticate(f"Bearer {ADMIN}")
    assert all(ops.can(scope) for scope in ("submit", "read", "admin", "metrics"))
    assert ops.sees("alice") and ops.sees(None)


@pytest.mark.parametrize("header", [None, "", "Bearer", f"Basic {ALICE}", "Bearer orch_wrong", f"Bearer {ALICE}x"])
def test_a_missing_or_wrong_key_is_refused_without_echoing_it(header: str | None) -> None:
    with pytest.raises(UnauthenticatedError) as refused:
        Authenticator(AUTH).authenticate(header)
    assert refused.value.code == -32011
    assert ALICE not in str(refused.value) and "orch_wrong" not in str(refused.value)


NEAR_MISSES = st.builds(lambda scheme, key, tail: scheme + key + tail,
                        st.sampled_from(["Bearer ", "bearer  ", "Basic "]),
                        st.sampled_from([ALICE, ADMIN, ALICE[:-1], ADMIN.upper()]),
                        st.sampled_from(["", " ", "\x00", "=="]))


@given(st.text() | NEAR_MISSES)
def test_no_other_header_gets_in_and_none_breaks_the_check(header: str) -> None:
    try:
        principal = Authenticator(AUTH).authenticate(header)
    except UnauthenticatedError as refused:
        assert str(refused) in ("unauthenticated: invalid API key",
                                "unauthenticated: no API key: send the header `Authorization: Bearer <key>`")
        return
    assert header.lower().startswith("bearer ") and header[7:].strip() in (ALICE, ADMIN), principal


def test_without_keys_everyone_is_the_anonymous_operator() -> None:
    auth = Authenticator(AuthSettings())
    assert auth.authenticate(None) is ANONYMOUS and auth.authenticate("Bearer whatever") is ANONYMOUS
    assert ANONYMOUS.admin and ANONYMOUS.sees(None)


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("localhost", True), ("::1", True), ("[::1]", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.5", False), ("example.com", False),
])
def test_only_loopback_may_be_served_without_keys(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    assert (unsafe_bind(host, AuthSettings()) is None) is loopback
    assert unsafe_bind(host, AUTH) is None


@pytest.mark.parametrize(("key", "field"), [
    ({"hash": "plain-text-key", "tenant": "a", "scopes": ["read"]}, "hash"),
    ({"hash": hash_key("k"), "tenant": "a b", "scopes": ["read"]}, "tenant"),
    ({"hash": hash_key("k"), "tenant": "a", "scopes": ["root"]}, "scopes"),
    ({"hash": hash_key("k"), "tenant": "a", "scopes": []}, "scopes"),
])
def test_key_settings_are_checked(key: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as bad:
        AuthSettings(keys={"k": key})
    assert field in str(bad.value)


def test_one_hash_for_two_keys_is_refused() -> None:
    same = {"hash": hash_key("k"), "tenant": "a", "scopes": ["read"]}
    with pytest.raises(ValidationError, match="same hash"):
        AuthSettings(keys={"one": same, "two": {**same, "tenant": "b"}})


def test_quotas_come_from_the_tenant_else_the_default() -> None:
    settings = Settings(auth={"default_quota": {"max_active_tasks": 100},
                              "quotas": {"alice": {"max_active_tasks": 5, "submits_per_s": 2, "submit_burst": 4}}})
    assert settings.auth.quota_for("alice").max_active_tasks == 5
    assert settings.auth.quota_for("bob").max_active_tasks == 100
    assert settings.auth.quota_for("bob").submits_per_s is None


def test_only_keys_trusted_with_it_submit_urgent_work() -> None:
    from orchestrator.auth import Principal, max_priority
    from orchestrator.settings import QuotaSettings

    plain = Principal("k", "acme", frozenset({"submit"}))
    urgent = Principal("k", "acme", frozenset({"submit", "urgent"}))
    assert max_priority(plain, None, threshold=10) == 9
    assert max_priority(plain, QuotaSettings(max_priority=10), threshold=10) == 10  # the tenant is trusted
    assert max_priority(plain, QuotaSettings(max_priority=4), threshold=10) == 4  # and capped
    assert max_priority(urgent, QuotaSettings(max_priority=4), threshold=10) == 10
    assert max_priority(ANONYMOUS, None, threshold=10) == 10  # auth off: the operator
    assert max_priority(plain, None, threshold=7) == 6
