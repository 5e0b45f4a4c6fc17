"""Approval requests, decisions and grants in a real SQLite state store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lockgate.approvals.store import GRANT, STATEMENT, ApprovalStore, DecisionRefused
from lockgate.config.model import ApprovalRule
from lockgate.model import Principal
from lockgate.store import open_engine

ALICE = Principal("alice", frozenset({"it", "sre"}))
BOB = Principal("bob", frozenset({"sre"}))
CAROL = Principal("carol", frozenset({"sre"}))
DAVE = Principal("dave", frozenset({"dba"}))
EVE = Principal("eve", frozenset({"it"}))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ApprovalStore]:
    engine = open_engine(f"sqlite:///{tmp_path}/state.db")
    yield ApprovalStore(engine)
    engine.dispose()


def _rule(**kw: object) -> ApprovalRule:
    return ApprovalRule.model_validate({"name": "r", "reviewers": ["sre", "dba"], **kw})


def test_one_approval_closes_a_quorum_of_one(store: ApprovalStore) -> None:
    req = store.create(STATEMENT, ALICE, "db", _rule(), "held", statement="DELETE FROM t")
    assert req.status == "pending"
    done = store.decide(req.id, BOB, "approve", "ok")
    assert done.status == "approved"
    assert done.outcome == "approved by bob: ok"
    assert [d.reviewer for d in done.decisions] == ["bob"]


def test_requester_cannot_decide_and_outsiders_cannot_either(store: ApprovalStore) -> None:
    req = store.create(STATEMENT, ALICE, "db", _rule(), "held")
    with pytest.raises(DecisionRefused, match="cannot decide"):
        store.decide(req.id, ALICE, "approve", "mine")
    with pytest.raises(DecisionRefused, match="not a reviewer"):
        store.decide(req.id, EVE, "approve", "x")
    as_admin = Principal("alice", frozenset({"sre"}), issuer="admin")
    with pytest.raises(DecisionRefused, match="cannot decide"):
        store.decide(req.id, as_admin, "approve", "mine, via --as")
    assert store.outcomes([req.id]) == {req.id: ("pending", None)}


def test_quorum_from_distinct_groups(store: ApprovalStore) -> None:
    req = store.create(STATEMENT, ALICE, "db", _rule(quorum=2, distinct_groups=True), "held")
    assert store.decide(req.id, BOB, "approve", "one").status == "pending"
    with pytest.raises(DecisionRefused, match="distinct groups"):
        store.decide(req.id, CAROL, "approve", "two")
    with pytest.raises(DecisionRefused, match="already decided"):
        store.decide(req.id, BOB, "approve", "again")
    done = store.decide(req.id, DAVE, "approve", "two")
    assert done.status == "approved"
    assert [d.counted_group for d in done.decisions] == ["sre", "dba"]


def test_any_reviewer_may_deny(store: ApprovalStore) -> None:
    req = store.create(STATEMENT, ALICE, "db", _rule(quorum=2), "held")
    store.decide(req.id, BOB, "approve", "fine")
    done = store.decide(req.id, DAVE, "deny", "no")
    assert done.status == "denied" and done.outcome == "denied by dave: no"
    with pytest.raises(DecisionRefused, match="already denied"):
        store.decide(req.id, CAROL, "approve", "late")


def test_expired_requests_cannot_be_decided(store: ApprovalStore) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    req = store.create(STATEMENT, ALICE, "db", _rule(expires="1m"), "held", now=past)
    with pytest.raises(DecisionRefused, match="expired"):
        store.decide(req.id, BOB, "approve", "late")
    assert store.outcomes([req.id])[req.id][0] == "expired"


def test_a_decision_needs_a_reason(store: ApprovalStore) -> None:
    req = store.create(STATEMENT, ALICE, "db", _rule(), "held")
    with pytest.raises(DecisionRefused, match="reason"):
        store.decide(req.id, BOB, "approve", "  ")


def test_approved_access_request_becomes_a_grant(store: ApprovalStore) -> None:
    now = datetime.now(UTC)
    req = store.create(GRANT, ALICE, "db", _rule(), "INC-1", grant_seconds=600, now=now)
    assert store.active_grant(ALICE, "db") is None
    store.decide(req.id, BOB, "approve", "go", now=now)
    grant = store.active_grant(ALICE, "db", now=now)
    assert grant is not None and grant.request_id == req.id
    assert grant.expires_at == now + timedelta(seconds=600)
    assert store.active_grant(ALICE, "db", now=now + timedelta(seconds=601)) is None
    assert store.active_grant(ALICE, "other", now=now) is None
    assert store.active_grant(BOB, "db", now=now) is None
    assert store.revoke_grant(grant.id, "done")
    assert not store.revoke_grant(grant.id, "twice")
    assert store.active_grant(ALICE, "db", now=now) is None


def test_close_is_conditional(store: ApprovalStore) -> None:
    req = store.create(STATEMENT, ALICE, "db", _rule(), "held")
    assert store.close(req.id, "withdrawn", "client left")
    assert not store.close(req.id, "expired", "too late")
    assert store.outcomes([req.id]) == {req.id: ("withdrawn", "client left")}
