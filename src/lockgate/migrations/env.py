"""Alembic environment: runs on the connection `lockgate.schema` hands it (never a URL here)."""

from __future__ import annotations

from alembic import context

from lockgate.store import load_tables, metadata

load_tables()
connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
