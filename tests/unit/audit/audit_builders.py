"""Builders shared by the audit tests: stores with the audit tables, sessions, commands."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from lockgate.audit import journal
from lockgate.audit.tables import command_results, commands, journal_positions, refusals, sessions
from lockgate.model import (
    ClientInfo,
    Command,
    Decision,
    DecisionKind,
    Principal,
    PrincipalKind,
    ResultSummary,
    Session,
)
from lockgate.store import metadata, open_engine

AUDIT_TABLES = [sessions, commands, refusals, journal_positions, command_results]

DONE = ResultSummary(rows=3, status="SELECT 3", bytes_out=512, duration_ms=1.5)


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


def rows(engine: Engine, table: Any, *where: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(table).where(*where)))


def journal_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{journal.SUFFIX}"))


def journaled(folder: Path) -> list[list[Any]]:
    """Every whole record in the journal files of `folder`, read as an ingester would."""
    found: list[list[Any]] = []
    for path in journal_files(folder):
        records, _ = journal.decode(path.read_bytes())
        found += records
    return found
