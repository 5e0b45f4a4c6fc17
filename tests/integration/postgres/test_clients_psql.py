"""psql, unmodified, through the gateway: queries, \\copy, errors, ON_ERROR_STOP, Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from tests.integration.postgres.conftest import RunningGateway

pytestmark = [
    pytest.mark.pg,
    pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed"),
]


def _psql(
    gateway: RunningGateway, token: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGPASSWORD": token, "PGSSLMODE": "require", "PGCONNECT_TIMEOUT": "10"}
    dsn = f"host=127.0.0.1 port={gateway.port} dbname=itdb user=alice"
    return subprocess.run(
        ["psql", dsn, "-X", "-q", "-A", "-t", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def test_query_and_multiple_statements(gateway: RunningGateway, token: str) -> None:
    r = _psql(
        gateway,
        token,
        "-c",
        "select 1 + 1",
        "-c",
        "select string_agg(x::text, ',') from generate_series(1, 5) x",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2", "1,2,3,4,5"]
    r = _psql(gateway, token, "-c", "select current_setting('ssl') is not null, current_user")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("t|")


def test_copy_from_file_and_to_file_round_trip(
    gateway: RunningGateway, token: str, tmp_path: Path
) -> None:
    src = tmp_path / "in.csv"
    rows = [f'{i},name {i},"quoted, {i}"' for i in range(1, 5001)]
    src.write_text("\n".join(rows) + "\n")
    dst = tmp_path / "out.csv"
    script = tmp_path / "copy.sql"
    script.write_text(
        "drop table if exists psql_copy;\n"
        "create table psql_copy (id int primary key, name text, note text);\n"
        f"\\copy psql_copy from '{src}' with (format csv)\n"
        "select count(*), sum(id) from psql_copy;\n"
        f"\\copy (select * from psql_copy order by id) to '{dst}' with (format csv)\n"
    )
    r = _psql(gateway, token, "-v", "ON_ERROR_STOP=1", "-f", str(script))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [f"5000|{5000 * 5001 // 2}"]
    assert dst.read_text() == src.read_text()


def test_error_inside_transaction_then_rollback(
    gateway: RunningGateway, token: str, tmp_path: Path
) -> None:
    script = tmp_path / "tx.sql"
    script.write_text(
        "drop table if exists psql_tx;\n"
        "create table psql_tx (id int);\n"
        "begin;\n"
        "insert into psql_tx values (1);\n"
        "select * from no_such_table;\n"
        "select 'still in aborted tx';\n"
        "rollback;\n"
        "select count(*) from psql_tx;\n"
    )
    r = _psql(gateway, token, "-f", str(script))
    assert r.returncode == 0, r.stderr
    assert 'relation "no_such_table" does not exist' in r.stderr
    assert "current transaction is aborted" in r.stderr
    assert r.stdout.split() == ["0"]


def test_on_error_stop(gateway: RunningGateway, token: str, tmp_path: Path) -> None:
    script = tmp_path / "stop.sql"
    script.write_text("select 'before';\nselect 1/0;\nselect 'after';\n")
    r = _psql(gateway, token, "-v", "ON_ERROR_STOP=1", "-f", str(script))
    assert r.returncode == 3
    assert "division by zero" in r.stderr
    assert r.stdout.split() == ["before"]


def _wait_for_query(pg_server: tuple[str, int, str], database: str, needle: str) -> int:
    """Poll pg_stat_activity on the server itself until `needle` runs; its backend pid."""
    host, port, user = pg_server
    with psycopg.connect(host=host, port=port, user=user, dbname="postgres", autocommit=True) as c:
        for _ in range(200):
            row = c.execute(
                "select pid from pg_stat_activity where datname = %s and state = 'active' "
                "and query = %s",
                (database, needle),
            ).fetchone()
            if row is not None:
                return int(row[0])
            time.sleep(0.05)
    raise AssertionError(f"{needle!r} never showed up in pg_stat_activity")


def test_ctrl_c_cancels_the_running_query(
    gateway: RunningGateway, token: str, pg_server: tuple[str, int, str], it_database: str
) -> None:
    env = {**os.environ, "PGPASSWORD": token, "PGSSLMODE": "require"}
    sql = "select pg_sleep(30)"
    proc = subprocess.Popen(
        ["psql", f"host=127.0.0.1 port={gateway.port} dbname=itdb user=alice", "-X", "-c", sql],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_query(pg_server, it_database, sql)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "canceling statement due to user request" in err, (out, err)
    assert proc.returncode != 0


def test_client_cancel_key_is_the_gateways_own(
    gateway: RunningGateway, token: str, pg_server: tuple[str, int, str], it_database: str
) -> None:
    """The process id psql is given is not the upstream backend's: cancels must be mapped."""
    with psycopg.connect(gateway.dsn(token)) as conn:
        upstream_pid = conn.execute("select pg_backend_pid()").fetchone()
        assert upstream_pid is not None
        assert conn.info.backend_pid != upstream_pid[0]
