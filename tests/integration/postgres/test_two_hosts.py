"""Two gateway hosts on one PostgreSQL state store behind a real HAProxy, on loopback.

Each gateway has its own state folder and manifest (its own audit chain); they share the
store and the token signing key, as docs/two-hosts.md describes. Both poll the store only
every 30 s (live sessions and approvals), and every wait below is bounded well under that:
what happens in time on the other host was woken by the store's `NOTIFY`.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from tests.conftest import free_port
from tests.integration.admin.conftest import console_url, wait_for
from tests.integration.postgres.conftest import (
    RunningGateway,
    base_manifest,
    local_resource,
    start_gateway,
)

pytestmark = pytest.mark.pg

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


POLL = 30  # seconds: both fallback polls, far above every bounded wait below
BOUND = 100  # tries 0.1 s apart: 10 s at most


class TwoHosts:
    def __init__(
        self, a: RunningGateway, b: RunningGateway, port: int, store: str, console: str
    ) -> None:
        self.a, self.b, self.port, self.store, self.console = a, b, port, store, console

    def admin(self, token: str) -> httpx.Client:
        """A client of host a's admin API."""
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.Client(base_url=self.console, verify=False, headers=headers, timeout=30)

    def dsn(self, token: str, port: int | None = None) -> str:
        return (
            f"host=127.0.0.1 port={port or self.port} dbname=itdb user=alice "
            f"password={token} sslmode=require connect_timeout=10"
        )


def _haproxy_config(port: int, a: int, b: int) -> str:
    return f"""\
global
    maxconn 200

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h

frontend lockgate_pg
    bind 127.0.0.1:{port}
    default_backend gateways

backend gateways
    balance roundrobin
    server a 127.0.0.1:{a} check inter 1s
    server b 127.0.0.1:{b} check inter 1s
"""


@pytest.fixture(scope="module")
def hosts(
    tmp_path_factory: pytest.TempPathFactory, pg_server: tuple[str, int, str], it_database: str
) -> Iterator[TwoHosts]:
    if not Path(HAPROXY).exists():
        pytest.skip("haproxy is not installed (scripts/setup installs it)")
    host, port, user = pg_server
    store = f"lockgate_store_{secrets.token_hex(4)}"
    admin = {"host": host, "port": port, "user": user, "dbname": "postgres", "autocommit": True}
    with psycopg.connect(**admin) as c:
        c.execute(f'CREATE DATABASE "{store}"')
    with psycopg.connect(host=host, port=port, user=user, dbname=it_database) as c:
        c.execute("CREATE TABLE IF NOT EXISTS payments (id int, note text)")
    root = tmp_path_factory.mktemp("two-hosts")
    started: list[Any] = []
    try:
        gateways = []
        for name in ("a", "b"):
            manifest = base_manifest(
                free_port(), [local_resource("itdb", it_database, host, port, user)]
            )
            manifest["state"] = {
                "url": f"postgresql+psycopg://{user}@{host}:{port}/{store}",
                "dir": "state",
            }
            # Polling alone would end a revoked session or release an approved statement
            # only after 30 s: the store's LISTEN/NOTIFY wake-up must do it.
            manifest["identity"] = {"sessions": {"check_interval": f"{POLL}s"}}
            manifest["guardrails"] = {
                "rules": [
                    {"name": "hold-payments", "match": {"writes": ["payments"]}, "action": "review"}
                ]
            }
            manifest["approvals"] = {
                "rules": [
                    {"name": "payments", "guardrails": ["hold-payments"], "reviewers": ["sre"]}
                ],
                "poll_interval": POLL,
            }
            if name == "a":
                manifest["admin"] = {
                    "listen": f"127.0.0.1:{free_port()}",
                    "roles": {"admin": ["secops"]},
                    "events_interval": POLL,
                }
            if name == "b":
                # One token authority for both hosts: B gets A's signing key.
                key = root / "a" / "state" / "token-signing-key.pem"
                (root / "b" / "state").mkdir(parents=True)
                shutil.copy2(key, root / "b" / "state" / key.name)
            gw = start_gateway(root / name, manifest)
            started.append(gw)
            gateways.append(gw)
            if name == "a":
                gw.token("warm-up")  # creates the signing key B copies
        a, b = gateways
        hport = free_port()
        cfg = root / "haproxy.cfg"
        cfg.write_text(_haproxy_config(hport, a.port, b.port))
        check = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        proxy = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        started.append(proxy)
        yield TwoHosts(a, b, hport, store, console_url(a))
    finally:
        for p in reversed(started):
            if isinstance(p, RunningGateway):
                p.stop()
            elif p.poll() is None:
                p.terminate()
                p.wait(timeout=10)
        with psycopg.connect(**admin) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{store}" WITH (FORCE)')


