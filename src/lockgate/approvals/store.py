"""Approval requests, reviewers' decisions and grants in the state store.

Theory of operation
-------------------
A request is created `pending` with what its approval rule demanded (reviewer groups,
quorum, distinct groups, expiry) copied in, so a manifest edit never changes the terms of a
request already waiting. Every status change out of `pending` is a conditional UPDATE
(`WHERE status = 'pending'`): when two processes race (two reviewers reaching the quorum,
a reviewer and the expiry), exactly one wins and the loser sees the request closed.

Decisions: any listed reviewer may deny (one denial closes the request); approvals count
until the quorum, one per reviewer, and with `distinct_groups` each counts for a reviewer
group no earlier approval counted for. Nobody decides on their own request. An approved
access request (`grant`) becomes a row in `access_grants` in the same transaction.

Every change to a request notifies `APPROVALS` in its transaction, and revoking a grant
notifies `SESSIONS` (wakeups.py): the process holding the request, or live sessions under
the grant, acts at once instead of at its next poll, on this host and on the others.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.engine import Connection, Engine

from lockgate.approvals.tables import approval_decisions, approval_requests, grants
from lockgate.config.model import ApprovalRule, parse_duration
from lockgate.errors import LockgateError
from lockgate.identity.tokens import utc
from lockgate.model import Principal
from lockgate.wakeups import APPROVALS, SESSIONS, notify

PENDING, APPROVED, DENIED, EXPIRED, WITHDRAWN = (
    "pending",
    "approved",
    "denied",
    "expired",
    "withdrawn",
)
STATEMENT, GRANT = "statement", "grant"


class DecisionRefused(LockgateError):
    """A reviewer's decision cannot be taken (not a reviewer, own request, closed...)."""


