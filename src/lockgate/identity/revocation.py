"""Revoking identities of outside issuers, and finding which live sessions a revocation ends.

Gateway tokens are revoked on their own `issued_tokens` row. OIDC tokens have no row here,
so `revoked_identities` names what to refuse: one token (`issuer` + `jti`) or a subject
(`issuer` + `subject`, or issuer `*` for every issuer). Both lists live in the state
store, so a revocation written by one process is seen by every gateway on its next check.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.engine import Engine

from lockgate.identity.tables import issued_tokens, revoked_identities
from lockgate.identity.tokens import utc
from lockgate.model import Principal
from lockgate.wakeups import REVOKED, notify

ANY_ISSUER = "*"


def ensure_tables(engine: Engine) -> None:
    """Create the revocation tables if missing (normally `open_engine` already did)."""
    issued_tokens.create(engine, checkfirst=True)
    revoked_identities.create(engine, checkfirst=True)


@dataclass(frozen=True, slots=True)
class Revocation:
    """One entry of the revocation list."""

    issuer: str
    subject: str | None
    jti: str | None
    revoked_at: datetime
    reason: str | None


def revoke_identity(
    engine: Engine,
    issuer: str,
    *,
    subject: str | None = None,
    jti: str | None = None,
    reason: str = "",
) -> Revocation:
    """Add a subject or a single token (`jti`) of `issuer` to the revocation list."""
    if (subject is None) == (jti is None):
        raise ValueError("revoke either a subject or a jti")
    if jti is not None and issuer == ANY_ISSUER:
        raise ValueError("a jti is only unique within its issuer; name the issuer")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            revoked_identities.insert().values(
                id=secrets.token_hex(8),
                issuer=issuer,
                subject=subject,
                jti=jti,
                revoked_at=now,
                reason=reason or None,
            )
        )
        notify(conn, REVOKED)  # other gateway hosts end its sessions at once
    return Revocation(issuer, subject, jti, now, reason or None)


def lift_subject_revocation(engine: Engine, subject: str, issuer: str | None = None) -> int:
    """Remove the subject's revocations (of `issuer`, or all); the number removed."""
    cond = revoked_identities.c.subject == subject
    if issuer is not None:
        cond = and_(cond, revoked_identities.c.issuer == issuer)
    with engine.begin() as conn:
        return int(conn.execute(delete(revoked_identities).where(cond)).rowcount or 0)


def revoke_gateway_subject(engine: Engine, subject: str, reason: str = "") -> int:
    """Revoke every unrevoked gateway token of `subject`; the number revoked."""
    from sqlalchemy import update

    with engine.begin() as conn:
        result = conn.execute(
            update(issued_tokens)
            .where(issued_tokens.c.subject == subject, issued_tokens.c.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC), revoked_reason=reason or None)
        )
        if result.rowcount:
            notify(conn, REVOKED)
    return int(result.rowcount or 0)


def _row(row: object) -> Revocation:
    m = row._mapping  # type: ignore[attr-defined]
    return Revocation(m["issuer"], m["subject"], m["jti"], utc(m["revoked_at"]), m["reason"])


def find_revocation(
    engine: Engine, issuer: str, subject: str, jti: str | None
) -> Revocation | None:
    """The revocation that covers this identity (its subject or its token), or None."""
    c = revoked_identities.c
    who = c.subject == subject
    if jti is not None:
        who = or_(who, and_(c.jti == jti, c.issuer == issuer))
    query = (
        select(revoked_identities)
        .where(c.issuer.in_((issuer, ANY_ISSUER)), who)
        .order_by(c.revoked_at)
        .limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return _row(row) if row is not None else None


def list_revocations(engine: Engine) -> list[Revocation]:
    """Every entry of the outside-issuer revocation list, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(revoked_identities).order_by(revoked_identities.c.revoked_at)
        ).all()
    return [_row(r) for r in rows]


def revoked_principals(
    engine: Engine, principals: Iterable[Principal], gateway_issuer: str
) -> dict[Principal, str]:
    """Of `principals`, those revoked now, each with a short reason (one query per list)."""
    wanted = list(set(principals))
    if not wanted:
        return {}
    out: dict[Principal, str] = {}
    gateway_jtis = {p.token_id for p in wanted if p.issuer == gateway_issuer and p.token_id}
    outside = [p for p in wanted if p.issuer != gateway_issuer]
    with engine.connect() as conn:
        revoked_jtis: set[str] = set()
        if gateway_jtis:
            rows = conn.execute(
                select(issued_tokens.c.jti).where(
                    issued_tokens.c.jti.in_(gateway_jtis), issued_tokens.c.revoked_at.is_not(None)
                )
            ).all()
            revoked_jtis = {r[0] for r in rows}
        entries: list[Revocation] = []
        if outside:
            c = revoked_identities.c
            subjects = {p.subject for p in outside}
            jtis = {p.token_id for p in outside if p.token_id}
            rows = conn.execute(
                select(revoked_identities).where(or_(c.subject.in_(subjects), c.jti.in_(jtis)))
            ).all()
            entries = [_row(r) for r in rows]
    for p in wanted:
        if p.issuer == gateway_issuer:
            if p.token_id in revoked_jtis:
                out[p] = "its token was revoked"
            continue
        for e in entries:
            if e.issuer not in (p.issuer, ANY_ISSUER):
                continue
            if e.subject is not None and e.subject == p.subject:
                out[p] = f"identity '{p.subject}' was revoked"
                break
            if e.jti is not None and e.jti == p.token_id:
                out[p] = "its token was revoked"
                break
    return out