def _connect(dsn: str) -> psycopg.Connection[Any]:
    """Connect, retrying while HAProxy's health checks come up (bounded)."""
    for _ in range(50):
        try:
            return psycopg.connect(dsn, autocommit=True)
        except psycopg.OperationalError:
            time.sleep(0.1)
    return psycopg.connect(dsn, autocommit=True)


def test_clients_reach_both_hosts_and_both_chains_verify(hosts: TwoHosts) -> None:
    tok = hosts.a.token("lb-client")
    for i in range(6):
        with _connect(hosts.dsn(tok)) as conn:
            assert conn.execute("select %s::int", (str(i),)).fetchone() == (i,)
    with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={hosts.store}") as store:
        chains = store.execute(
            "SELECT count(DISTINCT e.chain) FROM audit_events e JOIN sessions s "
            "ON s.id = e.session_id WHERE e.kind = 'S' AND s.subject = 'lb-client'"
        ).fetchone()
        # Each host writes its own chain: sessions of both hosts are there.
        for _ in range(50):
            if chains == (2,):
                break
            time.sleep(0.1)
            chains = store.execute(
                "SELECT count(DISTINCT e.chain) FROM audit_events e JOIN sessions s "
                "ON s.id = e.session_id WHERE e.kind = 'S' AND s.subject = 'lb-client'"
            ).fetchone()
    assert chains == (2,)
    out = hosts.a.cli("audit", "verify", "--json")
    report = json.loads(out.stdout)
    assert report["ok"] and len(report["chains"]) == 2
    assert hosts.b.cli("audit", "verify").returncode == 0


def test_revocation_on_one_host_ends_a_live_session_on_the_other(hosts: TwoHosts) -> None:
    tok = hosts.a.token("revoked-elsewhere")
    with _connect(hosts.dsn(tok, hosts.b.port)) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        revoked_at = time.monotonic()  # the CLI's own start-up counts too
        hosts.a.cli("token", "revoke", "--subject", "revoked-elsewhere", "--reason", "left")
        ended = _ended_at(conn)
    assert ended is not None, "the live session on host b was not ended by the wake-up"
    ended -= revoked_at
    print(f"host b ended the revoked session {ended:.2f} s after `token revoke` started on a")
    # New connections through the balancer are refused on either host.
    for _ in range(2):
        with pytest.raises(psycopg.OperationalError, match="revoked"):
            psycopg.connect(hosts.dsn(tok), autocommit=True)


def _ended_at(conn: psycopg.Connection[Any]) -> float | None:
    """When the gateway ended `conn`'s session (bounded wait), else None."""
    for _ in range(BOUND):
        try:
            conn.execute("select 1")
        except psycopg.Error:
            return time.monotonic()
        time.sleep(0.1)
    return None


class _Held:
    """A statement on host b that waits for review, run in a thread."""

    def __init__(self, hosts: TwoHosts, marker: str) -> None:
        self.result: dict[str, Any] = {}
        token = hosts.a.token("alice", ("it",))
        self.thread = threading.Thread(
            target=self._run, args=(hosts.dsn(token, hosts.b.port), marker), daemon=True
        )
        self.thread.start()
        self.request = wait_for(
            "host b's approval request on host a", lambda: self._listed(hosts, marker)
        )

    def _run(self, dsn: str, marker: str) -> None:
        with _connect(dsn) as conn:
            try:
                conn.execute(sql.SQL("INSERT INTO payments VALUES (7, {})").format(marker))
                self.result["done"] = time.monotonic()
            except psycopg.Error as exc:
                self.result["error"] = exc

    @staticmethod
    def _listed(hosts: TwoHosts, marker: str) -> dict[str, Any] | None:
        listed = json.loads(hosts.a.cli("reviews", "list", "--json").stdout)
        return next((r for r in listed if marker in (r["statement"] or "")), None)

    def released(self) -> dict[str, Any]:
        """The outcome, waiting at most 10 s (a third of the 30 s fallback poll)."""
        self.thread.join(BOUND * 0.1)
        assert not self.thread.is_alive(), "host b did not release the statement in time"
        return self.result