@dataclass(frozen=True, slots=True)
class ReviewDecision:
    reviewer: str
    reviewer_groups: tuple[str, ...]
    counted_group: str | None
    verdict: str
    reason: str
    decided_at: datetime


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """One request as stored, with the decisions taken on it so far."""

    id: str
    kind: str
    status: str
    requester: str
    requester_issuer: str
    requester_groups: tuple[str, ...]
    resource: str
    statement: str | None
    guardrail: str | None
    reason: str
    session_id: str | None
    rule: str
    quorum: int
    distinct_groups: bool
    reviewers: tuple[str, ...]
    grant_seconds: int | None
    created_at: datetime
    expires_at: datetime
    closed_at: datetime | None
    outcome: str | None
    decisions: tuple[ReviewDecision, ...] = ()

    @property
    def approvals(self) -> int:
        return sum(1 for d in self.decisions if d.verdict == "approve")

    def as_json(self) -> dict[str, Any]:
        """Plain data for `--json` output and webhooks (never a secret: none is stored)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "requester": self.requester,
            "requester_groups": list(self.requester_groups),
            "resource": self.resource,
            "statement": self.statement,
            "guardrail": self.guardrail,
            "reason": self.reason,
            "session_id": self.session_id,
            "rule": self.rule,
            "quorum": self.quorum,
            "distinct_groups": self.distinct_groups,
            "reviewers": list(self.reviewers),
            "grant_seconds": self.grant_seconds,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "closed_at": _iso(self.closed_at) if self.closed_at else None,
            "outcome": self.outcome,
            "approvals": self.approvals,
            "decisions": [
                {
                    "reviewer": d.reviewer,
                    "groups": list(d.reviewer_groups),
                    "counted_group": d.counted_group,
                    "verdict": d.verdict,
                    "reason": d.reason,
                    "decided_at": _iso(d.decided_at),
                }
                for d in self.decisions
            ],
        }


@dataclass(frozen=True, slots=True)
class Grant:
    """Time-boxed access to one resource for one subject, from an approved request."""

    id: str
    request_id: str
    subject: str
    issuer: str
    resource: str
    reason: str
    starts_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_reason: str | None

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and self.starts_at <= now < self.expires_at

    def as_json(self, now: datetime) -> dict[str, Any]:
        status = "revoked" if self.revoked_at else ("active" if self.active(now) else "expired")
        return {
            "id": self.id,
            "request_id": self.request_id,
            "subject": self.subject,
            "resource": self.resource,
            "reason": self.reason,
            "starts_at": _iso(self.starts_at),
            "expires_at": _iso(self.expires_at),
            "revoked_at": _iso(self.revoked_at) if self.revoked_at else None,
            "revoked_reason": self.revoked_reason,
            "status": status,
        }


def _iso(value: datetime) -> str:
    return utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


class ApprovalStore:
    """Requests, decisions and grants; every method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        for table in (approval_requests, approval_decisions, grants):
            table.create(engine, checkfirst=True)

    # ------------------------------------------------------------------ requests
    def create(
        self,
        kind: str,
        principal: Principal,
        resource: str,
        rule: ApprovalRule,
        reason: str,
        *,
        statement: str | None = None,
        guardrail: str | None = None,
        session_id: str | None = None,
        grant_seconds: int | None = None,
        now: datetime | None = None,
    ) -> ApprovalRequest:
        """Store a new pending request under `rule`'s terms."""
        now = _now(now)
        row = {
            "id": secrets.token_hex(6),
            "kind": kind,
            "status": PENDING,
            "requester": principal.subject,
            "requester_issuer": principal.issuer,
            "requester_groups": json.dumps(sorted(principal.groups)),
            "resource": resource,
            "statement": statement,
            "guardrail": guardrail,
            "reason": reason,
            "session_id": session_id,
            "rule": rule.name,
            "quorum": rule.quorum,
            "distinct_groups": int(rule.distinct_groups),
            "reviewers": json.dumps(sorted(set(rule.reviewers))),
            "grant_seconds": grant_seconds,
            "created_at": now,
            "expires_at": now + timedelta(seconds=parse_duration(rule.expires)),
            "closed_at": None,
            "outcome": None,
        }
        with self.engine.begin() as conn:
            conn.execute(approval_requests.insert().values(**row))
            notify(conn, APPROVALS)
        return _request(row, ())

    def get(self, request_id: str) -> ApprovalRequest | None:
        with self.engine.connect() as conn:
            found = self._load(conn, [request_id])
        return found[0] if found else None

    def requests(
        self, status: str | None = None, limit: int = 200, now: datetime | None = None
    ) -> list[ApprovalRequest]:
        """Newest first; requests past their expiry are marked expired first."""
        self.expire_due(now)
        query = select(approval_requests.c.id).order_by(approval_requests.c.created_at.desc())
        if status is not None:
            query = query.where(approval_requests.c.status == status)
        with self.engine.connect() as conn:
            ids = [r[0] for r in conn.execute(query.limit(limit))]
            return self._load(conn, ids)

    def close(
        self, request_id: str, status: str, outcome: str, now: datetime | None = None
    ) -> bool:
        """Move a pending request to `status`; False if it was no longer pending."""
        with self.engine.begin() as conn:
            return _close(conn, request_id, status, outcome, _now(now))

    def expire_due(self, now: datetime | None = None) -> int:
        """Mark pending requests past their expiry as expired; how many were."""
        now = _now(now)
        t = approval_requests.c
        with self.engine.begin() as conn:
            result = conn.execute(
                update(approval_requests)
                .where(and_(t.status == PENDING, t.expires_at <= now))
                .values(status=EXPIRED, closed_at=now, outcome="no reviewer decided in time")
            )
            if result.rowcount:
                notify(conn, APPROVALS)
        return int(result.rowcount or 0)

    def outcomes(self, ids: Iterable[str]) -> dict[str, tuple[str, str | None]]:
        """(status, outcome) of each request named (one indexed query)."""
        wanted = list(ids)
        if not wanted:
            return {}
        t = approval_requests.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.id, t.status, t.outcome).where(t.id.in_(wanted)))
            return {r.id: (r.status, r.outcome) for r in rows}

    # ------------------------------------------------------------------ decisions
    def decide(
        self,
        request_id: str,
        reviewer: Principal,
        verdict: str,
        reason: str,
        now: datetime | None = None,
    ) -> ApprovalRequest:
        """Record a reviewer's `approve` or `deny`; raises `DecisionRefused` if not allowed."""
        if verdict not in ("approve", "deny"):
            raise ValueError("verdict must be 'approve' or 'deny'")
        if not reason.strip():
            raise DecisionRefused("a decision needs a reason", hint="pass --reason TEXT")
        now = _now(now)
        self.expire_due(now)
        with self.engine.begin() as conn:
            found = self._load(conn, [request_id])
            if not found:
                raise DecisionRefused(
                    f"no approval request '{request_id}'",
                    hint="see the pending ones with `lockgate reviews list`",
                )
            req = found[0]
            counted = _check_decision(req, reviewer, verdict)
            conn.execute(
                approval_decisions.insert().values(
                    request_id=req.id,
                    reviewer=reviewer.subject,
                    reviewer_issuer=reviewer.issuer,
                    reviewer_groups=json.dumps(sorted(reviewer.groups)),
                    counted_group=counted,
                    verdict=verdict,
                    reason=reason,
                    decided_at=now,
                )
            )
            if verdict == "deny":
                _close(conn, req.id, DENIED, f"denied by {reviewer.subject}: {reason}", now)
            elif req.approvals + 1 >= req.quorum:
                names = [d.reviewer for d in req.decisions if d.verdict == "approve"]
                names.append(reviewer.subject)
                outcome = f"approved by {', '.join(names)}: {reason}"
                if _close(conn, req.id, APPROVED, outcome, now) and req.kind == GRANT:
                    conn.execute(
                        grants.insert().values(
                            id=secrets.token_hex(6),
                            request_id=req.id,
                            subject=req.requester,
                            issuer=req.requester_issuer,
                            resource=req.resource,
                            reason=req.reason,
                            starts_at=now,
                            expires_at=now + timedelta(seconds=req.grant_seconds or 0),
                            revoked_at=None,
                            revoked_reason=None,
                        )
                    )
            return self._load(conn, [req.id])[0]

    # ------------------------------------------------------------------ grants
    def active_grant(
        self, principal: Principal, resource: str, now: datetime | None = None
    ) -> Grant | None:
        """The principal's grant for `resource` that lasts longest, if one is active now."""
        now = _now(now)
        t = grants.c
        query = (
            select(grants)
            .where(
                and_(
                    t.subject == principal.subject,
                    t.issuer == principal.issuer,
                    t.resource == resource,
                    t.revoked_at.is_(None),
                    t.expires_at > now,
                )
            )
            .order_by(t.expires_at.desc())
        )
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                g = _grant(row._mapping)
                if g.active(now):
                    return g
        return None

    def list_grants(self, active_only: bool = False, now: datetime | None = None) -> list[Grant]:
        now = _now(now)
        query = select(grants).order_by(grants.c.starts_at.desc())
        if active_only:
            query = query.where(and_(grants.c.revoked_at.is_(None), grants.c.expires_at > now))
        with self.engine.connect() as conn:
            return [_grant(r._mapping) for r in conn.execute(query.limit(500))]

    def grants_by_id(self, ids: Iterable[str]) -> dict[str, Grant]:
        wanted = list(ids)
        if not wanted:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(select(grants).where(grants.c.id.in_(wanted)))
            return {r.id: _grant(r._mapping) for r in rows}

    def revoke_grant(self, grant_id: str, reason: str, now: datetime | None = None) -> bool:
        """End a grant early; False if no such active grant."""
        now = _now(now)
        t = grants.c
        with self.engine.begin() as conn:
            result = conn.execute(
                update(grants)
                .where(and_(t.id == grant_id, t.revoked_at.is_(None)))
                .values(revoked_at=now, revoked_reason=reason)
            )
            if result.rowcount:
                notify(conn, SESSIONS)  # live sessions under it end at once, on every host
        return bool(result.rowcount)

    # ------------------------------------------------------------------ loading
    def _load(self, conn: Connection, ids: list[str]) -> list[ApprovalRequest]:
        if not ids:
            return []
        rows = {
            r.id: r._mapping
            for r in conn.execute(select(approval_requests).where(approval_requests.c.id.in_(ids)))
        }
        decided: dict[str, list[ReviewDecision]] = {}
        d = approval_decisions.c
        for r in conn.execute(
            select(approval_decisions).where(d.request_id.in_(ids)).order_by(d.id)
        ):
            decided.setdefault(r.request_id, []).append(
                ReviewDecision(
                    reviewer=r.reviewer,
                    reviewer_groups=tuple(json.loads(r.reviewer_groups)),
                    counted_group=r.counted_group,
                    verdict=r.verdict,
                    reason=r.reason,
                    decided_at=utc(r.decided_at),
                )
            )
        return [_request(rows[i], tuple(decided.get(i, ()))) for i in ids if i in rows]


