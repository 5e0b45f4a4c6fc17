"""The state store's schema version: Alembic revisions under `lockgate/migrations`.

Theory of operation
-------------------
A new, empty store is created from the tables the code declares and stamped with the
newest revision (Alembic's "create, then stamp head"). An existing store is only ever
changed by `lockgate migrate`, which runs the revisions it lacks; a store made before
revisions existed (no `alembic_version` table) counts as the first revision. `lockgate
serve` refuses to start on a store that is not at the newest revision, so no gateway writes
records the store cannot hold. Tables added later are still created when missing (as
before revisions existed); a change to an existing table needs a revision.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from lockgate.errors import LockgateError

BASELINE = "0001"
VERSION_TABLE = "alembic_version"
# A store without this table is new, even if some commands (`token issue`) already created
# the few tables they use: it gets every table and the newest revision.
MARKER_TABLE = "commands"


class SchemaOutOfDate(LockgateError):
    """The state store's schema is older (or newer) than this Lockgate."""


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where a store's schema stands: its revision (None: before revisions) and the newest."""

    current: str | None
    head: str
    empty: bool

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def _config(conn: Connection) -> object:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(files("lockgate") / "migrations"))
    cfg.attributes["connection"] = conn
    return cfg


def head() -> str:
    """The newest revision this Lockgate knows."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(files("lockgate") / "migrations"))
    found = script.get_current_head()
    assert found is not None
    return found


def state(engine: Engine) -> SchemaState:
    """Read the store's revision."""
    with engine.connect() as conn:
        names = set(inspect(conn).get_table_names())
        current = None
        if VERSION_TABLE in names:
            current = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    return SchemaState(current, head(), empty=current is None and MARKER_TABLE not in names)


def create_tables(engine: Engine) -> None:
    """Create missing tables; a new store is stamped with the newest revision."""
    from lockgate.store import metadata

    with engine.begin() as conn:
        names = set(inspect(conn).get_table_names())
        empty = VERSION_TABLE not in names and MARKER_TABLE not in names
        metadata.create_all(conn)
        if empty:
            from alembic import command

            command.stamp(_config(conn), "head")  # type: ignore[arg-type]


def migrate(engine: Engine) -> tuple[str | None, str]:
    """Upgrade the store to the newest revision: (revision before, revision after)."""
    from alembic import command

    before = state(engine)
    if before.empty:
        create_tables(engine)
        return None, before.head
    with engine.begin() as conn:
        cfg = _config(conn)
        if before.current is None:
            command.stamp(cfg, BASELINE)  # type: ignore[arg-type]
        command.upgrade(cfg, "head")  # type: ignore[arg-type]
    # Tables the revisions do not know (added by newer code) are still created when missing.
    create_tables(engine)
    return before.current, before.head


def check(engine: Engine, manifest_path: str = "lockgate.yaml") -> None:
    """Raise `SchemaOutOfDate` unless the store is at the newest revision (or empty)."""
    found = state(engine)
    if found.empty or found.up_to_date:
        return
    where = found.current or "from before schema revisions"
    raise SchemaOutOfDate(
        f"the state store's schema is out of date (revision {where}, this Lockgate needs "
        f"{found.head})",
        hint=f"stop every gateway using this store, then run: lockgate migrate -c {manifest_path}",
    )
