"""Builders shared by the audit tests: engines with the audit tables, sessions, commands."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.engine import Engine

from lockgate.audit.tables import commands, refusals, sessions
from lockgate.model import (
    ClientInfo,
    Command,
    Decision,
    DecisionKind,
    Principal,
    PrincipalKind,
    Session,
)
from lockgate.store import metadata, open_engine

AUDIT_TABLES = [sessions, commands, refusals]


def make_engine(url: str) -> Engine:
    engine = open_engine(url, create=False)
    metadata.create_all(engine, tables=AUDIT_TABLES)
    return engine


def make_session(
    sid: str = "s-1",
    *,
    subject: str = "alice",
    resource: str = "shop",
    started_at: datetime | None = None,
    groups: frozenset[str] = frozenset({"eng", "dba"}),
) -> Session:
    return Session(
        id=sid,
        principal=Principal(
            subject, groups, PrincipalKind.HUMAN, issuer="https://idp.example", token_id="tok-9"
        ),
        resource=resource,
        client=ClientInfo("10.0.0.5:51234", "postgres", "alice", "psql"),
        started_at=started_at or datetime.now(UTC),
    )


def make_command(
    sid: str = "s-1",
    seq: int = 1,
    text: str = "SELECT * FROM customers WHERE id = $1",
    *,
    params: tuple[str | None, ...] | None = ("42",),
    decision: Decision | None = None,
) -> Command:
    return Command(
        session_id=sid,
        seq=seq,
        text=text,
        kind="select",
        tables=("public.customers",),
        params=params,
        decision=decision or Decision(DecisionKind.ALLOW),
    )
