"""Just-in-time approval through the real gateway: held statements and access grants.

A statement a guardrail sends to review waits inside the client's live session while the
test decides through the CLI (another process, as a reviewer would); the effect is checked
on the server directly.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import psycopg
import pytest
from tests.conftest import free_port
from tests.integration.postgres.conftest import (
    RunningGateway,
    Wire,
    jit_manifest,
    run_direct,
    start_gateway,
    wait_request,
)

pytestmark = pytest.mark.pg


class _Hooks:
    """A loopback HTTP server that records POSTed JSON; each path fails its first POST."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.failed: set[str] = set()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path not in hooks.failed:
                    hooks.failed.add(self.path)  # the sender must retry
                    self.send_response(503)
                else:
                    hooks.received.append((self.path, json.loads(body)))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, path: str, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        for _ in range(300):
            for p, body in list(self.received):
                if p == path and pred(body):
                    return body
            time.sleep(0.05)
        raise AssertionError(f"no matching POST to {path}; got {self.received!r}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def hooks() -> Iterator[_Hooks]:
    server = _Hooks()
    yield server
    server.close()


def _manifest(port: int, database: str, pg: tuple[str, int, str], hook_url: str) -> dict[str, Any]:
    manifest = jit_manifest(port, database, pg)
    manifest["guardrails"] = {
        "rules": [
            {"name": "hold-payments", "match": {"writes": ["payments"]}, "action": "review"},
            {"name": "hold-ledger", "match": {"writes": ["ledger"]}, "action": "review"},
            {"name": "hold-vault", "match": {"writes": ["vault"]}, "action": "review"},
            {
                "name": "bulk-reads",
                "match": {"kinds": ["select"], "reads": ["big"], "rows_over": 10000},
                "action": "review",
            },
        ]
    }
    manifest["approvals"] = {
        "poll_interval": 0.2,
        "webhooks": [
            {"url": f"{hook_url}/events", "attempts": 3},
            {"url": f"{hook_url}/slack", "format": "slack", "attempts": 3},
        ],
        "rules": [
            {"name": "payments", "guardrails": ["hold-payments"], "reviewers": ["sre"]},
            {
                "name": "ledger",
                "guardrails": ["hold-ledger"],
                "reviewers": ["sre"],
                "expires": "2s",
            },
            {
                "name": "vault",
                "guardrails": ["hold-vault"],
                "reviewers": ["sre", "dba"],
                "quorum": 2,
                "distinct_groups": True,
            },
            {"name": "jit", "requests": ["grant"], "resources": ["jitdb"], "reviewers": ["sre"]},
            {"name": "bulk", "guardrails": ["bulk-reads"], "reviewers": ["sre"]},
        ],
    }
    return manifest


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory,
    pg_server: tuple[str, int, str],
    it_database: str,
    hooks: _Hooks,
) -> Iterator[RunningGateway]:
    run_direct(
        pg_server,
        it_database,
        *(f"CREATE TABLE {table} (id int, note text)" for table in ("payments", "ledger", "vault")),
        "CREATE TABLE big AS SELECT g AS id, 'row ' || g AS note FROM generate_series(1, 20000) g",
        "ANALYZE big",
    )
    gateway = start_gateway(
        tmp_path_factory.mktemp("approvals"),
        _manifest(free_port(), it_database, pg_server, hooks.url),
    )
    yield gateway
    gateway.stop()