def _close(conn: Connection, request_id: str, status: str, outcome: str, now: datetime) -> bool:
    t = approval_requests.c
    result = conn.execute(
        update(approval_requests)
        .where(and_(t.id == request_id, t.status == PENDING))
        .values(status=status, closed_at=now, outcome=outcome)
    )
    if result.rowcount:
        notify(conn, APPROVALS)
    return bool(result.rowcount)


def _check_decision(req: ApprovalRequest, reviewer: Principal, verdict: str) -> str | None:
    """The reviewer group an approval counts for; raises `DecisionRefused`."""
    if req.status != PENDING:
        raise DecisionRefused(
            f"request {req.id} is already {req.status}"
            + (f" ({req.outcome})" if req.outcome else ""),
            hint="only pending requests can be decided",
        )
    # By subject alone: the same name at another issuer (or `--as`) is not someone else.
    if reviewer.subject == req.requester:
        raise DecisionRefused(
            f"'{reviewer.subject}' made request {req.id} and cannot decide on it",
            hint="ask another reviewer",
        )
    mine = sorted(set(req.reviewers) & reviewer.groups)
    if not mine:
        raise DecisionRefused(
            f"'{reviewer.subject}' is not a reviewer of request {req.id}",
            hint=f"reviewers are members of: {', '.join(req.reviewers)}",
        )
    if any(d.reviewer == reviewer.subject for d in req.decisions):
        raise DecisionRefused(
            f"'{reviewer.subject}' already decided on request {req.id}",
            hint="each reviewer counts once; ask another reviewer",
        )
    if verdict == "deny" or not req.distinct_groups:
        return mine[0]
    counted = {d.counted_group for d in req.decisions if d.verdict == "approve"}
    free = [g for g in mine if g not in counted]
    if not free:
        raise DecisionRefused(
            f"request {req.id} needs approvals from distinct groups; "
            f"{', '.join(mine)} already approved",
            hint="ask a reviewer from another group",
        )
    return free[0]


