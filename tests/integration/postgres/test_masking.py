"""Masking through the gateway: real clients, realistic fake personal data, bypass attempts.

For every attempt, nothing the client receives (rows, descriptions, notices, errors,
notifications, COPY data) and nothing in the audit trail contains a raw value of a masked
column, while an identity with clear access sees the very same values (so the checks can
fail).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from faker import Faker
from tests.conftest import free_port
from tests.integration.postgres.conftest import (
    RunningGateway,
    base_manifest,
    local_resource,
    start_gateway,
)

pytestmark = pytest.mark.pg

Conn = psycopg.Connection[tuple[Any, ...]]


def _luhn_card(rng: random.Random) -> str:
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        v = d * 2 if i % 2 == 0 else d
        total += v - 9 if v > 9 else v
    digits.append((10 - total % 10) % 10)
    s = "".join(map(str, digits))
    return f"{s[:4]} {s[4:8]} {s[8:12]} {s[12:]}"


def _people(n: int = 40) -> list[dict[str, Any]]:
    fake = Faker("en_US")
    Faker.seed(20240607)
    rng = random.Random(7)
    out = []
    for i in range(1, n + 1):
        ssn = (
            f"{rng.randrange(1, 666):03d}-{rng.randrange(1, 100):02d}-{rng.randrange(1, 10000):04d}"
        )
        email = f"{fake.user_name()}{i}@{fake.free_email_domain()}"
        phone = (
            f"+1 {rng.randrange(201, 990)}-{rng.randrange(200, 999)}-{rng.randrange(1000, 9999)}"
        )
        card = _luhn_card(rng)
        out.append(
            {
                "id": i,
                "name": fake.name(),
                "email": email,
                "phone": phone,
                "ssn": ssn,
                "card_number": card,
                "salary": rng.randrange(30_000, 200_000),
                "birth_date": fake.date_of_birth(minimum_age=18, maximum_age=90),
                "notes": f"Prefers mail to {email}; verified with SSN {ssn}",
            }
        )
    return out


PEOPLE = _people()
RAW = [p[k] for p in PEOPLE for k in ("email", "phone", "ssn", "card_number")]
# Pieces and disguises of raw values that bypass attempts produce.
RAW += [p["ssn"][3:] for p in PEOPLE] + [p["card_number"][-10:] for p in PEOPLE]
RAW += [p["ssn"].translate(str.maketrans("0123456789", "abcdefghij")) for p in PEOPLE]
RAW += [p["birth_date"].isoformat() for p in PEOPLE]


def _leaks(text: str) -> list[str]:
    return [v for v in RAW if v in text]


@pytest.fixture(scope="module")
def masked_gateway(
    tmp_path_factory: pytest.TempPathFactory, pg_server: tuple[str, int, str], it_database: str
) -> Iterator[RunningGateway]:
    host, port, user = pg_server
    with psycopg.connect(host=host, port=port, user=user, dbname=it_database, autocommit=True) as c:
        c.execute(
            """CREATE TABLE customers (id int PRIMARY KEY, name text, email text, phone text,
               ssn text, card_number text, salary numeric, birth_date date, notes text)"""
        )
        with c.cursor().copy(
            "COPY customers (id, name, email, phone, ssn, card_number, salary, birth_date, notes)"
            " FROM STDIN"
        ) as cp:
            for p in PEOPLE:
                cp.write_row(
                    [
                        p[k]
                        for k in (
                            "id",
                            "name",
                            "email",
                            "phone",
                            "ssn",
                            "card_number",
                            "salary",
                            "birth_date",
                            "notes",
                        )
                    ]
                )
        c.execute("CREATE TABLE orders (id serial PRIMARY KEY, customer_id int, total numeric)")
        c.execute("INSERT INTO orders (customer_id, total) SELECT id, id * 10 FROM customers")
        c.execute(
            "CREATE VIEW customer_contacts AS SELECT id, email, upper(ssn) AS ssn_up, ssn AS s "
            "FROM customers"
        )
        c.execute("CREATE TABLE dupes (id int, ssn text, note text NOT NULL)")
        c.execute("INSERT INTO dupes SELECT id, ssn, 'x' FROM customers WHERE id <= 2")
        c.execute("INSERT INTO dupes SELECT 3, ssn, 'x' FROM customers WHERE id = 1")
        c.execute("CREATE TABLE scratch (v text)")
        c.execute("ANALYZE customers")
    manifest = base_manifest(free_port(), [local_resource("itdb", it_database, host, port, user)])
    manifest["access"] = [
        {"name": "all", "resources": ["itdb"], "groups": ["analyst", "dpo", "strict"]}
    ]
    columns = [
        {"column": "public.customers.ssn", "strategy": "partial"},
        {"column": "public.customers.card_number", "strategy": "hash"},
        {"column": "public.customers.email", "strategy": "partial"},
        {"column": "public.customers.phone", "strategy": "redact"},
        {"column": "public.customers.salary", "strategy": "null"},
        {"column": "public.customers.birth_date", "strategy": "redact"},
        {"column": "*.dupes.ssn", "strategy": "redact"},
    ]
    manifest["masking"] = {
        "rules": [
            {
                "name": "pii",
                "resources": ["itdb"],
                "groups": ["analyst", "strict"],
                "clear_groups": ["dpo"],
                "columns": columns,
                "detect": ["email", "ssn", "card", "iban", "secrets"],
            },
            {"name": "pii-strict", "resources": ["itdb"], "groups": ["strict"], "mode": "strict"},
        ]
    }
    gw = start_gateway(tmp_path_factory.mktemp("masking"), manifest)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def analyst(masked_gateway: RunningGateway) -> str:
    return masked_gateway.token("ann", ("analyst",))


@pytest.fixture
def conn(masked_gateway: RunningGateway, analyst: str) -> Iterator[Conn]:
    with psycopg.connect(masked_gateway.dsn(analyst, user="ann"), autocommit=True) as c:
        yield c


class Received:
    """Everything a psycopg connection handed the application."""

    def __init__(self, conn: Conn) -> None:
        self.parts: list[str] = []
        conn.add_notice_handler(
            lambda d: self.parts.append(f"NOTICE {d.message_primary} {d.message_detail}")
        )
        conn.add_notify_handler(lambda n: self.parts.append(f"NOTIFY {n.channel} {n.payload}"))
        self.conn = conn

    def run(
        self, sql: str, *, binary: bool = False, prepare: bool | None = None
    ) -> list[tuple[Any, ...]]:
        cur = self.conn.cursor(binary=binary)
        try:
            cur.execute(sql, prepare=prepare)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            d = exc.diag
            self.parts.append(f"ERROR {exc} {d.message_detail} {d.context} {d.message_hint}")
            return []
        rows: list[tuple[Any, ...]] = []
        while True:
            if cur.description is not None:
                self.parts.append(repr([(c.name, c.type_code) for c in cur.description]))
                rows += cur.fetchall()
            if not cur.nextset():
                break
        self.parts.append(repr(rows))
        self.parts.append(repr(self.conn.info.parameter_status("application_name")))
        return rows

    def text(self) -> str:
        return "\n".join(self.parts)


BYPASSES = [
    "SELECT * FROM customers",
    "SELECT ssn AS x, email AS y, card_number AS z, phone AS w FROM customers",
    "SELECT c.* FROM customers c JOIN orders o ON o.customer_id = c.id",
    "SELECT * FROM orders o JOIN customers c ON o.customer_id = c.id",
    "SELECT ssn || '' , email || '', card_number || '' FROM customers",
    "SELECT upper(email), lower(ssn), replace(card_number, ' ', '') FROM customers",
    "SELECT row_to_json(c) FROM customers c",
    "SELECT to_jsonb(c.*)::text FROM customers c",
    "SELECT string_agg(ssn, ','), string_agg(email, ','), array_agg(phone) FROM customers",
    "SELECT substr(ssn, 1, 3), substr(ssn, 4), left(card_number, 9), right(card_number, 10) "
    "FROM customers",
    "SELECT (SELECT ssn FROM customers c2 WHERE c2.id = c.id) FROM customers c",
    "WITH x AS (SELECT ssn, email FROM customers) SELECT * FROM x",
    "WITH x AS (SELECT ssn || '' AS s FROM customers) SELECT s FROM x",
    "SELECT s FROM (SELECT ssn::text AS s, email::varchar AS e FROM customers) q",
    "SELECT ssn::varchar(20), card_number::bpchar, email::name FROM customers",
    "SELECT * FROM customer_contacts",
    "SELECT ssn FROM customers UNION ALL SELECT 'x'",
    "SELECT ARRAY(SELECT ssn FROM customers)::text",
    "SELECT * FROM unnest(ARRAY(SELECT email FROM customers)) u",
    "SELECT format('%s/%s', ssn, email), concat(phone, '') FROM customers",
    "SELECT notes FROM customers",
    "SELECT json_build_object('s', ssn, 'p', phone)::text FROM customers",
    "SELECT translate(ssn, '0123456789', 'abcdefghij') FROM customers",
    "SELECT CASE WHEN id > 0 THEN ssn END, coalesce(email, '') FROM customers",
    "SELECT * FROM customers WHERE id = 1 FOR UPDATE",
    "SELECT most_common_vals::text, histogram_bounds::text FROM pg_stats "
    "WHERE tablename = 'customers'",
    "SELECT salary, birth_date FROM customers",
    "SELECT salary::text, birth_date::text FROM customers",
    "SELECT ssn::int FROM customers",
    "SELECT ssn::date FROM customers",
    "SELECT pg_notify('masking_ch', ssn) FROM customers WHERE id = 1",
    "SELECT set_config('application_name', ssn, false) FROM customers WHERE id = 1",
]


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize("sql", BYPASSES)
def test_bypass_attempts_psycopg(conn: Conn, sql: str, binary: bool) -> None:
    got = Received(conn)
    got.run("LISTEN masking_ch")
    got.run(sql, binary=binary)
    got.run("SELECT 1")  # deliver pending notifications
    assert _leaks(got.text()) == [], got.text()


@pytest.mark.parametrize("sql", BYPASSES[:16])
def test_bypass_attempts_prepared(conn: Conn, sql: str) -> None:
    got = Received(conn)
    for binary in (False, True):
        for _ in range(2):
            got.run(sql, binary=binary, prepare=True)
    assert _leaks(got.text()) == [], got.text()


def test_masked_values_keep_their_shape(conn: Conn) -> None:
    row = conn.execute(
        "SELECT ssn, email, card_number, phone, salary, birth_date, name "
        "FROM customers WHERE id = 1"
    ).fetchone()
    assert row is not None
    p = PEOPLE[0]
    assert row[0] == "***-**-" + p["ssn"][-4:]
    assert row[1] == "****@" + p["email"].split("@")[1]
    assert str(row[2]).startswith("h:") and row[2] != p["card_number"]
    assert row[3] == "****"
    assert row[4] is None
    assert row[5] == "****"  # a date column masked as text: the type became text
    assert row[6] == p["name"]  # not masked
    # Hashing is deterministic: GROUP BY and joins on masked output still line up.
    again = conn.execute("SELECT card_number FROM customers WHERE id = 1").fetchone()
    assert again == (row[2],)
    notes = conn.execute("SELECT notes FROM customers WHERE id = 1").fetchone()
    assert notes == ("Prefers mail to <email>; verified with SSN <ssn>",)


def test_clear_group_sees_values(masked_gateway: RunningGateway) -> None:
    token = masked_gateway.token("dora", ("dpo",))
    with psycopg.connect(masked_gateway.dsn(token, user="dora")) as c:
        rows = c.execute("SELECT ssn, email FROM customers ORDER BY id").fetchall()
        assert rows[0] == (PEOPLE[0]["ssn"], PEOPLE[0]["email"])
        assert c.execute("SELECT upper(email) FROM customers WHERE id = 1").fetchone() == (
            PEOPLE[0]["email"].upper(),
        )


def test_temp_table_and_views_made_by_the_client(conn: Conn) -> None:
    got = Received(conn)
    got.run("CREATE TEMP TABLE t1 AS SELECT * FROM customers")
    got.run("SELECT * FROM t1")
    got.run("SELECT ssn || '' FROM t1")
    got.run("SELECT * INTO TEMP t2 FROM customers")
    got.run("SELECT ssn, email FROM t2")
    got.run("CREATE TEMP TABLE t3 AS SELECT upper(ssn) AS u FROM customers")
    got.run("SELECT u FROM t3")
    got.run("CREATE TEMP VIEW v1 AS SELECT lower(email) AS e, ssn AS s FROM customers")
    got.run("SELECT * FROM v1")
    got.run(
        "CREATE FUNCTION pg_temp.leak() RETURNS text "
        "AS 'SELECT ssn FROM customers LIMIT 1' LANGUAGE sql"
    )
    got.run("SELECT pg_temp.leak()")
    assert _leaks(got.text()) == [], got.text()
    assert "***-**-" in got.text()


def test_writes_of_masked_data_are_refused(conn: Conn) -> None:
    got = Received(conn)
    got.run("INSERT INTO scratch SELECT ssn FROM customers")
    got.run("CREATE TABLE scratch2 AS SELECT email FROM customers")
    got.run("UPDATE customers SET name = ssn WHERE id = 1")
    assert got.text().count("would copy masked data") == 3, got.text()
    assert conn.execute("SELECT count(*) FROM scratch").fetchone() == (0,)


def test_cursors_returning_copy_and_errors(conn: Conn) -> None:
    got = Received(conn)
    with conn.transaction():
        got.run("DECLARE c1 CURSOR FOR SELECT ssn, upper(email) FROM customers")
        got.run("FETCH 5 FROM c1")
        got.run("FETCH ALL FROM c1")
    got.run("UPDATE customers SET name = name WHERE id = 1 RETURNING ssn, email, ssn || '!'")
    got.run("CREATE UNIQUE INDEX ON dupes (ssn)")
    got.run("UPDATE dupes SET note = NULL WHERE id = 1")
    got.run(
        "DO $$ DECLARE v text; BEGIN SELECT ssn INTO v FROM customers LIMIT 1; "
        "RAISE NOTICE 'value %', v; END $$"
    )
    cur = conn.cursor()
    for stmt in (
        "COPY customers TO STDOUT",
        "COPY customers TO STDOUT WITH (FORMAT csv, HEADER)",
        "COPY customers (ssn, notes) TO STDOUT WITH (FORMAT csv, DELIMITER ';')",
        "COPY (SELECT upper(ssn), email FROM customers) TO STDOUT",
        "COPY customers TO STDOUT WITH (FORMAT binary)",
    ):
        with cur.copy(stmt) as cp:
            got.parts += [bytes(b).decode("utf-8", "replace") for b in cp]
    assert _leaks(got.text()) == [], got.text()
    assert "***-**-" in got.text()


def test_strict_mode_refuses_derived_outputs(masked_gateway: RunningGateway) -> None:
    token = masked_gateway.token("sam", ("strict",))
    with psycopg.connect(masked_gateway.dsn(token, user="sam"), autocommit=True) as c:
        assert c.execute("SELECT ssn FROM customers WHERE id = 1").fetchone() == (
            "***-**-" + PEOPLE[0]["ssn"][-4:],
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="masked column"):
            c.execute("SELECT upper(email) FROM customers")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="masked column"):
            c.execute("SELECT row_to_json(c) FROM customers c")
        assert c.execute("SELECT count(*) FROM customers").fetchone() == (len(PEOPLE),)
        # Extended protocol: refused at Execute, recorded the same way.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="masked column"):
            c.execute("SELECT lower(ssn) AS strict_probe FROM customers", prepare=True)
    # Masking refusals are in the audit store like guardrail refusals: deny, rule, reason.
    for words in (["upper", "email"], ["row_to_json"], ["strict_probe"]):
        found = _audit_search(masked_gateway, *words, "--decision", "deny")
        assert found["rule"] == "pii-strict" and found["subject"] == "sam", found
        assert "computed from a masked column" in found["reason"], found
        assert found["error_message"] and "masked column" in found["error_message"], found
    # A write of masked data into a table is refused and recorded under the column's rule.
    token = masked_gateway.token("wes", ("analyst",))
    with psycopg.connect(masked_gateway.dsn(token, user="wes"), autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="would copy masked"):
            c.execute("INSERT INTO scratch SELECT email FROM customers WHERE id > 1")
    found = _audit_search(masked_gateway, "scratch", "email", "--decision", "deny")
    assert found["rule"] == "pii" and found["subject"] == "wes", found
    assert "would copy masked data" in found["reason"], found


def _audit_search(gw: RunningGateway, *args: str) -> dict[str, Any]:
    """The newest audit record matching `audit search ARGS` (ingested asynchronously)."""
    rows: list[dict[str, Any]] = []
    for _ in range(100):
        rows = json.loads(gw.cli("audit", "search", *args, "--json").stdout)
        if rows and rows[0].get("finished_at") is not None:
            return rows[0]
        time.sleep(0.2)
    raise AssertionError(f"no finished audit record for {args}: {rows!r}")


def _ssl() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_asyncpg_binary(masked_gateway: RunningGateway, analyst: str) -> None:
    async def go() -> str:
        c = await asyncpg.connect(
            host="127.0.0.1",
            port=masked_gateway.port,
            user="ann",
            database="itdb",
            password=analyst,
            ssl=_ssl(),
            timeout=20,
        )
        parts: list[str] = []
        try:
            for sql in BYPASSES[:27]:
                try:
                    parts.append(repr(await c.fetch(sql)))
                except asyncpg.PostgresError as exc:
                    parts.append(f"{exc} {exc.as_dict()}")
            stmt = await c.prepare(
                "SELECT ssn, email, salary, birth_date FROM customers WHERE id = $1"
            )
            for i in (1, 2, 3):
                parts.append(repr(await stmt.fetch(i)))
            row = await c.fetchrow("SELECT ssn, birth_date, salary FROM customers WHERE id = 1")
            assert row is not None
            assert row["ssn"] == "***-**-" + PEOPLE[0]["ssn"][-4:]
            assert row["birth_date"] == "****" and row["salary"] is None
            async with c.transaction():
                cur = await c.cursor("SELECT * FROM customers")
                parts.append(repr(await cur.fetch(10)))
        finally:
            await c.close()
        return "\n".join(parts)

    text = asyncio.run(go())
    assert _leaks(text) == [], text


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_psql(masked_gateway: RunningGateway, analyst: str, tmp_path: Path) -> None:
    env = {**os.environ, "PGPASSWORD": analyst, "PGSSLMODE": "require"}
    dsn = f"host=127.0.0.1 port={masked_gateway.port} dbname=itdb user=ann"
    out_file = tmp_path / "out.csv"
    script = (
        "SELECT * FROM customers;\n"
        "SELECT upper(ssn), row_to_json(c) FROM customers c;\n"
        f"\\copy customers TO '{out_file}' CSV\n"
        "\\x\nSELECT * FROM customer_contacts LIMIT 3;\n"
    )
    r = subprocess.run(
        ["psql", dsn, "-X"],
        input=script,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    text = r.stdout + r.stderr + out_file.read_text()
    assert "***-**-" in text, text
    assert _leaks(text) == [], text


def test_audit_store_holds_no_raw_values(masked_gateway: RunningGateway, conn: Conn) -> None:
    got = Received(conn)
    got.run("SELECT ssn::int FROM customers")
    got.run("SELECT * FROM customers")
    # The ingester copies journals into the store; `audit sessions` catches up on leftovers.
    masked_gateway.cli("audit", "sessions", "--json")
    state = masked_gateway.dir / "state"
    blobs = []
    for f in state.rglob("*"):
        if f.is_file():
            blobs.append(f.read_bytes().decode("utf-8", "replace"))
    blobs.append(masked_gateway.log())
    assert _leaks("\n".join(blobs)) == []
    shown = masked_gateway.cli("audit", "search", "customers", "--json").stdout
    assert "masked:" in shown


def test_classify_suggests_rules(masked_gateway: RunningGateway) -> None:
    out = masked_gateway.cli("classify", "itdb").stdout
    for column in ("ssn", "email", "card_number", "phone"):
        assert f"public.customers.{column}," in out, out
    assert "public.customers.name," not in out
    assert "masking:" in out and "rules:" in out
    # Suggestions, not data: no sampled value is printed.
    assert _leaks(out) == []


def test_masked_cells_are_counted_per_statement_and_rule(
    masked_gateway: RunningGateway, conn: Conn
) -> None:
    got = Received(conn)
    got.run("SELECT ssn AS count_probe, email FROM customers ORDER BY id LIMIT 3")
    got.run("SELECT id AS unmasked_probe FROM customers ORDER BY id LIMIT 3")
    found = _audit_search(masked_gateway, "count_probe", "--decision", "masked")
    per_rule = found["masked_by_rule"]
    assert found["masked_cells"] == sum(per_rule.values()) == 6, found
    assert set(per_rule) == {"pii"}, found
    plain = _audit_search(masked_gateway, "unmasked_probe")
    assert plain["masked_cells"] is None, plain
    none = json.loads(
        masked_gateway.cli(
            "audit", "search", "unmasked_probe", "--decision", "masked", "--json"
        ).stdout
    )
    assert none == []
    # The counts are part of the chained outcome: the trail still verifies.
    assert "verif" in masked_gateway.cli("audit", "verify").stdout.lower()
