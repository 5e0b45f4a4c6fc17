"""Browser sign-in through the loopback OIDC provider, live events, grants and export."""

from __future__ import annotations

import csv
import io
import json
import queue
import socket
import threading
import urllib.parse
from typing import Any

import httpx
import psycopg
import pytest
from tests.identity_provider import authorization_code
from tests.integration.admin.conftest import AdminGateway, wait_for

pytestmark = pytest.mark.pg


def _sign_in(gw: AdminGateway, c: httpx.Client, sub: str, next_path: str) -> httpx.Response:
    start = c.get("/auth/login", params={"next": next_path}, follow_redirects=False)
    assert start.status_code == 302, start.text
    target = urllib.parse.urlsplit(start.headers["location"])
    assert f"{target.scheme}://{target.netloc}" == gw.provider
    query = dict(urllib.parse.parse_qsl(target.query))
    assert query["code_challenge_method"] == "S256" and query["code_challenge"]
    assert query["redirect_uri"] == f"{gw.url}/auth/callback"
    back = authorization_code(gw.provider, query, sub)
    assert back.startswith(f"{gw.url}/auth/callback?")
    return c.get(back.removeprefix(gw.url), follow_redirects=False)


def test_oidc_sign_in_opens_a_session(admin_gateway: AdminGateway) -> None:
    with admin_gateway.client() as c:
        done = _sign_in(admin_gateway, c, "carol", "/sessions?live=true")
        assert done.status_code == 303, done.text
        assert done.headers["location"] == "/sessions?live=true"
        me = c.get("/api/me").json()
        assert me["subject"] == "carol" and me["issuer"] == admin_gateway.provider
        assert me["groups"] == ["secops"] and me["roles"] == ["admin"]
        assert c.get("/api/config").status_code == 200
        assert "lockgate_csrf" in c.cookies


