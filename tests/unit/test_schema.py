"""Schema revisions: a new store is stamped, an old one is refused by serve until migrated."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

from lockgate import schema
from lockgate.store import load_tables, open_engine

LOCKGATE = [sys.executable, "-m", "lockgate.cli"]
HEAD = schema.head()


def _at_baseline(engine: Engine, *, stamped: bool = True) -> None:
    """Make `engine`'s empty store what Lockgate made before result capture, with data."""
    with engine.begin() as conn:
        command.upgrade(schema._config(conn), schema.BASELINE)  # type: ignore[arg-type]
        if not stamped:
            conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(
            text(
                "INSERT INTO sessions (id, subject, groups, principal_kind, issuer, resource,"
                " protocol, client_addr, user_name, application_name, started_at) VALUES"
                " ('s1', 'alice', '[]', 'human', 'lockgate', 'db', 'postgres', '127.0.0.1:1',"
                " 'alice', '', '2026-01-01 00:00:00')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO commands (session_id, seq, started_at, text, kind, tables,"
                " decision, rule, reason) VALUES ('s1', 1, '2026-01-01 00:00:01',"
                " 'select 1', 'select', '[]', 'allow', '', '')"
            )
        )


def _check_upgrade(engine: Engine, expected_before: str | None) -> None:
    found = schema.state(engine)
    assert (found.current, found.up_to_date, found.empty) == (expected_before, False, False)
    with pytest.raises(schema.SchemaOutOfDate) as refused:
        schema.check(engine, "gw.yaml")
    assert "lockgate migrate -c gw.yaml" in (refused.value.hint or "")
    assert schema.migrate(engine) == (expected_before, HEAD)
    assert schema.state(engine).up_to_date
    schema.check(engine)
    columns = {c["name"] for c in inspect(engine).get_columns("commands")}
    assert {"result_sha256", "result_rows_dropped"} <= columns
    assert inspect(engine).has_table("command_results")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT subject FROM sessions")).scalar() == "alice"
        assert conn.execute(text("SELECT text FROM commands")).scalar() == "select 1"
    # Running it again changes nothing.
    assert schema.migrate(engine) == (HEAD, HEAD)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'lockgate.db'}"


def test_new_store_is_created_at_the_newest_revision(sqlite_url: str) -> None:
    engine = open_engine(sqlite_url)
    try:
        assert schema.state(engine).current == HEAD
        schema.check(engine)
    finally:
        engine.dispose()


@pytest.mark.parametrize("stamped", [True, False], ids=["revision-0001", "before-revisions"])
def test_sqlite_store_upgraded_with_its_data(sqlite_url: str, stamped: bool) -> None:
    load_tables()
    engine = open_engine(sqlite_url, create=False)
    try:
        _at_baseline(engine, stamped=stamped)
        _check_upgrade(engine, schema.BASELINE if stamped else None)
    finally:
        engine.dispose()


@pytest.fixture
def pg_url(pg_server: tuple[str, int, str]) -> Iterator[str]:
    host, port, user = pg_server
    name = f"lockgate_schema_{secrets.token_hex(4)}"
    with psycopg.connect(host=host, port=port, user=user, dbname="postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://{user}@{host}:{port}/{name}"
    with psycopg.connect(host=host, port=port, user=user, dbname="postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.pg
def test_postgres_store_upgraded_with_its_data(pg_url: str) -> None:
    load_tables()
    engine = open_engine(pg_url, create=False)
    try:
        _at_baseline(engine)
        _check_upgrade(engine, schema.BASELINE)
    finally:
        engine.dispose()


def test_serve_refuses_an_old_store_and_migrate_upgrades_it(tmp_path: Path) -> None:
    manifest = tmp_path / "lockgate.yaml"
    manifest.write_text(
        "version: 1\nstate: {url: 'sqlite:///state/lockgate.db', dir: state}\n"
        "listeners: [{name: pg, address: '127.0.0.1:1', tls: {enabled: false}}]\n"
        "resources: []\naccess: []\n"
    )
    load_tables()
    engine = open_engine(f"sqlite:///{tmp_path / 'state' / 'lockgate.db'}", create=False)
    try:
        _at_baseline(engine)
    finally:
        engine.dispose()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*LOCKGATE, *args, "-c", str(manifest)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=tmp_path,
        )

    served = run("serve")
    assert served.returncode == 1
    assert "schema is out of date (revision 0001" in served.stderr
    assert f"lockgate migrate -c {manifest}" in served.stderr
    migrated = run("migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert f"upgraded from revision 0001 to {HEAD}" in migrated.stdout
    assert "up to date" in run("migrate").stdout


def test_store_with_only_token_tables_counts_as_new(sqlite_url: str) -> None:
    """`lockgate token issue` before the first `serve` creates only the tables it needs."""
    from lockgate.identity.revocation import ensure_tables

    load_tables()
    engine = open_engine(sqlite_url, create=False)
    try:
        ensure_tables(engine)
        found = schema.state(engine)
        assert found.empty and found.current is None
        schema.check(engine)
        schema.create_tables(engine)
        assert schema.state(engine).current == HEAD
    finally:
        engine.dispose()
