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
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    event,
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
    # The captured result (see command_results): SHA-256 (hex) of its uncompressed bytes,
    # the rows kept, and the rows (None: unknown) and row bytes not kept. In the chain.
    Column("result_sha256", String(64)),
    Column("result_rows", BigInteger),
    Column("result_rows_dropped", BigInteger),
    Column("result_bytes_dropped", BigInteger),
    # Cells masked in what the client received: the total, and per masking rule (JSON
    # object, keys sorted). None: nothing was masked. In the chain.
    Column("masked_cells", BigInteger),
    Column("masked_by_rule", JSONText),
)
Index("ix_commands_started_at", commands.c.started_at)

# What the client received for a command (result rows after masking, up to the resource's
# caps), in the protocol's own messages (`format`, e.g. `pgwire`), compressed (`codec`:
# `zlib`, or `raw` for results too small to shrink).
# Its hash is in the command's chained outcome; deleted with the command.
command_results = Table(
    "command_results",
    metadata,
    Column("session_id", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("format", String(16), nullable=False),
    Column("codec", String(16), nullable=False),
    Column("data", LargeBinary, nullable=False),
    ForeignKeyConstraint(
        ["session_id", "seq"], ["commands.session_id", "commands.seq"], ondelete="CASCADE"
    ),
    sqlite_with_rowid=False,
)

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

# -- the evidence: hash chains over audit events (see chain.py) ------------------------------

# One chain per ingester (per state folder): its name is the fingerprint of the Ed25519 key
# that signs its checkpoints; `public_key` is the raw 32-byte key, hex.
audit_chains = Table(
    "audit_chains",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("public_key", String(64), nullable=False),
    Column("host", String(255), nullable=False, default=""),
    Column("created_at", UTCDateTime, nullable=False),
)

# One row per event (a session's start or end, a command's start or outcome, a refusal), in
# the order the ingester wrote them. `digest` is SHA-256 of the event's canonical encoding
# (recomputed from the session/command/refusal row by `verify`); `hash` chains it to the
# previous event. `item` is the command's seq (C, F) or the refusal's id (R). `purge` names
# the checkpoint that sealed the event's removal by retention.
audit_events = Table(
    "audit_events",
    metadata,
    Column("chain", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(1), nullable=False),
    Column("session_id", String(64)),
    Column("item", BigInteger),
    Column("digest", LargeBinary(32), nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
    Column("purge", Integer),
    sqlite_with_rowid=False,
)
Index("ix_audit_events_ref", audit_events.c.session_id, audit_events.c.item)

# Signed statements about a chain: `periodic` (the chain reached `seq` with `hash`) and
# `purge` (events of this chain were removed by retention; `purged`/`purged_digest` name
# them). `signer` is the chain whose key signed (a purge may run on another host).
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("chain", Integer, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("purged", BigInteger, nullable=False, default=0),
    Column("purged_digest", LargeBinary(32)),
    Column("signer", Integer, nullable=False),
    Column("signature", LargeBinary(64), nullable=False),
)
Index("ix_audit_checkpoints_chain", audit_checkpoints.c.chain, audit_checkpoints.c.seq)

# Sessions kept past their retention (legal hold).
audit_holds = Table(
    "audit_holds",
    metadata,
    Column("session_id", String(64), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("held_by", String(255), nullable=False),
    Column("held_at", UTCDateTime, nullable=False),
)

CHAIN_TABLES = [audit_chains, audit_events, audit_checkpoints, audit_holds, command_results]

# Full-text search over statements: an FTS5 table on SQLite (rowid = chain id << 40 | event
# seq, filled by the ingester in the batch's transaction), a GIN index over
# `to_tsvector('simple', text)` on PostgreSQL. Both are created if missing.
FTS_TABLE = "audit_commands_fts"
SQLITE_FTS = (
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {FTS_TABLE} USING fts5("
    "text, session_id UNINDEXED, seq UNINDEXED, columnsize=0)"
)
PG_FTS = (
    "DO $$ BEGIN IF to_regclass('commands') IS NOT NULL THEN "
    "CREATE INDEX IF NOT EXISTS ix_commands_text_tsv ON commands "
    "USING gin (to_tsvector('simple', text)); END IF; END $$"
)


def create_search_index(conn: Any) -> None:
    """Create the statement search index for this backend (a SQLAlchemy connection)."""
    name = conn.dialect.name
    if name == "sqlite":
        conn.exec_driver_sql(SQLITE_FTS)
    elif name == "postgresql":
        conn.exec_driver_sql(PG_FTS)


@event.listens_for(metadata, "after_create")
def _after_create(_target: Any, connection: Any, **kw: Any) -> None:
    tables = kw.get("tables")
    if tables is None or commands in tables or audit_events in tables:
        create_search_index(connection)
