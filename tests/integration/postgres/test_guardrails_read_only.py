"""Read-only access in depth, and guardrails seen by asyncpg (extended protocol, Parse-time).

Uses the `guarded` gateway of `test_guardrails_statements.py` (its fixtures are imported, so
pytest passes them by name: group `analyst` has read-only access).
"""

# ruff: noqa: F811

from __future__ import annotations

import secrets
import ssl
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors
from tests.integration.postgres.conftest import RunningGateway, Wire
from tests.integration.postgres.test_guardrails_statements import (  # noqa: F401  (fixtures)
    _connect,
    _customers,
    _probes,
    _secrets_table,
    clean,
    direct,
    guarded,
)

pytestmark = pytest.mark.pg

ESCAPES = [
    "SET default_transaction_read_only = off",
    "SET SESSION default_transaction_read_only TO false",
    "SET transaction_read_only = off",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "BEGIN READ WRITE",
    "START TRANSACTION READ WRITE",
    "RESET ALL",
    "RESET default_transaction_read_only",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
]


@pytest.mark.parametrize("sql", ESCAPES)
def test_read_only_escapes_are_refused(guarded: RunningGateway, sql: str) -> None:
    with _connect(guarded, "analyst", autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="read-only-access"):
            conn.execute(sql)
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)


def test_begin_read_write_then_insert_is_refused(
    guarded: RunningGateway, clean: psycopg.Connection[Any]
) -> None:
    with _connect(guarded, "analyst", autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="read-only-access"):
            conn.execute("BEGIN READ WRITE; INSERT INTO probe VALUES ('rw')")
        with pytest.raises(errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO probe VALUES ('plain')")
    assert _probes(clean) == []


def test_writes_fail_upstream_even_when_analysis_sees_a_read(
    guarded: RunningGateway, clean: psycopg.Connection[Any]
) -> None:
    with _connect(guarded, "analyst", autocommit=True) as conn:
        # A SELECT as far as analysis can tell: the write is inside the function.
        with pytest.raises(errors.ReadOnlySqlTransaction):
            conn.execute("SELECT sneaky_write()")
        with pytest.raises(errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM customers WHERE id = %s", (1,))
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (10,)
    with _connect(guarded, "it", autocommit=True) as conn:  # not read-only: it runs
        conn.execute("SELECT sneaky_write()")
    assert _probes(clean) == ["sneaky"]


def _show_over_wire(gw: RunningGateway, group: str, query: str, **params: str) -> str:
    """Log in with raw startup parameters (libpq would not send these) and run `query`."""
    from lockgate.protocols.postgres import messages as m

    subject = f"wire-{secrets.token_hex(3)}"
    wire = Wire(gw.port, tls=True)
    try:
        refused = wire.login(gw.token(subject, (group,)), user=subject, database="itdb", **params)
        assert refused is None, refused
        wire.send(m.query(query))
        rows = [p for t, p in wire.read_until(b"Z") if t == b"D"]
        assert len(rows) == 1
        return rows[0][6:].decode()  # one column: count(2) + length(4) + value
    finally:
        wire.close()


def test_read_only_cannot_be_switched_off_by_startup_parameters(guarded: RunningGateway) -> None:
    subject = f"analyst-{secrets.token_hex(3)}"
    dsn = guarded.dsn(guarded.token(subject, ("analyst",)), user=subject)
    opts = "-c default_transaction_read_only=off"
    with psycopg.connect(dsn, autocommit=True, options=opts) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
    shown = _show_over_wire(
        guarded,
        "analyst",
        "SHOW default_transaction_read_only",
        default_transaction_read_only="off",
    )
    assert shown == "on"
    # Near-miss: a session that is not read-only is not made read-only.
    assert _show_over_wire(guarded, "it", "SHOW default_transaction_read_only") == "off"


def test_role_cannot_be_switched_by_startup_parameter(guarded: RunningGateway) -> None:
    same = _show_over_wire(
        guarded, "it", "SELECT (current_user = session_user)::text", role="pg_read_all_data"
    )
    assert same == "true"


# ------------------------------------------------------------------------------ asyncpg
def _ssl() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _asyncpg(gw: RunningGateway, group: str = "it") -> asyncpg.Connection:
    subject = f"apg-{secrets.token_hex(3)}"
    return await asyncpg.connect(
        host="127.0.0.1",
        port=gw.port,
        user=subject,
        database="itdb",
        password=gw.token(subject, (group,)),
        ssl=_ssl(),
        statement_cache_size=0,
    )


async def test_asyncpg_refused_at_prepare(
    guarded: RunningGateway, clean: psycopg.Connection[Any]
) -> None:
    conn = await _asyncpg(guarded)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="no-unbounded-write"):
            await conn.prepare("DELETE FROM customers WHERE probe('prep') OR true")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="no-server-files"):
            await conn.fetch("SELECT probe($1), pg_read_file('/etc/hostname')", "fetch")
        assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
    finally:
        await conn.close()
    assert _probes(clean) == []
    assert _customers(clean) == 10


async def test_asyncpg_refusal_fails_the_transaction(
    guarded: RunningGateway, clean: psycopg.Connection[Any]
) -> None:
    conn = await _asyncpg(guarded)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("SELECT probe('tx')")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DROP TABLE customers")
        with pytest.raises(asyncpg.InFailedSQLTransactionError):
            await conn.fetchval("SELECT 1")
        await tx.rollback()
        assert await conn.fetchval("SELECT 2") == 2
    finally:
        await conn.close()
    assert _probes(clean) == []


async def test_asyncpg_read_only_session(guarded: RunningGateway) -> None:
    conn = await _asyncpg(guarded, "analyst")
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="read-only-access"):
            await conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("UPDATE customers SET email = email WHERE id = 1")
        assert await conn.fetchval("SELECT count(*) FROM customers") == 10
    finally:
        await conn.close()
