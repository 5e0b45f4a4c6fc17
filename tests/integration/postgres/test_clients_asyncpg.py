"""asyncpg (binary protocol, named statements, portals) through the gateway."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import io
import ssl
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from tests.integration.postgres.conftest import RunningGateway

pytestmark = pytest.mark.pg


def _ssl() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _connect(gateway: RunningGateway, token: str) -> asyncpg.Connection:
    return await asyncpg.connect(
        host="127.0.0.1",
        port=gateway.port,
        user="alice",
        database="itdb",
        password=token,
        ssl=_ssl(),
        timeout=20,
    )


@pytest.fixture
async def conn(gateway: RunningGateway, token: str) -> AsyncIterator[asyncpg.Connection]:
    c = await _connect(gateway, token)
    try:
        yield c
    finally:
        await c.close(timeout=10)


async def test_prepared_statements(conn: asyncpg.Connection) -> None:
    stmt = await conn.prepare("select $1::int + $2::int as s, $3::text as t")
    for i in range(10):
        assert tuple(await stmt.fetchrow(i, 1, f"x{i}")) == (i + 1, f"x{i}")
    assert [a.name for a in stmt.get_attributes()] == ["s", "t"]
    assert await stmt.fetchval(40, 2, None) == 42
    # A statement that fails at execution leaves the prepared one usable.
    div = await conn.prepare("select 10 / $1::int")
    with pytest.raises(asyncpg.DivisionByZeroError):
        await div.fetchval(0)
    assert await div.fetchval(5) == 2


async def test_binary_types(conn: asyncpg.Connection) -> None:
    at = dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=dt.UTC)
    u = uuid.uuid4()
    blob = bytes(range(256)) * 300
    row = await conn.fetchrow(
        "select $1::int8 a, $2::numeric b, $3::timestamptz c, $4::uuid d, $5::jsonb e, "
        "$6::bytea f, $7::int4[] g, $8::text[] h, $9::float8 i, $10::interval j",
        -(2**63),
        decimal.Decimal("-0.000000000000000000001"),
        at,
        u,
        '{"k": [1, 2, {"z": null}]}',
        blob,
        [1, None, 3],
        ["x", "y z", None],
        1.5,
        dt.timedelta(days=3, microseconds=5),
    )
    assert row is not None
    assert tuple(row) == (
        -(2**63),
        decimal.Decimal("-0.000000000000000000001"),
        at,
        u,
        '{"k": [1, 2, {"z": null}]}',
        blob,
        [1, None, 3],
        ["x", "y z", None],
        1.5,
        dt.timedelta(days=3, microseconds=5),
    )
    rows = await conn.fetch("select g, g::text || 'x' from generate_series(1, 5000) g")
    assert len(rows) == 5000 and rows[-1][1] == "5000x"


async def test_copy_records_to_table_and_copy_from_query(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "drop table if exists ap_copy; create table ap_copy (id int, v text, b bytea)"
    )
    records = [(i, f"v{i}", bytes([i % 251])) for i in range(30000)]
    res = await conn.copy_records_to_table("ap_copy", records=records)
    assert res == "COPY 30000"
    assert await conn.fetchval("select count(*) from ap_copy") == 30000
    out = io.BytesIO()
    res = await conn.copy_from_query(
        "select id, v from ap_copy where id < 1000 order by id", output=out
    )
    assert res == "COPY 1000"
    lines = out.getvalue().decode().splitlines()
    assert lines[0] == "0\tv0" and lines[-1] == "999\tv999" and len(lines) == 1000
    out = io.BytesIO()
    res = await conn.copy_from_table("ap_copy", output=out, format="binary")
    assert res == "COPY 30000"
    assert out.getvalue().startswith(b"PGCOPY\n\xff\r\n\x00")


async def test_transactions(conn: asyncpg.Connection) -> None:
    await conn.execute("drop table if exists ap_tx; create table ap_tx (id int primary key)")
    async with conn.transaction():
        await conn.execute("insert into ap_tx values (1)")
        with pytest.raises(asyncpg.UniqueViolationError):
            async with conn.transaction():
                await conn.execute("insert into ap_tx values (2)")
                await conn.execute("insert into ap_tx values (1)")
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            await conn.execute("insert into ap_tx values (5)")
            raise RuntimeError("roll back")
    assert await conn.fetchval("select array_agg(id) from ap_tx") == [1]
    async with conn.transaction(isolation="serializable", readonly=True):
        assert await conn.fetchval("show transaction_isolation") == "serializable"


async def test_many_concurrent_sessions(gateway: RunningGateway, token: str) -> None:
    async def session(n: int) -> int:
        c = await _connect(gateway, token)
        try:
            total = 0
            for i in range(20):
                total += await c.fetchval("select $1::int * $2::int", n, i)
            return total
        finally:
            await c.close(timeout=10)

    results = await asyncio.wait_for(asyncio.gather(*(session(n) for n in range(30))), 90)
    assert results == [n * sum(range(20)) for n in range(30)]


async def test_streamed_cursor_200k_rows(conn: asyncpg.Connection) -> None:
    count = 0
    total = 0
    async with conn.transaction():
        async for rec in conn.cursor(
            "select g, repeat('x', 20) from generate_series(1, $1::int) g", 200_000, prefetch=5000
        ):
            count += 1
            total += rec[0]
    assert (count, total) == (200_000, 200_000 * 200_001 // 2)
    async with conn.transaction():
        cur = await conn.cursor("select g from generate_series(1, 100) g")
        assert [r[0] for r in await cur.fetch(3)] == [1, 2, 3]
        await cur.forward(50)
        assert await cur.fetchrow() == (54,)


async def test_executemany_and_errors(conn: asyncpg.Connection) -> None:
    await conn.execute("drop table if exists ap_many; create table ap_many (id int primary key)")
    await conn.executemany("insert into ap_many values ($1)", [(i,) for i in range(300)])
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.executemany("insert into ap_many values ($1)", [(1000,), (1,)])
    assert await conn.fetchval("select count(*) from ap_many") == 300
    with pytest.raises(asyncpg.PostgresSyntaxError):
        await conn.fetch("selec 1")
    assert await conn.fetchval("select 1") == 1
