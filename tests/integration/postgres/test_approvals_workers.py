"""Held statements with two gateway worker processes sharing the state store.

A decision taken by the CLI (a third process) must reach whichever worker holds the
client: at once through the same-host wake-up sockets of the SQLite store (wakeups.py),
proven with a 30 s fallback poll and a 10 s bound, and by polling alone too. Stopping the
gateway must withdraw the requests of every worker. The worker serving a session is read from
the cancel key the gateway gives the client: its top bits name the worker.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from tests.conftest import free_port
from tests.integration.postgres.conftest import (
    RunningGateway,
    base_manifest,
    local_resource,
    start_gateway,
)

pytestmark = pytest.mark.pg


@pytest.fixture
def gw(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    pg_server: tuple[str, int, str],
    it_database: str,
) -> Iterator[RunningGateway]:
    host, port, user = pg_server
    with psycopg.connect(host=host, port=port, user=user, dbname=it_database, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS payments (id int, note text)")
    manifest = base_manifest(free_port(), [local_resource("itdb", it_database, host, port, user)])
    manifest["listeners"][0]["workers"] = 2
    manifest["guardrails"] = {
        "rules": [{"name": "hold-payments", "match": {"writes": ["payments"]}, "action": "review"}]
    }
    manifest["approvals"] = {
        "poll_interval": getattr(request, "param", 0.2),
        "rules": [{"name": "payments", "reviewers": ["sre"]}],
    }
    gateway = start_gateway(tmp_path_factory.mktemp("workers"), manifest)
    yield gateway
    gateway.stop()


class _Held(threading.Thread):
    """One session on a known worker that runs one statement (held) and then `SELECT 1`."""

    def __init__(self, conn: psycopg.Connection[Any], sql: str) -> None:
        super().__init__(daemon=True)
        self.conn, self.sql = conn, sql
        self.error: psycopg.Error | None = None
        self.after: Any = None

    def run(self) -> None:
        try:
            self.conn.execute(self.sql)
        except psycopg.Error as exc:
            self.error = exc
        try:
            self.after = self.conn.execute("SELECT 1").fetchone()
        except psycopg.Error:
            pass  # the gateway went away (the shutdown case)


def _one_per_worker(gw: RunningGateway) -> list[psycopg.Connection[Any]]:
    """A session on worker 0 and one on worker 1 (the kernel spreads connections)."""
    token = gw.token("alice", ("it",))
    found: dict[int, psycopg.Connection[Any]] = {}
    for _ in range(40):  # bounded: each connection lands on either worker
        conn = psycopg.connect(gw.dsn(token), autocommit=True)
        worker = conn.info.backend_pid >> 22
        if worker in found:
            conn.close()
        else:
            found[worker] = conn
        if len(found) == 2:
            return [found[0], found[1]]
    for conn in found.values():
        conn.close()
    raise AssertionError(f"all connections landed on worker(s) {sorted(found)}")


def _pending(gw: RunningGateway, note: str) -> dict[str, Any]:
    for _ in range(150):
        for row in json.loads(gw.cli("reviews", "list", "--json").stdout):
            if note in (row["statement"] or ""):
                return dict(row)
        time.sleep(0.1)
    raise AssertionError(f"no pending request for {note}")


def _count(pg: tuple[str, int, str], database: str, note: str) -> int:
    host, port, user = pg
    with psycopg.connect(host=host, port=port, user=user, dbname=database) as c:
        row = c.execute("SELECT count(*) FROM payments WHERE note = %s", (note,)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("gw", [0.2, 30], indirect=True, ids=["polled", "woken"])
def test_decisions_reach_the_worker_holding_the_client(
    gw: RunningGateway, pg_server: tuple[str, int, str], it_database: str
) -> None:
    first, second = _one_per_worker(gw)
    approved, denied = (f"{n}-{secrets.token_hex(3)}" for n in ("w0-approved", "w1-denied"))
    a = _Held(first, f"INSERT INTO payments VALUES (1, '{approved}')")
    b = _Held(second, f"INSERT INTO payments VALUES (2, '{denied}')")
    a.start()
    b.start()
    ra, rb = _pending(gw, approved), _pending(gw, denied)
    gw.cli("reviews", "deny", rb["id"], "--reason", "no", "--as", "root", "--group", "sre")
    gw.cli("reviews", "approve", ra["id"], "--reason", "ok", "--as", "root", "--group", "sre")
    a.join(10)  # a third of the 30 s poll: with it, only the wake-up releases them in time
    b.join(10)
    assert not a.is_alive() and not b.is_alive(), "a held statement was not released"
    first.close()
    second.close()
    assert a.error is None and a.after == (1,)
    assert b.error is not None and b.error.sqlstate == "42501" and "no" in str(b.error)
    assert b.after == (1,)
    assert _count(pg_server, it_database, approved) == 1
    assert _count(pg_server, it_database, denied) == 0


def test_stopping_the_gateway_withdraws_the_requests_of_every_worker(
    gw: RunningGateway, pg_server: tuple[str, int, str], it_database: str
) -> None:
    first, second = _one_per_worker(gw)
    held = [
        _Held(first, "INSERT INTO payments VALUES (3, 'w0-stopped')"),
        _Held(second, "INSERT INTO payments VALUES (4, 'w1-stopped')"),
    ]
    for h in held:
        h.start()
    ids = [_pending(gw, note)["id"] for note in ("w0-stopped", "w1-stopped")]
    gw.stop()
    for h in held:
        h.join(30)
        assert h.error is not None and "shutting down" in str(h.error)
    first.close()
    second.close()
    for rid in ids:
        done = json.loads(gw.cli("reviews", "show", rid, "--json").stdout)
        assert done["status"] == "withdrawn" and done["outcome"] == "the gateway shut down"
        late = gw.cli(
            "reviews", "approve", rid, "--reason", "late", "--as", "root", "--group", "sre",
            check=False,
        )  # fmt: skip
        assert late.returncode != 0
    assert _count(pg_server, it_database, "w0-stopped") == 0
    assert _count(pg_server, it_database, "w1-stopped") == 0