def _request(m: Any, decisions: tuple[ReviewDecision, ...]) -> ApprovalRequest:
    return ApprovalRequest(
        id=m["id"],
        kind=m["kind"],
        status=m["status"],
        requester=m["requester"],
        requester_issuer=m["requester_issuer"],
        requester_groups=tuple(json.loads(m["requester_groups"])),
        resource=m["resource"],
        statement=m["statement"],
        guardrail=m["guardrail"],
        reason=m["reason"],
        session_id=m["session_id"],
        rule=m["rule"],
        quorum=int(m["quorum"]),
        distinct_groups=bool(m["distinct_groups"]),
        reviewers=tuple(json.loads(m["reviewers"])),
        grant_seconds=m["grant_seconds"],
        created_at=utc(m["created_at"]),
        expires_at=utc(m["expires_at"]),
        closed_at=utc(m["closed_at"]) if m["closed_at"] else None,
        outcome=m["outcome"],
        decisions=decisions,
    )


def _grant(m: Any) -> Grant:
    return Grant(
        id=m["id"],
        request_id=m["request_id"],
        subject=m["subject"],
        issuer=m["issuer"],
        resource=m["resource"],
        reason=m["reason"],
        starts_at=utc(m["starts_at"]),
        expires_at=utc(m["expires_at"]),
        revoked_at=utc(m["revoked_at"]) if m["revoked_at"] else None,
        revoked_reason=m["revoked_reason"],
    )
