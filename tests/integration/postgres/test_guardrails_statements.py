"""Guardrails through the real gateway: real clients, the real server, refusals on the wire.

One gateway for the module: resource `itdb` under the shipped `protect-production` set
(group `dba` may run DDL), a monitored rule on `pg_sleep`, and two identities: `it` (read
and write) and `analyst` (read-only access). The server's state is checked on 5432
directly: a refused statement leaves no trace there, not even in the probe table that
every "must not run" statement would write to if it ran.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors
from tests.conftest import free_port
from tests.integration.postgres.conftest import (
    LOCKGATE,
    RunningGateway,
    base_manifest,
    local_resource,
    start_gateway,
)

pytestmark = pytest.mark.pg

SETUP = """
CREATE TABLE customers (id int PRIMARY KEY, email text);
INSERT INTO customers SELECT g, 'c' || g || '@example.com' FROM generate_series(1, 10) g;
CREATE TABLE probe (what text);
-- Writes a row when evaluated: a refused statement that reached the server would leave one.
CREATE FUNCTION probe(w text) RETURNS boolean LANGUAGE sql AS
  $$ INSERT INTO probe VALUES (w) RETURNING true $$;
-- A function that writes, called from a SELECT: only the read-only session stops it.
CREATE FUNCTION sneaky_write() RETURNS int LANGUAGE sql AS
  $$ INSERT INTO probe VALUES ('sneaky') RETURNING 1 $$;
GRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC;
"""


@pytest.fixture(scope="module")
def guarded(
    tmp_path_factory: pytest.TempPathFactory, pg_server: tuple[str, int, str], it_database: str
) -> Iterator[RunningGateway]:
    host, port, user = pg_server
    with psycopg.connect(host=host, port=port, user=user, dbname=it_database, autocommit=True) as c:
        c.execute(SETUP)
    manifest = base_manifest(
        free_port(),
        [local_resource("itdb", it_database, host, port, user)],
        [
            {"name": "analysts", "resources": ["itdb"], "groups": ["analyst"], "read_only": True},
            {"name": "it-group", "resources": ["itdb"], "groups": ["it", "dba"]},
        ],
    )
    manifest["guardrails"] = {
        "rules": [
            {
                "name": "dba-may-change-schema",
                "groups": ["dba"],
                "match": {"kinds": ["ddl"]},
                "action": "allow",
            },
            {
                "name": "watch-sleep",
                "match": {"functions": ["pg_sleep"]},
                "action": "deny",
                "mode": "monitor",
                "message": "sleeping is frowned upon",
            },
            {
                "name": "no-secret-writes",
                "match": {"writes": ["public.secrets"]},
                "message": "the secrets table is written by the vault job only",
            },
            {"use": "protect-production", "resources": ["itdb"]},
        ]
    }
    gw = start_gateway(tmp_path_factory.mktemp("guarded"), manifest)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def direct(pg_server: tuple[str, int, str], it_database: str) -> Iterator[psycopg.Connection[Any]]:
    host, port, user = pg_server
    with psycopg.connect(host=host, port=port, user=user, dbname=it_database, autocommit=True) as c:
        yield c


@pytest.fixture
def clean(direct: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    direct.execute("DELETE FROM probe")
    return direct


def _probes(direct: psycopg.Connection[Any]) -> list[str]:
    return [r[0] for r in direct.execute("SELECT what FROM probe ORDER BY what").fetchall()]


def _customers(direct: psycopg.Connection[Any]) -> int:
    row = direct.execute("SELECT count(*) FROM customers").fetchone()
    assert row is not None
    return int(row[0])


def _connect(gw: RunningGateway, group: str = "it", **kw: Any) -> psycopg.Connection[Any]:
    subject = f"{group}-{secrets.token_hex(3)}"
    return psycopg.connect(gw.dsn(gw.token(subject, (group,)), user=subject), **kw)


# Statements protect-production refuses, each with a probe that would fire if it ran.
REFUSED = [
    ("DROP TABLE customers", "protect-production/no-ddl"),
    ("drop/* comment */table public.customers", "protect-production/no-ddl"),
    ('DrOp TaBlE "customers"', "protect-production/no-ddl"),
    ('DROP TABLE U&"\\0063ustomers"', "protect-production/no-ddl"),
    ("TRUNCATE customers", "protect-production/no-truncate"),
    (
        "DELETE FROM customers WHERE probe('delete-1=1') OR 1=1",
        "protect-production/no-unbounded-write",
    ),
    ("DELETE FROM customers", "protect-production/no-unbounded-write"),
    ("UPDATE customers SET email = 'x' WHERE 'a' = 'a'", "protect-production/no-unbounded-write"),
    ("UPDATE customers SET email = 'x' WHERE NOT false", "protect-production/no-unbounded-write"),
    (
        "WITH d AS (DELETE FROM customers RETURNING id) SELECT probe('cte'), count(*) FROM d",
        "protect-production/no-unbounded-write",
    ),
    ("EXPLAIN ANALYZE DELETE FROM customers", "protect-production/no-unbounded-write"),
    (
        "COPY (DELETE FROM customers RETURNING id) TO STDOUT",
        "protect-production/no-unbounded-write",
    ),
    ("SELECT probe('file'), pg_read_file('/etc/hostname')", "protect-production/no-server-files"),
    (
        "SELECT probe('file2'), \"pg_read_file\"('/etc/hostname')",
        "protect-production/no-server-files",
    ),
    ("SELECT probe('ls'), PG_CATALOG.PG_LS_DIR('.')", "protect-production/no-server-files"),
    ("SELECT probe('lo'), lo_export(1, '/tmp/x')", "protect-production/no-server-files"),
    ("COPY customers TO '/tmp/lockgate-customers'", "protect-production/no-server-files"),
    ("COPY customers TO PROGRAM 'cat > /dev/null'", "protect-production/no-server-files"),
    ("SELECT probe('dblink'), dblink_connect('x')", "protect-production/no-remote-access"),
    ("SET ROLE postgres", "protect-production/no-role-switch"),
    ("SET SESSION AUTHORIZATION postgres", "protect-production/no-role-switch"),
    (
        "SELECT probe('role'), set_config('role', 'postgres', false)",
        "protect-production/no-role-switch",
    ),
    ("ALTER SYSTEM SET work_mem = '1MB'", "protect-production/no-alter-system"),
    ("PREPARE p_del AS DELETE FROM customers", "protect-production/no-unbounded-write"),
    ("CREATE TABLE t_new AS SELECT probe('ctas')", "protect-production/no-ddl"),
    ("GRANT SELECT ON customers TO PUBLIC", "protect-production/no-grants"),
    ("INSERT INTO secrets VALUES (1)", "no-secret-writes"),
]

# Near-misses: similar statements that must run.
ALLOWED = [
    "DELETE FROM customers WHERE id = 1000",
    "DELETE FROM customers WHERE 1 = 2",
    "UPDATE customers SET email = email WHERE id = 1",
    "EXPLAIN DELETE FROM customers",
    "COPY (SELECT id FROM customers) TO STDOUT",
    "SELECT 'DROP TABLE customers', 'pg_read_file' AS pg_read_file",
    "SELECT id FROM customers WHERE email = 'delete from customers'",
    "WITH d AS (SELECT id FROM customers) SELECT count(*) FROM d",
    "SET work_mem = '8MB'",
    "SELECT current_setting('work_mem')",
    "PREPARE p_sel AS SELECT id FROM customers WHERE id = $1",
    "SELECT * FROM secrets",
]


@pytest.fixture(scope="module", autouse=True)
def _secrets_table(direct: psycopg.Connection[Any]) -> None:
    direct.execute("CREATE TABLE IF NOT EXISTS secrets (id int); GRANT ALL ON secrets TO PUBLIC")


@pytest.mark.parametrize(("sql", "rule"), REFUSED)
def test_refused_simple_protocol(
    guarded: RunningGateway, clean: psycopg.Connection[Any], sql: str, rule: str
) -> None:
    before = _customers(clean)
    with _connect(guarded, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as err:
            conn.execute(sql)
        assert f"(rule: {rule})" in str(err.value)
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on
    assert _probes(clean) == []
    assert _customers(clean) == before
    assert clean.execute("SELECT to_regclass('t_new')").fetchone() == (None,)


@pytest.mark.parametrize(("sql", "rule"), REFUSED)
def test_refused_extended_protocol(
    guarded: RunningGateway, clean: psycopg.Connection[Any], sql: str, rule: str
) -> None:
    if sql.startswith("COPY"):
        pytest.skip("psycopg sends COPY through its copy() API")
    before = _customers(clean)
    with _connect(guarded, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as err:
            conn.execute(sql, prepare=True)
        assert f"(rule: {rule})" in str(err.value)
        assert conn.execute("SELECT %s::int", (7,)).fetchone() == (7,)
    assert _probes(clean) == []
    assert _customers(clean) == before


@pytest.mark.parametrize("sql", ALLOWED)
def test_near_misses_run(guarded: RunningGateway, sql: str) -> None:
    with _connect(guarded, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        if sql.startswith("COPY"):
            with conn.cursor().copy(sql) as cp:
                assert b"".join(bytes(b) for b in cp)
        else:
            conn.execute(sql)


def test_multi_statement_string_refused_whole(
    guarded: RunningGateway, clean: psycopg.Connection[Any]
) -> None:
    with _connect(guarded, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="no-ddl"):
            conn.execute("SELECT probe('first'); DROP TABLE customers; SELECT probe('last')")
    assert _probes(clean) == []


def test_refusal_fails_the_transaction(
    guarded: RunningGateway, clean: psycopg.Connection[Any]
) -> None:
    with _connect(guarded, cursor_factory=psycopg.ClientCursor) as conn:
        conn.execute("SELECT probe('in-tx')")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("DELETE FROM customers")
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 2").fetchone() == (2,)
        conn.commit()
    assert _probes(clean) == []  # rolled back with the failed transaction


def test_refusal_fails_the_transaction_extended(
    guarded: RunningGateway, clean: psycopg.Connection[Any]
) -> None:
    with _connect(guarded) as conn:
        conn.execute("SELECT probe(%s)", ("in-tx-ext",))
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("TRUNCATE customers")
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT %s::int", (1,))
        conn.rollback()
    assert _probes(clean) == []


def test_prepare_execute_judges_the_prepared_text(
    guarded: RunningGateway, clean: psycopg.Connection[Any]
) -> None:
    with _connect(guarded, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        conn.execute("PREPARE ok_sel AS SELECT count(*) FROM customers")
        assert conn.execute("EXECUTE ok_sel").fetchone() == (10,)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("PREPARE bad AS DELETE FROM customers WHERE true")
        with pytest.raises(errors.InvalidSqlStatementName):
            conn.execute("EXECUTE bad")  # never prepared on the server
    assert _customers(clean) == 10


def test_dynamic_sql_is_held_for_review(
    guarded: RunningGateway, clean: psycopg.Connection[Any]
) -> None:
    with _connect(guarded, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as err:
            conn.execute("DO $$BEGIN EXECUTE 'DEL' || 'ETE FROM customers'; END$$")
        assert "review-dynamic-sql" in str(err.value)
        assert "approval" in str(err.value)
        # Static SQL inside DO is seen as well: a DDL in a DO block is a DDL.
        with pytest.raises(errors.InsufficientPrivilege, match="no-ddl"):
            conn.execute("DO $$BEGIN DROP TABLE customers; END$$")
        with pytest.raises(errors.InsufficientPrivilege, match="review-dynamic-sql"):
            conn.execute("SELECT query_to_xml('DELETE FROM customers RETURNING 1', true, true, '')")
    assert _customers(clean) == 10


def test_functions_wrapping_denied_actions(guarded: RunningGateway) -> None:
    with _connect(guarded, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="no-ddl"):
            conn.execute(
                "CREATE FUNCTION wipe() RETURNS void LANGUAGE sql AS 'DELETE FROM customers'"
            )
        with pytest.raises(errors.InsufficientPrivilege, match="no-server-files"):
            conn.execute("SELECT probe('wrapped'), length(pg_read_file('/etc/hostname'))::text")


def test_unparsable_text_is_refused(guarded: RunningGateway) -> None:
    with _connect(guarded, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="unparsed-sql"):
            conn.execute("DR/**/OP TABLE customers")
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_allow_rule_carves_an_exception(
    guarded: RunningGateway, direct: psycopg.Connection[Any]
) -> None:
    name = f"dba_t_{secrets.token_hex(3)}"
    with _connect(guarded, "dba", autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int)")
        conn.execute(f"DROP TABLE {name}")
        with pytest.raises(errors.InsufficientPrivilege, match="no-truncate"):
            conn.execute("TRUNCATE customers")


def _session_commands(gw: RunningGateway, subject: str, n: int) -> list[dict[str, Any]]:
    for _ in range(100):
        out = gw.cli("audit", "sessions", "--subject", subject, "--json").stdout
        found: list[dict[str, Any]] = json.loads(out)
        if found:
            shown = json.loads(gw.cli("audit", "show", found[0]["id"], "--json").stdout)
            cmds: list[dict[str, Any]] = shown["commands"]
            if len(cmds) >= n and all(c.get("finished_at") for c in cmds):
                return cmds
        time.sleep(0.1)
    raise AssertionError(f"no {n} finished commands of {subject} in the audit")


def test_refusals_are_recorded_with_decision_rule_and_facts(guarded: RunningGateway) -> None:
    subject = f"rec-{secrets.token_hex(3)}"
    dsn = guarded.dsn(guarded.token(subject, ("it",)), user=subject)
    with psycopg.connect(dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("DELETE FROM customers")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("DO $$BEGIN PERFORM 1; END$$")
        conn.execute("SELECT pg_sleep(0)")
    cmds = _session_commands(guarded, subject, 3)
    by_text = {c["text"]: c for c in cmds}
    deny = by_text["DELETE FROM customers"]
    assert deny["decision"] == "deny"
    assert deny["rule"] == "protect-production/no-unbounded-write"
    assert "flags=unbounded_write" in deny["reason"]
    assert deny["status"] == "refused"
    review = by_text["DO $$BEGIN PERFORM 1; END$$"]
    assert review["decision"] == "review"
    assert review["rule"] == "protect-production/review-dynamic-sql"
    monitored = by_text["SELECT pg_sleep(0)"]
    assert monitored["decision"] == "allow"
    assert monitored["rule"] == "watch-sleep"
    assert monitored["reason"].startswith("monitor: watch-sleep: would deny")
    assert monitored["error_code"] is None


def test_psql_multi_statement_and_session_continues(
    guarded: RunningGateway, clean: psycopg.Connection[Any]
) -> None:
    subject = f"psql-{secrets.token_hex(3)}"
    tok = guarded.token(subject, ("it",))
    out = subprocess.run(
        [
            "psql",
            guarded.dsn(tok, user=subject),
            "-X",
            "-At",
            "-c",
            "SELECT probe('a'); DELETE FROM customers",  # one Query message
            "-c",
            "SELECT 'still here'",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "42501" in out.stderr or "no-unbounded-write" in out.stderr, out.stderr
    assert "still here" in out.stdout
    assert _probes(clean) == []


def test_probe_fires_when_a_statement_runs(
    guarded: RunningGateway, clean: psycopg.Connection[Any]
) -> None:
    """Control for the tests above: an admitted statement with a probe does leave a row."""
    with _connect(guarded, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        conn.execute("SELECT probe('ran'); DELETE FROM customers WHERE id = 1000")
    assert _probes(clean) == ["ran"]


def test_policy_test_replays_the_audit_store(guarded: RunningGateway, tmp_path: Any) -> None:
    import yaml

    subject = f"pt-{secrets.token_hex(3)}"
    dsn = guarded.dsn(guarded.token(subject, ("it",)), user=subject)
    with psycopg.connect(dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"TRUNCATE customers /* {subject} */")
        conn.execute(f"SELECT count(*) FROM customers /* {subject} */")
    _session_commands(guarded, subject, 2)
    manifest = yaml.safe_load(guarded.manifest_path.read_text())
    manifest["state"]["url"] = f"sqlite:///{guarded.dir / 'state' / 'lockgate.db'}"
    manifest["state"]["dir"] = str(guarded.dir / "state")
    manifest["guardrails"]["rules"] = [
        r for r in manifest["guardrails"]["rules"] if r.get("use") != "protect-production"
    ] + [{"name": "no-count", "match": {"functions": ["count"]}}]
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(yaml.safe_dump(manifest))
    out = subprocess.run(
        [*LOCKGATE, "policy", "test", "--json", "-c", str(candidate)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    changes = {c["statement"]: c for c in json.loads(out.stdout)["changes"]}
    was_refused = changes[f"TRUNCATE customers /* {subject} */"]
    assert was_refused["before"] == {"decision": "deny", "rule": "protect-production/no-truncate"}
    assert was_refused["after"]["decision"] == "allow"
    now_refused = changes[f"SELECT count(*) FROM customers /* {subject} */"]
    assert now_refused["before"]["decision"] == "allow"
    assert now_refused["after"]["rule"] == "no-count"
