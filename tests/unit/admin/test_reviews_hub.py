"""Review visibility and the event hub's change detection, on a real SQLite store."""

from __future__ import annotations

from lockgate.admin.auth import Caller
from lockgate.admin.context import AdminContext
from lockgate.admin.hub import EventHub
from lockgate.admin.reviews import can_decide, review_json, visible
from lockgate.admin.roles import roles_for
from lockgate.approvals.store import STATEMENT
from lockgate.model import Principal, PrincipalKind


def _caller(ctx: AdminContext, subject: str, *groups: str) -> Caller:
    p = Principal(subject, frozenset(groups), PrincipalKind.HUMAN)
    return Caller(p, roles_for(ctx.manifest, groups), "bearer")


def _request(ctx: AdminContext, requester: str = "alice") -> str:
    rule = ctx.manifest.approvals.rules[0]
    made = ctx.approvals.create(
        STATEMENT,
        Principal(requester, frozenset({"it"})),
        "db",
        rule,
        "held by guardrail 'bulk'; estimated rows=20000 > 1000",
        statement="SELECT * FROM orders",
        guardrail="bulk",
        session_id="s1",
    )
    return made.id


def test_who_sees_and_decides(ctx: AdminContext) -> None:
    r = ctx.approvals.get(_request(ctx))
    assert r is not None
    alice, bob = _caller(ctx, "alice", "it"), _caller(ctx, "bob", "it")
    rev, aud = _caller(ctx, "rev", "dba"), _caller(ctx, "aud", "audit")
    assert visible(alice, r) and visible(rev, r) and visible(aud, r) and not visible(bob, r)
    now = r.created_at
    assert can_decide(rev, r, now)
    assert not can_decide(aud, r, now) and not can_decide(alice, r, now)
    data = review_json(r, rev, now)
    assert data["estimated_rows"] == 20000 and data["rule"] == "bulk"
    assert data["requester"] == {"subject": "alice", "issuer": "lockgate", "groups": ["it"]}
    assert data["waited_seconds"] == 0 and data["can_decide"] is True


def test_hub_reports_new_and_decided_requests_once(ctx: AdminContext) -> None:
    hub = EventHub(ctx)
    assert hub._poll() == []  # the baseline
    rid = _request(ctx)
    (created,) = hub._poll()
    assert created.kind == "review" and created.request is not None
    assert created.request.id == rid
    assert hub._poll() == []
    ctx.approvals.decide(rid, Principal("rev", frozenset({"dba"})), "approve", "ok")
    (decided,) = hub._poll()
    assert decided.request is not None and decided.request.status == "approved"
