"""API keys, principals and the bind rule: pure, no server."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from orchestrator import metrics
from orchestrator.auth import (
    ANONYMOUS,
    STALE_AFTER_S,
    Authenticator,
    FailureLine,
    FailureTally,
    KeySnapshot,
    Principal,
    RuntimeKey,
    hash_key,
    is_loopback,
    new_key,
    system,
    unsafe_bind,
)
from orchestrator.errors import StorageUnavailableError, UnauthenticatedError
from orchestrator.settings import AuthSettings, Settings

ALICE, ADMIN = new_key(), new_key()
AUTH = AuthSettings(keys={
    "alice-ci": {"hash": hash_key(ALICE), "tenant": "alice", "scopes": ["submit", "read"]},
    "ops": {"hash": hash_key(ADMIN), "tenant": "ops", "scopes": ["admin"]},
})


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def authenticator(settings: AuthSettings = AUTH, runtime: Mapping[str, RuntimeKey] | None = None,
                  managed: bool | None = None, clock: Clock | None = None) -> Authenticator:
    """An Authenticator with a current snapshot of runtime keys, as an ingress replica's key ring keeps it."""
    clock = clock or Clock()
    auth = Authenticator(settings, clock)
    runtime = runtime or {}
    auth.load(KeySnapshot(runtime, managed=bool(runtime) if managed is None else managed, confirmed_at=clock()))
    return auth


def test_new_keys_are_long_random_and_hash_to_the_configured_form() -> None:
    assert ALICE != ADMIN and ALICE.startswith("orch_") and len(ALICE) >= 40
    assert hash_key(ALICE).startswith("sha256:") and len(hash_key(ALICE)) == len("sha256:") + 64
    assert ALICE not in hash_key(ALICE)


def test_a_valid_key_names_its_tenant_and_scopes() -> None:
    alice = authenticator().authenticate(f"Bearer {ALICE}")
    assert (alice.key_id, alice.tenant, alice.scopes) == ("alice-ci", "alice", frozenset({"submit", "read"}))
    assert alice.can("submit") and alice.can("read") and not alice.can("admin") and not alice.can("metrics")
    assert alice.sees("alice") and not alice.sees("bob") and not alice.sees(None)
    assert authenticator().authenticate(f"bearer   {ALICE}  ").key_id == "alice-ci"  # scheme is case-blind


def test_admin_may_do_everything_and_sees_every_tenant() -> None:
    ops = authenticator().authenticate(f"Bearer {ADMIN}")
    assert all(ops.can(scope) for scope in ("submit", "read", "admin", "metrics"))
    assert ops.sees("alice") and ops.sees(None)


@pytest.mark.parametrize("header", [None, "", "Bearer", f"Basic {ALICE}", "Bearer orch_wrong", f"Bearer {ALICE}x"])
def test_a_missing_or_wrong_key_is_refused_without_echoing_it(header: str | None) -> None:
    with pytest.raises(UnauthenticatedError) as refused:
        authenticator().authenticate(header)
    assert refused.value.code == -32011
    assert ALICE not in str(refused.value) and "orch_wrong" not in str(refused.value)


NEAR_MISSES = st.builds(lambda scheme, key, tail: scheme + key + tail,
                        st.sampled_from(["Bearer ", "bearer  ", "Basic "]),
                        st.sampled_from([ALICE, ADMIN, ALICE[:-1], ADMIN.upper()]),
                        st.sampled_from(["", " ", "\x00", "=="]))


@given(st.text() | NEAR_MISSES)
def test_no_other_header_gets_in_and_none_breaks_the_check(header: str) -> None:
    try:
        principal = authenticator().authenticate(header)
    except UnauthenticatedError as refused:
        assert str(refused) in ("unauthenticated: invalid API key",
                                "unauthenticated: no API key: send the header `Authorization: Bearer <key>`")
        return
    assert header.lower().startswith("bearer ") and header[7:].strip() in (ALICE, ADMIN), principal


def test_without_keys_everyone_is_the_anonymous_operator() -> None:
    auth = authenticator(AuthSettings())
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
    assert unsafe_bind(host, AuthSettings(required=True)) is None  # then an empty Redis refuses everyone


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


@pytest.mark.parametrize("name", ["system", "System", "anonymous", "nobody"])
def test_no_key_takes_a_name_of_the_orchestrators_own_callers(name: str) -> None:
    with pytest.raises(ValidationError, match=f"auth.keys.{name}: the name is reserved"):
        AuthSettings(keys={name: {"hash": hash_key("k"), "tenant": "a", "scopes": ["admin"]}})


def test_only_the_orchestrator_itself_is_internal_whatever_a_key_is_named() -> None:
    assert system("acme").internal and not ANONYMOUS.internal
    assert not authenticator().authenticate(f"Bearer {ADMIN}").internal


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


# ---------------------------------------------------------------- keys created at runtime

CI, OLD, GONE, LASTING = new_key(), new_key(), new_key(), new_key()
RUNTIME = {
    hash_key(LASTING): RuntimeKey("lasting", "acme", frozenset({"read"}), created_at=900.0),
    hash_key(CI): RuntimeKey("ci-bot", "acme", frozenset({"submit"}), created_at=900.0, expires_at=1010.0),
    hash_key(OLD): RuntimeKey("old", "acme", frozenset({"read"}), created_at=1.0, expires_at=999.0),
    hash_key(GONE): RuntimeKey("gone", "acme", frozenset({"read"}), created_at=1.0, revoked_at=950.0),
}


def refusal(auth: Authenticator, header: str | None) -> str:
    with pytest.raises(UnauthenticatedError) as refused:
        auth.authenticate(header)
    for key in (CI, OLD, GONE, LASTING):
        assert key not in str(refused.value)
    return str(refused.value)


