"""Reads that return more rows than the planner estimated: paused at the `rows_over` limit.

`WHERE id % 1 = 0` keeps every row while the planner guesses 0.5% of them, so the
estimate passes under the threshold and the real count passes over it mid-stream. The
clients are psycopg (streaming: rows are counted as they arrive) and psql; the test
decides through the CLI and checks the server itself in `pg_stat_activity`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from tests.conftest import free_port
from tests.integration.postgres.conftest import (
    RunningGateway,
    base_manifest,
    local_resource,
    run_direct,
    start_gateway,
    wait_request,
)

pytestmark = pytest.mark.pg

_BULK = "SELECT id, note FROM big WHERE id % 1 = 0"
# 20,000 rows of 8 kB: far more than socket buffers hold, so the server is still sending.
_WIDE = "SELECT id, repeat('x', 8000) AS pad FROM wide WHERE id % 1 = 0"


def _manifest(port: int, database: str, pg: tuple[str, int, str]) -> dict[str, Any]:
    host, pgport, user = pg
    manifest = base_manifest(port, [local_resource("itdb", database, host, pgport, user)])
    manifest["guardrails"] = {
        "rules": [
            {
                "name": "bulk-reads",
                "match": {"kinds": ["select"], "reads": ["big"], "rows_over": 10000},
                "action": "review",
            },
            {
                "name": "wide-reads",
                "match": {"kinds": ["select"], "reads": ["wide"], "rows_over": 1000},
                "action": "review",
            },
            {
                "name": "no-dumps",
                "match": {"kinds": ["select"], "reads": ["dump"], "rows_over": 50},
                "action": "deny",
                "message": "no dumps of this table",
            },
        ]
    }
    manifest["approvals"] = {
        "poll_interval": 0.2,
        "rules": [
            {"name": "bulk", "guardrails": ["bulk-reads", "wide-reads"], "reviewers": ["sre"]}
        ],
    }
    return manifest


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, pg_server: tuple[str, int, str], it_database: str
) -> Iterator[RunningGateway]:
    run_direct(
        pg_server,
        it_database,
        "CREATE TABLE big AS SELECT g AS id, 'row ' || g AS note FROM generate_series(1, 20000) g",
        "CREATE TABLE wide AS SELECT g AS id FROM generate_series(1, 20000) g",
        "CREATE TABLE dump AS SELECT g AS id FROM generate_series(1, 2000) g",
        "ANALYZE big, wide, dump",
    )
    gateway = start_gateway(
        tmp_path_factory.mktemp("rowgate"), _manifest(free_port(), it_database, pg_server)
    )
    yield gateway
    gateway.stop()


def _pending(guardrail: str) -> Callable[[dict[str, Any]], bool]:
    return lambda r: r["guardrail"] == guardrail and r["status"] == "pending"


class _Stream(threading.Thread):
    """Streams one query through the gateway (psycopg single-row mode), counting rows."""

    def __init__(self, dsn: str, sql: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.sql = dsn, sql
        self.rows = 0
        self.notices: list[str] = []
        self.error: psycopg.Error | None = None
        self.after: Any = None
        # Set by the test when the session may end (it checks the server meanwhile).
        self.release = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.add_notice_handler(lambda d: self.notices.append(d.message_primary or ""))
            try:
                for _row in conn.cursor().stream(self.sql):
                    self.rows += 1
            except psycopg.Error as exc:
                self.error = exc
            self.after = conn.execute("SELECT 41 + 1").fetchone()
            self.release.wait(30)


def _until(pred: Callable[[], bool], what: str) -> None:
    for _ in range(600):
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _audit(gw: RunningGateway, *words: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for _ in range(100):  # the audit trail is ingested asynchronously
        rows = json.loads(gw.cli("audit", "search", *words, "--json").stdout)
        if rows and rows[0].get("rows") is not None:
            return rows[0]
        time.sleep(0.2)
    raise AssertionError(f"no finished audit record for {words}: {rows!r}")


def test_read_pauses_at_the_threshold_and_resumes_on_approval(gw: RunningGateway) -> None:
    alice = gw.token("alice", ("it",))
    client = _Stream(gw.dsn(alice), _BULK)
    client.start()
    req = wait_request(gw, _pending("bulk-reads"))
    assert req["requester"] == "alice" and req["statement"] == _BULK
    assert "actual rows passed 10000" in req["reason"]
    assert "estimated rows=100" in req["reason"]
    # Exactly the rows up to the threshold reached the client; the rest waits.
    _until(lambda: client.rows == 10000, "the rows before the threshold")
    time.sleep(0.5)
    assert client.rows == 10000 and client.is_alive()
    assert any(req["id"] in n and "held for review" in n for n in client.notices)
    gw.cli("reviews", "approve", req["id"], "--reason", "export", "--as", "root", "--group", "sre")
    _until(lambda: client.after is not None, "the read to end")
    client.release.set()
    client.join(60)
    assert not client.is_alive()
    assert client.error is None and client.rows == 20000 and client.after == (42,)
    record = _audit(gw, "id", "note", "big")
    assert record["rows"] == 20000
    assert "estimated rows: 100" in record["reason"]
    assert f"request {req['id']} approved" in record["status"]


def test_denied_read_is_cancelled_upstream(
    gw: RunningGateway, direct: psycopg.Connection[Any]
) -> None:
    alice = gw.token("alice", ("it",))
    client = _Stream(gw.dsn(alice), _WIDE)
    client.start()
    req = wait_request(gw, _pending("wide-reads"))
    _until(lambda: client.rows == 1000, "the rows before the threshold")

    # Backpressure: the server still runs the query, blocked writing to the gateway.
    running = direct.execute(
        "SELECT pid, state, wait_event FROM pg_stat_activity WHERE query = %s", (_WIDE,)
    ).fetchone()
    assert running is not None and running[1:] == ("active", "ClientWrite")
    pid = running[0]
    gw.cli("reviews", "deny", req["id"], "--reason", "too wide", "--as", "root", "--group", "sre")
    _until(lambda: client.after is not None, "the read to end")
    # The same backend (the session went on) ran `SELECT 41 + 1` since: the query stopped.
    after = direct.execute(
        "SELECT state, query FROM pg_stat_activity WHERE pid = %s", (pid,)
    ).fetchone()
    assert after == ("idle", "SELECT 41 + 1")
    client.release.set()
    client.join(60)
    assert not client.is_alive()
    assert client.rows == 1000
    assert client.error is not None and client.error.sqlstate == "42501"
    assert "too wide" in str(client.error) and "stopped after 1000 rows" in str(client.error)
    assert client.after == (42,)
    record = _audit(gw, "repeat", "wide")
    assert record["rows"] == 1000 and record["error_code"] == "42501"
    assert "upstream: 57014" in record["status"]


def test_deny_rule_stops_the_read_at_its_threshold(gw: RunningGateway) -> None:
    alice = gw.token("alice", ("it",))
    with psycopg.connect(gw.dsn(alice), autocommit=True) as conn:
        rows = 0
        with pytest.raises(psycopg.Error) as caught:
            for _row in conn.cursor().stream("SELECT id FROM dump WHERE id % 1 = 0"):
                rows += 1
        assert rows == 50
        assert caught.value.sqlstate == "42501" and "no dumps" in str(caught.value)
        # A narrow read of the same table is not affected.
        assert len(conn.execute("SELECT id FROM dump WHERE id <= 40").fetchall()) == 40
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_psql_waits_mid_stream_and_gets_every_row(gw: RunningGateway) -> None:
    alice = gw.token("alice", ("it",))
    proc = subprocess.Popen(
        ["psql", gw.dsn(alice), "-X", "-A", "-t", "-c", _BULK + " ORDER BY id"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        req = wait_request(gw, _pending("bulk-reads"))
        gw.cli("reviews", "approve", req["id"], "--reason", "ok", "--as", "root", "--group", "sre")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 20000 and lines[-1] == "20000|row 20000"
    assert f"lockgate reviews approve {req['id']}" in err
