"""The state store: one SQLAlchemy engine and one MetaData that every part adds tables to.

SQLite (the default) runs in WAL mode so readers (the CLI, the admin API) never block the
gateway's writers; several worker processes share the file with a busy timeout.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, event
from sqlalchemy.engine import Engine, create_engine

metadata = MetaData()

# Modules that declare tables on `metadata`; imported before `create_all`.
_TABLE_MODULES = (
    "lockgate.audit.tables",
    "lockgate.identity.tables",
    "lockgate.secrets.tables",
    "lockgate.approvals.tables",
)

SQLITE_BUSY_TIMEOUT_MS = 10_000


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives the process being killed (-9); only an OS
    # crash can lose the last transactions.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def open_engine(url: str, *, create: bool = True) -> Engine:
    """Open the state store at `url`, creating the SQLite file's folder and the tables."""
    if url.startswith("sqlite:///") and not url.endswith(":memory:"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, future=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    if create:
        load_tables()
        from lockgate.schema import create_tables

        create_tables(engine)
    return engine


def load_tables() -> None:
    """Import every module that declares tables on `metadata`."""
    for mod in _TABLE_MODULES:
        importlib.import_module(mod)
