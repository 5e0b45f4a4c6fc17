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

from lockgate.audit.tables import FTS_TABLE, SQLITE_FTS, audit_events, command_results

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _without_rowid(conn: sa.Connection, table: sa.Table) -> None:
    """Rebuild `table` as its current definition (WITHOUT ROWID) with the same rows."""
    row = conn.execute(
        sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :n"),
        {"n": table.name},
    ).first()
    if row is None or "WITHOUT ROWID" in str(row[0]).upper():
        return  # missing (created later by create_all, already lean) or already rebuilt
    old = f"{table.name}_before_0004"
    for index in table.indexes:
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {index.name}")
    conn.exec_driver_sql(f"ALTER TABLE {table.name} RENAME TO {old}")
    table.create(conn)
    names = ", ".join(f'"{c.name}"' for c in table.columns)
    conn.exec_driver_sql(f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {old}")
    conn.exec_driver_sql(f"DROP TABLE {old}")


def _lean_search_index(conn: sa.Connection) -> None:
    row = conn.execute(
        sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :n"),
        {"n": FTS_TABLE},
    ).first()
    if row is None or "columnsize=0" in str(row[0]).replace(" ", "").lower():
        return
    old = f"{FTS_TABLE}_before_0004"
    conn.exec_driver_sql(f"ALTER TABLE {FTS_TABLE} RENAME TO {old}")
    conn.exec_driver_sql(SQLITE_FTS)
    conn.exec_driver_sql(
        f"INSERT INTO {FTS_TABLE} (rowid, text, session_id, seq) "
        f"SELECT rowid, text, session_id, seq FROM {old}"
    )
    conn.exec_driver_sql(f"DROP TABLE {old}")


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "sqlite":
        return
    # command_results references commands (not the other way), so it can be renamed and
    # rebuilt on its own; foreign keys are checked again on the rows as they are copied.
    _without_rowid(conn, audit_events)
    _without_rowid(conn, command_results)
    _lean_search_index(conn)


def downgrade() -> None:
    raise NotImplementedError("the audit trail is never downgraded")