def test_oidc_callback_refuses_unknown_and_replayed_state(admin_gateway: AdminGateway) -> None:
    with admin_gateway.client() as c:
        forged = c.get("/auth/callback", params={"state": "forged", "code": "x"})
        assert forged.status_code == 400 and "unknown" in forged.text
        start = c.get("/auth/login", params={"next": "https://evil.example/"})
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(start.headers["location"]).query))
        back = authorization_code(admin_gateway.provider, query, "carol").removeprefix(
            admin_gateway.url
        )
        first = c.get(back, follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"] == "/"  # no open redirect
        again = c.get(back, follow_redirects=False)
        assert again.status_code == 400  # a state is good for one sign-in only


class _Stream:
    """Reads `/api/events` in a thread; each event lands in `events` as (name, data)."""

    def __init__(self, gw: AdminGateway, token: str) -> None:
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.client = gw.client(token)
        self.ready = threading.Event()
        self.sock: socket.socket | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "the event stream did not open"

    def _read(self) -> None:
        name = ""
        try:
            with self.client.stream("GET", "/api/events") as r:
                self.sock = r.extensions["network_stream"].get_extra_info("socket")
                for line in r.iter_lines():
                    if line.startswith(":"):
                        self.ready.set()
                    elif line.startswith("event: "):
                        name = line[len("event: ") :]
                    elif line.startswith("data: "):
                        self.events.put((name, json.loads(line[len("data: ") :])))
        except httpx.HTTPError:
            pass  # closed by the test

    def next(self, name: str, pred: Any) -> dict[str, Any]:
        for _ in range(100):
            try:
                got, data = self.events.get(timeout=0.3)
            except queue.Empty:
                continue
            if got == name and pred(data):
                return data
        raise AssertionError(f"no {name} event matched")

    def close(self) -> None:
        # Shut the socket down (the reader sees EOF) rather than closing it under the
        # reader's feet: a closed descriptor is reused by the next connection at once.
        if self.sock is not None:
            self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.client.close()


def test_events_deliver_reviews_and_sessions(admin_gateway: AdminGateway) -> None:
    reviewer = admin_gateway.token("rev2", "dba")
    requester = admin_gateway.token("dora", "it")
    stream = _Stream(admin_gateway, reviewer)
    try:
        with admin_gateway.client(requester) as c:
            body = {"resource": "jitdb", "duration": "15m", "reason": "INC-SSE"}
            made = c.post("/api/requests", json=body)
        assert made.status_code == 201, made.text
        rid = made.json()["id"]
        created = stream.next("review", lambda d: d["id"] == rid)
        assert created["status"] == "pending" and created["can_decide"] is True
        # A decision taken elsewhere (the CLI, another process) arrives too.
        admin_gateway.gw.cli(
            "reviews", "approve", rid, "--reason", "ok", "--as", "ops", "--group", "dba"
        )
        decided = stream.next("review", lambda d: d["id"] == rid and d["status"] != "pending")
        assert decided["status"] == "approved" and decided["can_decide"] is False
        # The grant lets dora in; her session shows in her own stream, not in rev2's.
        own = _Stream(admin_gateway, requester)
        try:
            with psycopg.connect(admin_gateway.dsn(requester, dbname="jitdb")) as conn:
                conn.execute("SELECT 1")
            started = own.next("session", lambda d: d["subject"] == "dora")
            assert started["resource"] == "jitdb"
        finally:
            own.close()
    finally:
        stream.close()


def test_grants_listed_and_revoked_by_role(admin_gateway: AdminGateway) -> None:
    requester = admin_gateway.token("erin", "it")
    reviewer = admin_gateway.token("rev3", "dba")
    auditor = admin_gateway.token("aud3", "audit")
    with admin_gateway.client(requester) as c:
        rid = c.post(
            "/api/requests", json={"resource": "jitdb", "duration": "10m", "reason": "INC-9"}
        ).json()["id"]
        too_long = c.post(
            "/api/requests", json={"resource": "jitdb", "duration": "9d", "reason": "x"}
        )
        assert too_long.status_code == 422
        unknown = c.post(
            "/api/requests", json={"resource": "nope", "duration": "1m", "reason": "x"}
        )
        assert unknown.status_code == 422
    with admin_gateway.client(reviewer) as c:
        assert c.post(f"/api/reviews/{rid}/approve", json={"reason": "ok"}).status_code == 200
    with admin_gateway.client(requester) as c:
        mine = c.get("/api/grants").json()["items"]
        (grant,) = [g for g in mine if g["subject"] == "erin"]
        assert all(g["subject"] == "erin" for g in mine)
        assert grant["status"] == "active" and grant["resource"] == "jitdb"
        own = c.post(f"/api/grants/{grant['id']}/revoke", json={"reason": "done"})
        assert own.status_code == 403
    with admin_gateway.client(auditor) as c:
        everyone = c.get("/api/grants").json()["items"]
        assert any(g["id"] == grant["id"] for g in everyone)
        assert c.post(f"/api/grants/{grant['id']}/revoke", json={"reason": "x"}).status_code == 403
    with admin_gateway.client(reviewer) as c:
        assert any(g["id"] == grant["id"] for g in c.get("/api/grants").json()["items"])
        revoked = c.post(f"/api/grants/{grant['id']}/revoke", json={"reason": "INC closed"})
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["status"] == "revoked" and revoked.json()["revoked_by"] == "rev3"
        assert c.post(f"/api/grants/{grant['id']}/revoke", json={"reason": "x"}).status_code == 409


def test_export_as_jsonl_and_csv(admin_gateway: AdminGateway) -> None:
    user = admin_gateway.token("fay", "it")
    with psycopg.connect(admin_gateway.dsn(user), autocommit=True) as conn:
        conn.execute("SELECT 'exported words'")
    admin = admin_gateway.token("ada2", "secops")
    with admin_gateway.client(admin) as c:

        def found() -> list[str]:
            r = c.get("/api/sessions/export", params={"format": "jsonl", "q": "exported words"})
            assert r.status_code == 200
            return r.text.splitlines()

        lines = wait_for("the session in the export", found)
        (item,) = [json.loads(line) for line in lines]
        assert item["subject"] == "fay"
        assert [e["text"] for e in item["timeline"]] == ["SELECT 'exported words'"]
        got = c.get("/api/sessions/export", params={"format": "csv", "subject": "fay"})
        assert got.headers["content-type"].startswith("text/csv")
        assert "attachment" in got.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(got.text)))
        assert any(r["text"] == "SELECT 'exported words'" for r in rows)
    with admin_gateway.client(admin_gateway.token("gus", "it")) as c:
        theirs = c.get("/api/sessions/export", params={"q": "exported words"})
        assert theirs.status_code == 200 and theirs.text == ""  # not gus's session