def test_runtime_keys_merge_with_the_settings_keys_until_they_expire_or_are_revoked() -> None:
    clock = Clock(1000.0)
    auth = authenticator(runtime=RUNTIME, clock=clock)
    ci = RUNTIME[hash_key(CI)]
    assert auth.authenticate(f"Bearer {CI}") == Principal(ci.name, ci.tenant, ci.scopes, credential=hash_key(CI))
    assert auth.authenticate(f"Bearer {CI}").key_id == "ci-bot"
    assert auth.authenticate(f"Bearer {ALICE}").key_id == "alice-ci"
    assert refusal(auth, f"Bearer {OLD}") == "unauthenticated: API key expired"
    assert refusal(auth, f"Bearer {GONE}") == "unauthenticated: API key revoked"
    clock.now = 1010.0  # its expiry is checked on every request: no reload needed
    assert refusal(auth, f"Bearer {CI}") == "unauthenticated: API key expired"
    assert refusal(auth, "Bearer orch_nope") == "unauthenticated: invalid API key"
    assert refusal(auth, None).startswith("unauthenticated: no API key")
    assert auth.failures.take() == {"expired": 2, "revoked": 1, "unknown": 1, "missing": 1}
    assert auth.failures.take() == {}


@pytest.mark.parametrize(("settings", "runtime", "managed", "on"), [
    (AuthSettings(), {}, False, False),  # nothing anywhere: auth off, loopback only
    (AuthSettings(), RUNTIME, True, True),  # keys in Redis alone switch it on
    (AuthSettings(), {}, True, True),  # every runtime key revoked and forgotten: still on, never reopened
    (AuthSettings(required=True), {}, False, True),  # required: on with no key at all (everyone refused)
    (AUTH, {}, False, True),
])
def test_auth_is_on_when_either_source_has_keys(settings: AuthSettings, runtime: Mapping[str, RuntimeKey],
                                                managed: bool, on: bool) -> None:
    auth = authenticator(settings, runtime, managed)
    if on:
        assert refusal(auth, None).startswith("unauthenticated: no API key")
    else:
        assert auth.authenticate(None) is ANONYMOUS


def test_without_a_fresh_snapshot_only_settings_keys_are_answered() -> None:
    clock = Clock(1000.0)
    auth = Authenticator(AUTH, clock)
    assert auth.authenticate(f"Bearer {ADMIN}").key_id == "ops"  # settings keys need no Redis
    with pytest.raises(StorageUnavailableError):  # a runtime key, or a wrong one: cannot tell yet
        auth.authenticate(f"Bearer {CI}")
    with pytest.raises(StorageUnavailableError):  # auth on or off depends on Redis too
        Authenticator(AuthSettings(), clock).authenticate(None)
    auth.load(KeySnapshot(RUNTIME, managed=True, confirmed_at=clock()))
    assert auth.authenticate(f"Bearer {LASTING}").key_id == "lasting"
    clock.now += STALE_AFTER_S - 1
    auth.confirm(clock())  # the version did not move
    clock.now += STALE_AFTER_S - 1
    assert auth.authenticate(f"Bearer {LASTING}").key_id == "lasting"
    clock.now += 2  # Redis unread for longer: a revocation could be unseen
    with pytest.raises(StorageUnavailableError, match="could not be read"):
        auth.authenticate(f"Bearer {LASTING}")
    assert auth.authenticate(f"Bearer {ADMIN}").key_id == "ops"


def test_failure_lines_are_one_per_reason_per_window_with_the_count() -> None:
    tally = FailureTally(every_s=10.0)
    assert tally.note("unknown", 100.0) == [FailureLine("unknown", 1)]  # the first at once
    assert tally.note("unknown", 101.0) == [] and tally.note("unknown", 105.0) == []
    assert tally.note("expired", 105.0, "ci-bot") == [FailureLine("expired", 1, ("ci-bot",))]  # its own window
    assert tally.due(109.9) == []
    assert tally.due(110.0) == [FailureLine("unknown", 2)]  # the rest of the burst, when the window ends
    assert tally.due(200.0) == []  # nothing new: nothing said
    for name in ["a", "b", "a", "c", "d", "e", "f", "g"]:
        tally.note("revoked", 300.0, name)
    assert tally.due(310.0) == [FailureLine("revoked", 7, ("a", "b", "c", "d", "e"))]  # a few names, not all
    assert tally.take() == {"unknown": 3, "expired": 1, "revoked": 8}


def test_failures_are_logged_without_the_key(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(1000.0)
    auth = authenticator(runtime=RUNTIME, clock=clock)
    with caplog.at_level(logging.WARNING, logger="orchestrator.auth"):
        for _ in range(3):
            refusal(auth, f"Bearer {GONE}")
            refusal(auth, "Bearer orch_guessed-key-1234")
        clock.now += 10
        auth.report(clock())
    lines = [record.getMessage() for record in caplog.records]
    assert lines == ["authentication refused: reason=revoked count=1 keys=gone",
                     "authentication refused: reason=unknown count=1",
                     "authentication refused: reason=unknown count=2",
                     "authentication refused: reason=revoked count=2 keys=gone"]
    assert not any(GONE in line or "guessed" in line for line in caplog.text.splitlines())


def test_the_failures_counter_has_every_reason_and_nothing_else() -> None:
    text = metrics.render(metrics.families({}, None, {}, {}, {"unknown": 3, "revoked": 1})).decode()
    [family] = [f for f in text_string_to_metric_families(text) if f.name == "orchestrator_auth_failures"]
    assert {s.labels["reason"]: s.value for s in family.samples if s.name.endswith("_total")} == {
        "missing": 0, "unknown": 3, "expired": 0, "revoked": 1}
