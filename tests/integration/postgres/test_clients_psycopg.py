"""psycopg 3 through the gateway: every protocol feature a Python application leans on."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.types.json import Jsonb
from tests.integration.postgres.conftest import RunningGateway

pytestmark = pytest.mark.pg


@pytest.fixture
def conn(gateway: RunningGateway, token: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(gateway.dsn(token)) as c:
        yield c


Conn = psycopg.Connection[tuple[object, ...]]


def test_parameters_and_server_side_prepare(conn: Conn) -> None:
    cur = conn.cursor()
    for i in range(8):
        cur.execute("select %s::int * 2, %s::text || '!'", (i, f"v{i}"), prepare=True)
        assert cur.fetchone() == (i * 2, f"v{i}!")
    assert cur.execute("select %s::text is null", (None,)).fetchone() == (True,)
    prepared = conn.execute(
        "select count(*) from pg_prepared_statements where statement like 'select $1::int * 2%%'"
    ).fetchone()
    assert prepared == (1,)


_BINARY_VALUES: list[tuple[str, object]] = [
    ("int8", 2**62 + 7),
    ("int4", -123456),
    ("numeric", decimal.Decimal("12345678901234567890.123456789")),
    ("timestamptz", dt.datetime(2024, 2, 29, 12, 34, 56, 789000, tzinfo=dt.UTC)),
    ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678")),
    ("bytea", bytes(range(256)) * 4),
    ("int4[]", [1, 2, None, 4]),
    ("text[]", ["a", "b,c", 'd"e', None]),
    ("float8", 3.25),
    ("bool", True),
]


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_types_round_trip(conn: Conn, binary: bool) -> None:
    cur = conn.cursor(binary=binary)
    for typ, value in _BINARY_VALUES:
        got = cur.execute(sql.SQL("select %s::{}").format(sql.SQL(typ)), (value,)).fetchone()
        assert got is not None
        if isinstance(value, dt.datetime):
            assert got[0] == value
        else:
            assert got[0] == value, typ
    got = cur.execute("select %s::jsonb", (Jsonb({"k": [1, "two", None]}),)).fetchone()
    assert got == ({"k": [1, "two", None]},)
    got = cur.execute("select '{\"a\": 1}'::jsonb, generate_series(1, 3)").fetchall()
    assert got == [({"a": 1}, 1), ({"a": 1}, 2), ({"a": 1}, 3)]


def test_transactions_commit_rollback_savepoints(conn: Conn) -> None:
    conn.execute("drop table if exists ps_tx")
    conn.execute("create table ps_tx (id int primary key)")
    conn.commit()
    with conn.transaction():
        conn.execute("insert into ps_tx values (1)")
        with pytest.raises(errors.UniqueViolation):
            with conn.transaction():  # a savepoint
                conn.execute("insert into ps_tx values (2)")
                conn.execute("insert into ps_tx values (1)")
        conn.execute("insert into ps_tx values (3)")
    conn.execute("insert into ps_tx values (4)")
    conn.rollback()
    assert conn.execute("select array_agg(id order by id) from ps_tx").fetchone() == ([1, 3],)
    conn.rollback()


def test_errors_then_the_connection_goes_on(conn: Conn) -> None:
    conn.autocommit = True
    with pytest.raises(errors.DivisionByZero):
        conn.execute("select 1/0")
    with pytest.raises(errors.UndefinedTable):
        conn.execute("select * from missing_table where id = %s", (1,))
    with pytest.raises(errors.SyntaxError):
        conn.execute("selec 1", prepare=True)
    assert conn.execute("select %s::int", (7,)).fetchone() == (7,)
    conn.autocommit = False
    with pytest.raises(errors.DivisionByZero):
        conn.execute("select 1/0")
    with pytest.raises(errors.InFailedSqlTransaction):
        conn.execute("select 1")
    conn.rollback()
    assert conn.execute("select 'ok'").fetchone() == ("ok",)


def test_copy_from_stdin_and_to_stdout_text_and_binary(conn: Conn) -> None:
    conn.autocommit = True
    conn.execute("drop table if exists ps_copy")
    conn.execute("create table ps_copy (id int, name text, data bytea, at timestamptz)")
    at = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    rows = [
        (i, f"n\t{i}\\", bytes([i % 256]) * 3, at + dt.timedelta(seconds=i)) for i in range(20000)
    ]
    cur = conn.cursor()
    with cur.copy("copy ps_copy from stdin") as cp:
        for r in rows[:10000]:
            cp.write_row(r)
    with cur.copy("copy ps_copy from stdin (format binary)") as cp:
        cp.set_types(["int4", "text", "bytea", "timestamptz"])
        for r in rows[10000:]:
            cp.write_row(r)
    assert conn.execute("select count(*), sum(id) from ps_copy").fetchone() == (
        20000,
        sum(range(20000)),
    )

    for fmt in ("text", "binary"):
        got = []
        with cur.copy(f"copy (select * from ps_copy order by id) to stdout (format {fmt})") as cp:
            cp.set_types(["int4", "text", "bytea", "timestamptz"])
            got.extend(cp.rows())
        assert got == rows, fmt
    # Raw blocks, as a dump tool would read them.
    with cur.copy("copy (select id from ps_copy where id < 5 order by id) to stdout") as cp:
        raw = b"".join(bytes(b) for b in cp)
    assert raw == b"0\n1\n2\n3\n4\n"


def test_copy_failure_from_client_keeps_the_connection(conn: Conn) -> None:
    conn.autocommit = True
    conn.execute("drop table if exists ps_copyfail")
    conn.execute("create table ps_copyfail (id int)")
    with pytest.raises(errors.QueryCanceled):
        with conn.cursor().copy("copy ps_copyfail from stdin") as cp:
            cp.write_row((1,))
            raise errors.QueryCanceled("client gave up")  # psycopg sends CopyFail
    with pytest.raises(errors.InvalidTextRepresentation):
        with conn.cursor().copy("copy ps_copyfail from stdin") as cp:
            cp.write(b"not a number\n")
    assert conn.execute("select count(*) from ps_copyfail").fetchone() == (0,)


def test_server_side_cursor(conn: Conn) -> None:
    with conn.cursor(name="ps_named", binary=True) as cur:
        cur.itersize = 1000
        cur.execute("select g, md5(g::text) from generate_series(1, 25000) g")
        total = 0
        count = 0
        for g, h in cur:
            total += g  # type: ignore[operator]
            count += 1
            assert isinstance(h, str)
        assert (count, total) == (25000, 25000 * 25001 // 2)
    with conn.cursor(name="ps_scroll", scrollable=True) as cur:
        cur.execute("select g from generate_series(1, 100) g")
        assert cur.fetchmany(3) == [(1,), (2,), (3,)]
        cur.scroll(50, mode="absolute")
        assert cur.fetchone() == (51,)
    conn.commit()


def test_pipeline_mode(conn: Conn) -> None:
    conn.autocommit = True
    conn.execute("drop table if exists ps_pipe")
    conn.execute("create table ps_pipe (id int primary key, v text)")
    with conn.pipeline() as p:
        curs = [
            conn.execute("insert into ps_pipe values (%s, %s) returning id", (i, str(i)))
            for i in range(200)
        ]
        p.sync()
        counted = conn.execute("select count(*) from ps_pipe")
        ids = [c.fetchone() for c in curs]
    assert ids == [(i,) for i in range(200)]
    assert counted.fetchone() == (200,)
    # An error in a pipeline aborts the rest of its batch; the connection survives.
    with pytest.raises(errors.UniqueViolation):
        with conn.pipeline():
            conn.execute("insert into ps_pipe values (%s, 'dup')", (1,))
            conn.execute("insert into ps_pipe values (%s, 'never')", (1000,))
    assert conn.execute("select count(*) from ps_pipe").fetchone() == (200,)


def test_executemany(conn: Conn) -> None:
    conn.autocommit = True
    conn.execute("drop table if exists ps_many")
    conn.execute("create table ps_many (id int, v text)")
    cur = conn.cursor()
    cur.executemany("insert into ps_many values (%s, %s)", [(i, f"x{i}") for i in range(500)])
    cur.executemany(
        "insert into ps_many values (%s, %s) returning id",
        [(1000 + i, "r") for i in range(5)],
        returning=True,
    )
    returned = []
    while True:
        returned.append(cur.fetchone())
        if not cur.nextset():
            break
    assert returned == [(1000 + i,) for i in range(5)]
    assert conn.execute("select count(*) from ps_many").fetchone() == (505,)


def test_notice_reaches_the_handler(conn: Conn) -> None:
    got: list[str] = []
    conn.add_notice_handler(lambda diag: got.append(f"{diag.severity}:{diag.message_primary}"))
    conn.execute("do $$ begin raise notice 'hello %', 42; raise warning 'careful'; end $$")
    assert got == ["NOTICE:hello 42", "WARNING:careful"]


def test_listen_notify_between_two_gateway_sessions(gateway: RunningGateway, token: str) -> None:
    with (
        psycopg.connect(gateway.dsn(token), autocommit=True) as listener,
        psycopg.connect(gateway.dsn(token), autocommit=True) as sender,
    ):
        listener.execute("listen lockgate_it")
        sender.execute("select pg_notify('lockgate_it', %s)", (json.dumps({"n": 1}),))
        sender.execute("notify lockgate_it, 'second'")
        got = [n.payload for n in listener.notifies(timeout=10, stop_after=2)]
        assert got == ['{"n": 1}', "second"]


def test_cancel_from_another_thread(conn: Conn) -> None:
    timer = threading.Timer(0.5, conn.cancel_safe)
    timer.start()
    try:
        with pytest.raises(errors.QueryCanceled):
            conn.execute("select pg_sleep(30)")
    finally:
        timer.cancel()
    conn.rollback()
    assert conn.execute("select 1").fetchone() == (1,)