def test_approval_on_one_host_releases_a_statement_held_on_the_other(hosts: TwoHosts) -> None:
    bob = hosts.a.token("bob", ("sre",))
    held = _Held(hosts, "two-hosts-cli")
    approved_at = time.monotonic()  # the CLI's own start-up counts too
    hosts.a.cli("reviews", "approve", held.request["id"], "--reason", "ok", "--token", bob)
    result = held.released()
    assert "error" not in result, result
    took = result["done"] - approved_at
    print(f"host b ran the statement {took:.2f} s after `reviews approve` started on a")


def test_console_denial_on_one_host_refuses_a_statement_held_on_the_other(
    hosts: TwoHosts,
) -> None:
    held = _Held(hosts, "two-hosts-api")
    with hosts.admin(hosts.a.token("carol", ("sre",))) as api:
        denied_at = time.monotonic()
        got = api.post(f"/api/reviews/{held.request['id']}/deny", json={"reason": "not now"})
    assert got.status_code == 200, got.text
    result = held.released()
    assert "not now" in str(result.get("error")), result
    print(f"host b refused the statement {time.monotonic() - denied_at:.2f} s after the denial")


def test_console_end_session_on_one_host_ends_a_live_session_on_the_other(
    hosts: TwoHosts,
) -> None:
    tok = hosts.a.token("ended-elsewhere")
    with (
        _connect(hosts.dsn(tok, hosts.b.port)) as conn,
        hosts.admin(hosts.a.token("root", ("secops",))) as api,
    ):
        assert conn.execute("select 1").fetchone() == (1,)

        def live() -> str | None:
            page = api.get("/api/sessions", params={"subject": "ended-elsewhere"}).json()
            return next((s["id"] for s in page["items"] if s["live"]), None)

        sid = wait_for("the session on host b in host a's console", live)
        asked_at = time.monotonic()
        got = api.post(f"/api/sessions/{sid}/end", json={"reason": "incident"})
        assert got.status_code == 202, got.text
        ended = _ended_at(conn)
    assert ended is not None, "the live session on host b was not ended by the wake-up"
    print(f"host b ended the session {ended - asked_at:.2f} s after the console asked on a")


def test_console_events_on_one_host_show_reviews_of_the_other(hosts: TwoHosts) -> None:
    """Host a's event stream (30 s fallback poll) shows host b's review, then its denial."""
    with (
        hosts.admin(hosts.a.token("rita", ("sre",))) as api,
        api.stream("GET", "/api/events", timeout=httpx.Timeout(BOUND * 0.1)) as stream,
    ):
        lines = stream.iter_lines()
        assert next(lines).startswith(":")  # subscribed: the hub took its baseline
        held = _Held(hosts, "two-hosts-sse")
        rid = held.request["id"]

        def next_review() -> dict[str, Any]:
            for line in lines:  # each read is bounded: no event in 10 s raises ReadTimeout
                if line.startswith("data: ") and rid in line:
                    return dict(json.loads(line[len("data: ") :]))
            raise AssertionError("the event stream ended")

        assert next_review()["status"] == "pending"
        got = api.post(f"/api/reviews/{rid}/deny", json={"reason": "sse"})
        assert got.status_code == 200, got.text
        assert next_review()["status"] == "denied"
    assert "sse" in str(held.released().get("error"))


def test_console_events_on_one_host_show_sessions_of_the_other(hosts: TwoHosts) -> None:
    """Host a's event stream (30 s fallback poll) shows a session on host b start and end:
    host b's audit ingester announces sessions it stored (`NOTIFY lockgate_audit`)."""
    tok = hosts.a.token("sam", ("it",))  # sam sees sam's own sessions in the console
    with (
        hosts.admin(tok) as api,
        api.stream("GET", "/api/events", timeout=httpx.Timeout(BOUND * 0.1)) as stream,
    ):
        lines = stream.iter_lines()
        assert next(lines).startswith(":")  # subscribed: the hub took its baseline

        def next_session() -> dict[str, Any]:
            for line in lines:  # each read is bounded: no event in 10 s raises ReadTimeout
                if line.startswith("data: ") and '"sam"' in line:
                    return dict(json.loads(line[len("data: ") :]))
            raise AssertionError("the event stream ended")

        with _connect(hosts.dsn(tok, hosts.b.port)) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            started = next_session()
            assert started["live"] and started["subject"] == "sam"
        ended = next_session()
        assert ended["id"] == started["id"] and not ended["live"]
