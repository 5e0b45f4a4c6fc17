from __future__ import annotations

import pytest

from lockgate.config.model import AccessRule, Manifest, PostgresUpstream, Resource
from lockgate.errors import UnknownResource
from lockgate.model import Decision, DecisionKind, Principal
from lockgate.policy.access import AccessPolicy


def _resource(name: str) -> Resource:
    return Resource(
        name=name,
        upstream=PostgresUpstream(host="db.internal", database=f"{name}_db", user="svc_secret"),
    )


MANIFEST = Manifest(
    resources=[_resource("orders"), _resource("billing"), _resource("sandbox")],
    access=[
        AccessRule(name="dba-everywhere", resources=["*"], groups=["dba"]),
        AccessRule(name="orders-readers", resources=["orders"], groups=["readers", "analysts"]),
        AccessRule(name="alice-billing", resources=["billing"], subjects=["alice"]),
        AccessRule(name="sandbox-for-all", resources=["sandbox"], subjects=["*"]),
    ],
)
POLICY = AccessPolicy(MANIFEST)


def _who(subject: str, *groups: str, scopes: set[str] | None = None) -> Principal:
    return Principal(
        subject=subject,
        groups=frozenset(groups),
        scopes=frozenset(scopes) if scopes is not None else None,
    )


@pytest.mark.parametrize(
    ("principal", "resource", "rule"),
    [
        (_who("root", "dba"), "orders", "dba-everywhere"),
        (_who("root", "dba"), "billing", "dba-everywhere"),
        (_who("bob", "readers"), "orders", "orders-readers"),
        (_who("bob", "analysts", "other"), "orders", "orders-readers"),
        (_who("alice"), "billing", "alice-billing"),
        (_who("anyone"), "sandbox", "sandbox-for-all"),
        (_who("bob", "readers"), "sandbox", "sandbox-for-all"),
        # The first matching rule in manifest order wins.
        (_who("alice", "dba"), "billing", "dba-everywhere"),
        (_who("root", "dba", scopes={"orders"}), "orders", "dba-everywhere"),
    ],
)
def test_allowed(principal: Principal, resource: str, rule: str) -> None:
    assert POLICY.check(principal, resource) == Decision(DecisionKind.ALLOW, rule=rule)


@pytest.mark.parametrize(
    ("principal", "resource"),
    [
        (_who("bob", "readers"), "billing"),
        (_who("alice"), "orders"),
        (_who("mallory"), "orders"),
        # A subject named like a group, or a group named like a subject, does not match.
        (_who("readers"), "orders"),
        (_who("mallory", "alice"), "billing"),
    ],
)
def test_denied_without_a_rule(principal: Principal, resource: str) -> None:
    decision = POLICY.check(principal, resource)
    assert decision.kind is DecisionKind.DENY
    assert decision.rule == ""
    assert f"is not allowed on resource '{resource}'" in decision.reason
    assert "ask an admin" in decision.reason


def test_deny_reason_names_identity_and_groups() -> None:
    decision = POLICY.check(_who("bob", "readers", "analysts"), "billing")
    assert decision.reason.startswith(
        "identity 'bob' (groups: analysts, readers) is not allowed on resource 'billing'"
    )
    assert "(groups: none)" in POLICY.check(_who("mallory"), "orders").reason


def test_scope_limits_a_token_even_when_a_rule_allows() -> None:
    decision = POLICY.check(_who("root", "dba", scopes={"orders", "sandbox"}), "billing")
    assert decision.kind is DecisionKind.DENY
    assert "token is scoped to orders, sandbox" in decision.reason
    assert "'billing' is outside its scope" in decision.reason


def test_scope_does_not_grant_access_by_itself() -> None:
    decision = POLICY.check(_who("mallory", scopes={"orders"}), "orders")
    assert decision.kind is DecisionKind.DENY
    assert "is not allowed" in decision.reason


def test_unknown_resource_lists_names_only() -> None:
    with pytest.raises(UnknownResource) as info:
        POLICY.check(_who("root", "dba"), "payroll")
    message = info.value.message
    assert message == (
        "resource 'payroll' does not exist; known resources: orders, billing, sandbox"
    )
    for detail in ("db.internal", "orders_db", "svc_secret", "5432"):
        assert detail not in message and detail not in info.value.hint


def test_unknown_resource_with_none_configured() -> None:
    with pytest.raises(UnknownResource, match="none are configured"):
        AccessPolicy(Manifest()).check(_who("root"), "orders")


def test_no_rules_denies_everyone() -> None:
    policy = AccessPolicy(Manifest(resources=[_resource("orders")]))
    assert policy.check(_who("root", "dba"), "orders").kind is DecisionKind.DENY


def test_reachable_lists_allowed_resources_in_manifest_order() -> None:
    assert POLICY.reachable(_who("bob", "readers")) == ["orders", "sandbox"]
    assert POLICY.reachable(_who("root", "dba", scopes={"billing"})) == ["billing"]


def test_odd_resource_names_are_shown_safely() -> None:
    with pytest.raises(UnknownResource) as info:
        POLICY.check(_who("root"), "x\n" + "y" * 500)
    assert "\n" not in info.value.message
    assert len(info.value.message) < 300


def test_a_time_window_admits_inside_it_and_names_itself_outside() -> None:
    from datetime import UTC, datetime

    from lockgate.config.windows import TimeWindow

    office = TimeWindow(days=["mon-fri"], hours="08:00-18:00", timezone="Europe/Berlin")
    policy = AccessPolicy(
        Manifest(
            resources=[_resource("orders")],
            access=[
                AccessRule(name="office", resources=["orders"], groups=["analysts"], when=office),
                AccessRule(name="oncall", resources=["orders"], groups=["oncall"]),
            ],
        )
    )
    monday = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    sunday = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
    assert policy.check(_who("ann", "analysts"), "orders", monday).rule == "office"
    closed = policy.check(_who("ann", "analysts"), "orders", sunday)
    assert not closed.allowed and closed.rule == "office"
    assert "mon-fri 08:00-18:00 (Europe/Berlin); it is Sun 10:00 there" in closed.reason
    assert policy.window("office") == office and policy.windowed
    # Another rule that matches still admits outside the window.
    assert policy.check(_who("bo", "analysts", "oncall"), "orders", sunday).rule == "oncall"
