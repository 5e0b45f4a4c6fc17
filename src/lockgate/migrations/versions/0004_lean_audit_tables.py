"""Cheaper audit inserts on SQLite: chain events and captured results without a rowid, and
a search index without per-row column sizes.

`audit_events` and `command_results` become WITHOUT ROWID tables (the primary key is the
table, so each insert writes one b-tree fewer); the FTS5 table drops its column-size
records (`columnsize=0`: nothing ranks by them). Each is rebuilt with the same rows, so
the hash chain and the search answers stay as they were. PostgreSQL has no rowid and
keeps its GIN index: nothing changes there.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The two tables and the search index as this revision makes them, written out here: a
# later change to `lockgate.audit.tables` must not change what this revision does to a
# store that reaches it.
_LEAN_TABLES = {
    "audit_events": (
        "CREATE TABLE audit_events ("
        "chain INTEGER NOT NULL, seq BIGINT NOT NULL, kind VARCHAR(1) NOT NULL, "
        "session_id VARCHAR(64), item BIGINT, digest BLOB NOT NULL, hash BLOB NOT NULL, "
        "purge INTEGER, PRIMARY KEY (chain, seq)) WITHOUT ROWID",
        ("CREATE INDEX ix_audit_events_ref ON audit_events (session_id, item)",),
    ),
    "command_results": (
        "CREATE TABLE command_results ("
        "session_id VARCHAR(64) NOT NULL, seq INTEGER NOT NULL, format VARCHAR(16) NOT NULL, "
        "codec VARCHAR(16) NOT NULL, data BLOB NOT NULL, PRIMARY KEY (session_id, seq), "
        "FOREIGN KEY(session_id, seq) REFERENCES commands (session_id, seq) "
        "ON DELETE CASCADE) WITHOUT ROWID",
        (),
    ),
}
_FTS_TABLE = "audit_commands_fts"
_LEAN_FTS = (
    f"CREATE VIRTUAL TABLE {_FTS_TABLE} USING fts5("
    "text, session_id UNINDEXED, seq UNINDEXED, columnsize=0)"
)


def _table_sql(conn: sa.Connection, name: str) -> str | None:
    row = conn.execute(
        sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :n"), {"n": name}
    ).first()
    return None if row is None else str(row[0])


def _without_rowid(conn: sa.Connection, name: str) -> None:
    """Rebuild table `name` as `_LEAN_TABLES` has it (WITHOUT ROWID) with the same rows."""
    current = _table_sql(conn, name)
    if current is None or "WITHOUT ROWID" in current.upper():
        return  # missing (created later by create_all, already lean) or already rebuilt
    create, indexes = _LEAN_TABLES[name]
    old = f"{name}_before_0004"
    # Index names are global: the old table's must go before the new table takes them.
    for (index,) in conn.execute(
        sa.text(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = :n "
            "AND sql IS NOT NULL"
        ),
        {"n": name},
    ).all():
        conn.exec_driver_sql(f'DROP INDEX "{index}"')
    conn.exec_driver_sql(f"ALTER TABLE {name} RENAME TO {old}")
    conn.exec_driver_sql(create)
    for index in indexes:
        conn.exec_driver_sql(index)
    columns = [str(r[1]) for r in conn.exec_driver_sql(f"PRAGMA table_info({name})").all()]
    names = ", ".join(f'"{c}"' for c in columns)
    conn.exec_driver_sql(f"INSERT INTO {name} ({names}) SELECT {names} FROM {old}")
    conn.exec_driver_sql(f"DROP TABLE {old}")


def _lean_search_index(conn: sa.Connection) -> None:
    current = _table_sql(conn, _FTS_TABLE)
    if current is None or "columnsize=0" in current.replace(" ", "").lower():
        return
    old = f"{_FTS_TABLE}_before_0004"
    conn.exec_driver_sql(f"ALTER TABLE {_FTS_TABLE} RENAME TO {old}")
    conn.exec_driver_sql(_LEAN_FTS)
    conn.exec_driver_sql(
        f"INSERT INTO {_FTS_TABLE} (rowid, text, session_id, seq) "
        f"SELECT rowid, text, session_id, seq FROM {old}"
    )
    conn.exec_driver_sql(f"DROP TABLE {old}")


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "sqlite":
        return
    # command_results references commands (not the other way), so it can be renamed and
    # rebuilt on its own; foreign keys are checked again on the rows as they are copied.
    _without_rowid(conn, "audit_events")
    _without_rowid(conn, "command_results")
    _lean_search_index(conn)


def downgrade() -> None:
    raise NotImplementedError("the audit trail is never downgraded")
