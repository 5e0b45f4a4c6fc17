"""The audit store's tables: sessions, the commands they ran, and refused connections.

Timestamps are UTC: stored as `timestamptz` on PostgreSQL and as naive UTC text on SQLite
(SQLAlchemy's fixed-width format, so text comparison orders them correctly), and always read
back as timezone-aware UTC datetimes. Lists (groups, tables, params) are JSON text.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeDecorator

from lockgate.store import metadata


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (naive values are taken as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class JSONText(TypeDecorator[Any]):
    """A JSON value kept as text (portable, and readable with plain SQL tools)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return json.loads(value)


sessions = Table(
    "sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("subject", String(255), nullable=False),
    Column("groups", JSONText, nullable=False),
    Column("principal_kind", String(16), nullable=False),
    Column("issuer", String(255), nullable=False),
    Column("token_id", String(255)),
    Column("resource", String(255), nullable=False),
    Column("protocol", String(32), nullable=False),
    Column("client_addr", String(255), nullable=False),
    Column("user_name", String(255), nullable=False, default=""),
    Column("application_name", String(255), nullable=False, default=""),
    Column("started_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime),
    Column("end_reason", String(32)),
    Column("bytes_from_client", BigInteger),
    Column("bytes_to_client", BigInteger),
    Column("error", Text),
)
Index("ix_sessions_started_at", sessions.c.started_at)
Index("ix_sessions_subject", sessions.c.subject, sessions.c.started_at)
Index("ix_sessions_resource", sessions.c.resource, sessions.c.started_at)

commands = Table(
    "commands",
    metadata,
    Column(
        "session_id",
        String(64),
        ForeignKey("sessions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("text", Text, nullable=False),
    Column("kind", String(64), nullable=False, default=""),
    Column("tables", JSONText, nullable=False),
    Column("params", JSONText),
    Column("decision", String(16), nullable=False),
    Column("rule", String(255), nullable=False, default=""),
    Column("reason", Text, nullable=False, default=""),
    Column("finished_at", UTCDateTime),
    Column("rows", BigInteger),
    Column("status", String(255)),
    Column("error_code", String(32)),
    Column("error_message", Text),
    Column("bytes_out", BigInteger),
    Column("duration_ms", Float),
)
Index("ix_commands_started_at", commands.c.started_at)

refusals = Table(
    "refusals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("client_addr", String(255), nullable=False),
    Column("protocol", String(32), nullable=False),
    Column("resource", String(255), nullable=False),
    Column("subject", String(255)),
    Column("code", String(32), nullable=False),
    Column("reason", Text, nullable=False),
)
Index("ix_refusals_at", refusals.c.at)
Index("ix_refusals_subject", refusals.c.subject, refusals.c.at)
Index("ix_refusals_resource", refusals.c.resource, refusals.c.at)

# How far each audit journal file has been copied into this store; written in the same
# transaction as the records, so a crash neither loses nor duplicates any.
journal_positions = Table(
    "audit_journal_positions",
    metadata,
    Column("journal", String(255), primary_key=True),
    Column("position", BigInteger, nullable=False),
)