def _requests(gw: RunningGateway, *extra: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(gw.cli("reviews", "list", "--json", *extra).stdout)
    return rows


class _Client(threading.Thread):
    """Runs one statement through the gateway in a thread (it blocks while held)."""

    def __init__(self, dsn: str, sql: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.sql = dsn, sql
        self.notices: list[str] = []
        self.error: psycopg.Error | None = None
        self.after: Any = None
        self.rowcount = -1

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.add_notice_handler(lambda d: self.notices.append(d.message_primary or ""))
            conn.add_notice_handler(lambda d: self.notices.append(d.message_hint or ""))
            try:
                self.rowcount = conn.execute(self.sql).rowcount
            except psycopg.Error as exc:
                self.error = exc
            # The session goes on whatever the outcome.
            self.after = conn.execute("SELECT 41 + 1").fetchone()


def _count(direct: psycopg.Connection[Any], table: str, note: str) -> int:
    row = direct.execute(f"SELECT count(*) FROM {table} WHERE note = %s", (note,)).fetchone()
    assert row is not None
    return int(row[0])


def test_approved_statement_runs_exactly_once(
    gw: RunningGateway, direct: psycopg.Connection[Any], hooks: _Hooks
) -> None:
    alice = gw.token("alice", ("it",))
    bob = gw.token("bob", ("sre",))
    client = _Client(gw.dsn(alice), "INSERT INTO payments VALUES (1, 'approved-once')")
    client.start()
    req = wait_request(
        gw,
        lambda r: r["statement"] and "approved-once" in r["statement"] and r["status"] == "pending",
    )
    assert req["requester"] == "alice" and req["guardrail"] == "hold-payments"
    assert req["resource"] == "itdb" and req["session_id"]
    # Held: nothing reached the server yet.
    assert _count(direct, "payments", "approved-once") == 0
    out = gw.cli("reviews", "approve", req["id"], "--reason", "ticket OPS-1", "--token", bob)
    assert "approved" in out.stdout
    client.join(30)
    assert not client.is_alive()
    assert client.error is None
    assert client.after == (42,)
    assert _count(direct, "payments", "approved-once") == 1
    assert any(f"lockgate reviews approve {req['id']}" in n for n in client.notices)
    done = json.loads(gw.cli("reviews", "show", req["id"], "--json").stdout)
    assert done["status"] == "approved"
    assert done["decisions"][0]["reviewer"] == "bob"
    assert done["decisions"][0]["reason"] == "ticket OPS-1"
    # Webhooks: the new request (from the gateway) and the decision (from the CLI), each
    # delivered after a failed first attempt.
    created = hooks.wait("/events", lambda b: b["event"] == "request.created")
    assert created["request"]["id"] == req["id"]
    assert created["approve"] == f"lockgate reviews approve {req['id']} --reason TEXT"
    hooks.wait(
        "/events", lambda b: b["event"] == "request.approved" and b["request"]["id"] == req["id"]
    )
    slack = hooks.wait("/slack", lambda b: req["id"] in b["text"])
    assert set(slack) == {"text"}


def test_denied_statement_gets_42501_with_the_reason(
    gw: RunningGateway, direct: psycopg.Connection[Any]
) -> None:
    alice = gw.token("alice", ("it",))
    client = _Client(gw.dsn(alice), "INSERT INTO payments VALUES (2, 'denied')")
    client.start()
    req = wait_request(
        gw, lambda r: r["statement"] and "'denied'" in r["statement"] and r["status"] == "pending"
    )
    gw.cli(
        "reviews",
        "deny",
        req["id"],
        "--reason",
        "not during the freeze",
        "--as",
        "root",
        "--group",
        "sre",
    )
    client.join(30)
    assert not client.is_alive()
    assert client.error is not None
    assert client.error.sqlstate == "42501"
    assert "not during the freeze" in str(client.error)
    assert client.after == (42,)
    assert _count(direct, "payments", "denied") == 0


def test_expired_request_is_refused(gw: RunningGateway, direct: psycopg.Connection[Any]) -> None:
    alice = gw.token("alice", ("it",))
    client = _Client(gw.dsn(alice), "INSERT INTO ledger VALUES (3, 'expires')")
    client.start()
    client.join(30)
    assert not client.is_alive()
    assert client.error is not None and client.error.sqlstate == "42501"
    assert "expired" in str(client.error)
    assert _count(direct, "ledger", "expires") == 0
    req = wait_request(gw, lambda r: r["statement"] and "'expires'" in r["statement"])
    assert req["status"] == "expired"


def test_quorum_of_two_distinct_groups_and_no_self_approval(
    gw: RunningGateway, direct: psycopg.Connection[Any]
) -> None:
    alice = gw.token("alice", ("it", "sre"))
    client = _Client(gw.dsn(alice), "INSERT INTO vault VALUES (4, 'quorum')")
    client.start()
    req = wait_request(
        gw, lambda r: r["statement"] and "'quorum'" in r["statement"] and r["status"] == "pending"
    )
    rid = req["id"]
    own = gw.cli("reviews", "approve", rid, "--reason", "mine", "--token", alice, check=False)
    assert own.returncode != 0 and "cannot decide" in own.stderr
    outsider = gw.token("mallory", ("it",))
    out = gw.cli("reviews", "approve", rid, "--reason", "x", "--token", outsider, check=False)
    assert out.returncode != 0 and "not a reviewer" in out.stderr
    gw.cli("reviews", "approve", rid, "--reason", "ok 1", "--token", gw.token("bob", ("sre",)))
    same = gw.cli(
        "reviews",
        "approve",
        rid,
        "--reason",
        "ok 2",
        "--token",
        gw.token("carol", ("sre",)),
        check=False,
    )
    assert same.returncode != 0 and "distinct groups" in same.stderr
    assert json.loads(gw.cli("reviews", "show", rid, "--json").stdout)["status"] == "pending"
    assert _count(direct, "vault", "quorum") == 0
    gw.cli("reviews", "approve", rid, "--reason", "ok 2", "--token", gw.token("dave", ("dba",)))
    client.join(30)
    assert not client.is_alive() and client.error is None
    assert _count(direct, "vault", "quorum") == 1


def test_disconnect_withdraws_the_request(
    gw: RunningGateway, direct: psycopg.Connection[Any]
) -> None:
    from lockgate.protocols.postgres import messages as m

    wire = Wire(gw.port, tls=True)
    assert wire.login(gw.token("alice", ("it",)), user="alice", database="itdb") is None
    wire.send(m.query("INSERT INTO payments VALUES (5, 'withdrawn')"))
    req = wait_request(
        gw,
        lambda r: r["statement"] and "'withdrawn'" in r["statement"] and r["status"] == "pending",
    )
    wire.close()
    wait_request(gw, lambda r: r["id"] == req["id"] and r["status"] == "withdrawn")
    late = gw.cli(
        "reviews",
        "approve",
        req["id"],
        "--reason",
        "late",
        "--as",
        "root",
        "--group",
        "sre",
        check=False,
    )
    assert late.returncode != 0 and "withdrawn" in late.stderr
    assert _count(direct, "payments", "withdrawn") == 0


def test_grant_admits_until_expiry_then_ends_the_session(gw: RunningGateway) -> None:
    alice = gw.token("alice", ("it",))
    refused = Wire(gw.port, tls=True)
    err = refused.login(alice, user="alice", database="jitdb")
    refused.close()
    assert err is not None and err["C"] == "42501" and "lockgate request jitdb" in err.get("H", "")

    rid = gw.cli(
        "request", "jitdb", "--for", "6s", "--reason", "INC-123", "--token", alice
    ).stdout.strip()
    selfish = gw.cli("reviews", "approve", rid, "--reason", "me", "--token", alice, check=False)
    assert selfish.returncode != 0
    bob = gw.token("bob", ("sre",))
    gw.cli("reviews", "approve", rid, "--reason", "go", "--token", bob)
    # Connect at once: the grant is short (6s, counted from the approval) so that its end
    # comes during the session; `grants list --all` still lists it once it has ended.
    with psycopg.connect(gw.dsn(alice, dbname="jitdb"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        grants = json.loads(gw.cli("grants", "list", "--all", "--json").stdout)
        assert any(g["request_id"] == rid and g["subject"] == "alice" for g in grants)
        ended: psycopg.Error | None = None
        for _ in range(500):  # bounded: the live check ends the session once the grant ends
            try:
                conn.execute("SELECT 1")
            except psycopg.Error as exc:
                ended = exc
                break
            time.sleep(0.2)
    assert ended is not None
    assert "grant" in str(ended)


def test_revoked_grant_refuses_new_connections(gw: RunningGateway) -> None:
    alice = gw.token("alice", ("it",))
    rid = gw.cli(
        "request", "jitdb", "--for", "1h", "--reason", "INC-9", "--token", alice
    ).stdout.strip()
    gw.cli("reviews", "approve", rid, "--reason", "go", "--as", "root", "--group", "sre")
    grant = next(
        g for g in json.loads(gw.cli("grants", "list", "--json").stdout) if g["request_id"] == rid
    )
    with psycopg.connect(gw.dsn(alice, dbname="jitdb"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    gw.cli("grants", "revoke", grant["id"], "--reason", "done", "--as", "root")
    wire = Wire(gw.port, tls=True)
    err = wire.login(alice, user="alice", database="jitdb")
    wire.close()
    assert err is not None and err["C"] == "42501"


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_psql_waits_inside_a_transaction_and_runs_once(
    gw: RunningGateway, direct: psycopg.Connection[Any]
) -> None:
    alice = gw.token("alice", ("it",))
    script = (
        "BEGIN;\n"
        "INSERT INTO payments VALUES (6, 'psql-tx');\n"
        "SELECT 'after', count(*) FROM payments WHERE note = 'psql-tx';\n"
        "COMMIT;\n"
    )
    path = gw.dir / "psql-tx.sql"
    path.write_text(script)
    proc = subprocess.Popen(
        ["psql", gw.dsn(alice), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        req = wait_request(
            gw,
            lambda r: r["statement"] and "psql-tx" in r["statement"] and r["status"] == "pending",
        )
        gw.cli("reviews", "approve", req["id"], "--reason", "ok", "--as", "root", "--group", "sre")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "after|1" in out
    assert f"lockgate reviews approve {req['id']}" in err
    assert _count(direct, "payments", "psql-tx") == 1


def test_cancel_withdraws_and_refuses_the_held_statement(
    gw: RunningGateway, direct: psycopg.Connection[Any]
) -> None:
    alice = gw.token("alice", ("it",))
    with psycopg.connect(gw.dsn(alice), autocommit=True) as conn:
        failure: list[psycopg.Error] = []

        def run() -> None:
            try:
                conn.execute("INSERT INTO payments VALUES (7, 'cancelled')")
            except psycopg.Error as exc:
                failure.append(exc)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        req = wait_request(
            gw,
            lambda r: (
                r["statement"] and "'cancelled'" in r["statement"] and r["status"] == "pending"
            ),
        )
        conn.cancel()
        worker.join(30)
        assert not worker.is_alive()
        assert failure and failure[0].sqlstate == "42501"
        assert "cancelled" in str(failure[0])
        assert conn.execute("SELECT 1").fetchone() == (1,)
    done = json.loads(gw.cli("reviews", "show", req["id"], "--json").stdout)
    assert done["status"] == "withdrawn"
    assert _count(direct, "payments", "cancelled") == 0


@pytest.mark.usefixtures("gw")  # the tables it writes to
def test_gateway_shutdown_disconnects_the_waiting_client_and_withdraws(
    gateway_factory: Callable[..., RunningGateway],
    pg_server: tuple[str, int, str],
    it_database: str,
    direct: psycopg.Connection[Any],
    hooks: _Hooks,
) -> None:
    from lockgate.protocols.postgres import messages as m

    gw2 = gateway_factory(_manifest(free_port(), it_database, pg_server, hooks.url), "restart")
    wire = Wire(gw2.port, tls=True)
    assert wire.login(gw2.token("alice", ("it",)), user="alice", database="itdb") is None
    wire.send(m.query("INSERT INTO payments VALUES (8, 'shutdown')"))
    req = wait_request(
        gw2,
        lambda r: r["statement"] and "'shutdown'" in r["statement"] and r["status"] == "pending",
    )
    gw2.stop()
    msgs = wire.until_closed()
    wire.close()
    errors = [m.parse_error_fields(p) for t, p in msgs if t == b"E"]
    assert errors and errors[-1]["S"] == "FATAL" and "shutting down" in errors[-1]["M"]
    done = json.loads(gw2.cli("reviews", "show", req["id"], "--json").stdout)
    assert done["status"] == "withdrawn" and done["outcome"] == "the gateway shut down"
    assert _count(direct, "payments", "shutdown") == 0


def test_bulk_read_is_held_on_the_planner_estimate(gw: RunningGateway) -> None:
    alice = gw.token("alice", ("it",))
    before = {r["id"] for r in _requests(gw, "--all")}
    with psycopg.connect(gw.dsn(alice), autocommit=True) as conn:
        # Estimated well under the threshold: runs at once, nothing asked.
        assert len(conn.execute("SELECT * FROM big WHERE id <= 10").fetchall()) == 10
        assert conn.execute("SELECT count(*) FROM big").fetchone() == (20000,)
    assert {r["id"] for r in _requests(gw, "--all")} == before

    client = _Client(gw.dsn(alice), "SELECT id, note FROM big")
    client.start()
    req = wait_request(gw, lambda r: r["guardrail"] == "bulk-reads" and r["status"] == "pending")
    assert "estimated rows=" in req["reason"] and "> 10000" in req["reason"]
    gw.cli("reviews", "approve", req["id"], "--reason", "export", "--as", "root", "--group", "sre")
    client.join(60)
    assert not client.is_alive() and client.error is None
    assert client.rowcount == 20000


def test_bulk_read_with_parameters_is_held_and_denied(gw: RunningGateway) -> None:
    alice = gw.token("alice", ("it",))
    with psycopg.connect(gw.dsn(alice), autocommit=True) as conn:
        failure: list[psycopg.Error] = []
        rows: list[Any] = []

        def run() -> None:
            try:
                rows.extend(conn.execute("SELECT * FROM big WHERE id > %s", (0,)).fetchall())
            except psycopg.Error as exc:
                failure.append(exc)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        req = wait_request(
            gw,
            lambda r: (
                r["guardrail"] == "bulk-reads"
                and r["status"] == "pending"
                and "$1" in (r["statement"] or "")
            ),
        )
        gw.cli(
            "reviews", "deny", req["id"], "--reason", "too much", "--as", "root", "--group", "sre"
        )
        worker.join(30)
        assert not worker.is_alive()
        assert not rows and failure and failure[0].sqlstate == "42501"
        assert "too much" in str(failure[0])
        assert conn.execute("SELECT 1").fetchone() == (1,)
