"""The admin API over real HTTPS against a real gateway, with real psycopg sessions behind it."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import psycopg
import pytest
from tests.integration.admin.conftest import AdminGateway, wait_for

pytestmark = pytest.mark.pg

TABLE = "admin_api_rows"


@pytest.fixture(scope="module")
def tokens(admin_gateway: AdminGateway) -> dict[str, str]:
    """One token per console role, plus two plain users."""
    t = admin_gateway.token
    return {
        "admin": t("ada", "secops"),
        "auditor": t("aud", "audit"),
        "reviewer": t("rev", "dba"),
        "alice": t("alice", "it"),
        "bob": t("bob", "it"),
    }


@pytest.fixture(scope="module")
def table(admin_gateway: AdminGateway, pg_server: tuple[str, int, str]) -> str:
    host, port, user = pg_server
    with psycopg.connect(
        host=host, port=port, user=user, dbname=admin_gateway.database, autocommit=True
    ) as c:
        c.execute(f"CREATE TABLE {TABLE} (id int)")
        c.execute(f"INSERT INTO {TABLE} SELECT generate_series(1, 10)")
    return TABLE


def _get(gw: AdminGateway, token: str, path: str, **params: Any) -> httpx.Response:
    with gw.client(token) as c:
        return c.get(path, params=params)


def _post(gw: AdminGateway, token: str, path: str, body: dict[str, Any]) -> httpx.Response:
    with gw.client(token) as c:
        return c.post(path, json=body)


class HeldStatement:
    """A psycopg session whose statement waits for review in a thread."""

    def __init__(self, gw: AdminGateway, token: str, sql: str) -> None:
        self.conn = psycopg.connect(gw.dsn(token), autocommit=True)
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(sql,), daemon=True)
        self.thread.start()

    def _run(self, sql: str) -> None:
        try:
            cur = self.conn.execute(sql)
            self.result = cur.rowcount
        except BaseException as exc:
            self.error = exc

    def done(self, timeout: float = 30) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the held statement never finished"

    def close(self) -> None:
        self.conn.close()


def _pending(gw: AdminGateway, token: str, statement: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        items = _get(gw, token, "/api/reviews", status="pending").json()["items"]
        return next((r for r in items if r["statement"] == statement), None)

    found: dict[str, Any] = wait_for(f"a pending review of {statement!r}", probe)
    return found


# ------------------------------------------------------------------ authentication


def test_no_token_and_bad_tokens_get_401(admin_gateway: AdminGateway) -> None:
    with admin_gateway.client() as c:
        assert c.get("/api/me").status_code == 401
        bad = c.get("/api/me", headers={"Authorization": "Bearer not-a-jwt"})
        assert bad.status_code == 401 and "JWT" in bad.json()["detail"]
        assert c.get("/api/me", headers={"Authorization": "Basic eDp5"}).status_code == 401
        assert c.post("/api/auth/token", json={"token": "a.b.c"}).status_code == 401
        assert "lockgate_session" not in c.cookies


def test_revoked_token_gets_401(admin_gateway: AdminGateway) -> None:
    token = admin_gateway.token("short-lived", "secops")
    assert _get(admin_gateway, token, "/api/me").status_code == 200
    with admin_gateway.client() as c:
        signed_in = c.post("/api/auth/token", json={"token": token})
        assert signed_in.status_code == 200
        assert c.get("/api/me").status_code == 200
        jti = admin_gateway.gw.cli("token", "list", "--json").stdout
        import json

        ids = [t["jti"] for t in json.loads(jti) if t["subject"] == "short-lived"]
        admin_gateway.gw.cli("token", "revoke", ids[0])
        assert c.get("/api/me").status_code == 401  # the cookie session ends with its token
    assert _get(admin_gateway, token, "/api/me").status_code == 401


def test_me_names_roles(admin_gateway: AdminGateway, tokens: dict[str, str]) -> None:
    expected = {
        "admin": ["admin"],
        "auditor": ["auditor"],
        "reviewer": ["reviewer"],
        "alice": [],
    }
    for who, roles in expected.items():
        me = _get(admin_gateway, tokens[who], "/api/me").json()
        assert me["roles"] == roles, who
        assert me["issuer"] == "lockgate"


def test_auth_config_needs_no_sign_in(admin_gateway: AdminGateway) -> None:
    with admin_gateway.client() as c:
        got = c.get("/api/auth/config").json()
    assert got == {"oidc": True, "provider": admin_gateway.provider}


def test_cookie_session_needs_csrf_for_changes(
    admin_gateway: AdminGateway, tokens: dict[str, str]
) -> None:
    with admin_gateway.client() as c:
        signed_in = c.post("/api/auth/token", json={"token": tokens["reviewer"]})
        assert signed_in.status_code == 200 and signed_in.json()["subject"] == "rev"
        cookies = signed_in.headers.get_list("set-cookie")
        session = next(h for h in cookies if h.startswith("lockgate_session="))
        assert "HttpOnly" in session and "Secure" in session and "SameSite=lax" in session
        csrf = c.cookies["lockgate_csrf"]
        assert c.get("/api/me").json()["subject"] == "rev"
        body = {"resource": "jitdb", "duration": "30m", "reason": "INC-1"}
        missing = c.post("/api/requests", json=body)
        assert missing.status_code == 403 and "X-CSRF-Token" in missing.json()["detail"]
        wrong = c.post("/api/requests", json=body, headers={"X-CSRF-Token": "nope"})
        assert wrong.status_code == 403
        made = c.post("/api/requests", json=body, headers={"X-CSRF-Token": csrf})
        assert made.status_code == 201, made.text
        assert made.json()["kind"] == "grant" and made.json()["can_decide"] is False
        # Every state-changing endpoint checks it before anything else.
        for path in (
            "/api/reviews/x/approve",
            "/api/reviews/x/deny",
            "/api/sessions/x/end",
            "/api/grants/x/revoke",
        ):
            refused = c.post(path, json={"reason": "r"})
            assert refused.status_code == 403 and "CSRF" in refused.json()["detail"], path
            with_csrf = c.post(path, json={"reason": "r"}, headers={"X-CSRF-Token": csrf})
            # Past the CSRF check: refused for the role or the missing record instead.
            assert with_csrf.status_code in (403, 404), path
            assert "CSRF" not in with_csrf.json()["detail"], path
        assert c.post("/api/auth/logout").status_code == 403
        assert c.post("/api/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
        c.cookies.set("lockgate_session", session.split(";")[0].split("=", 1)[1])
        assert c.get("/api/me").status_code == 401  # the server forgot the session


# ------------------------------------------------------------------ roles and endpoints


def test_reads_by_role(admin_gateway: AdminGateway, tokens: dict[str, str]) -> None:
    everyone = ["/api/me", "/api/reviews", "/api/sessions", "/api/grants", "/api/events"]
    readers_only = ["/api/config", "/api/tokens"]
    for who, token in tokens.items():
        for path in everyone:
            if path == "/api/events":
                with admin_gateway.client(token) as c, c.stream("GET", path) as r:
                    assert r.status_code == 200, (who, path)
                continue
            assert _get(admin_gateway, token, path).status_code == 200, (who, path)
        for path in readers_only:
            status = _get(admin_gateway, token, path).status_code
            assert status == (200 if who in ("admin", "auditor") else 403), (who, path)


def test_config_shows_no_secrets(admin_gateway: AdminGateway, tokens: dict[str, str]) -> None:
    got = _get(admin_gateway, tokens["auditor"], "/api/config")
    assert got.status_code == 200
    data = got.json()
    assert [r["name"] for r in data["resources"]] == ["itdb", "jitdb"]
    assert data["guardrails"]["rules"][0]["name"] == "deletes-need-review"
    assert "mock-accepts-any" not in got.text
    tokens_list = _get(admin_gateway, tokens["admin"], "/api/tokens").json()["items"]
    assert any(t["subject"] == "alice" for t in tokens_list)
    assert all(tok not in got.text for tok in tokens.values())


def test_held_statement_approved_through_the_api_runs(
    admin_gateway: AdminGateway, tokens: dict[str, str], table: str
) -> None:
    sql = f"DELETE FROM {table} WHERE id = 1"
    held = HeldStatement(admin_gateway, tokens["alice"], sql)
    try:
        review = _pending(admin_gateway, tokens["reviewer"], sql)
        assert review["kind"] == "statement" and review["rule"] == "deletes-need-review"
        assert review["requester"]["subject"] == "alice" and review["can_decide"] is True
        rid = review["id"]
        # Who may not decide: the auditor (reads all, decides nothing), another user (cannot
        # even see it), the requester herself; an empty reason is refused.
        assert _get(admin_gateway, tokens["auditor"], f"/api/reviews/{rid}").status_code == 200
        assert _get(admin_gateway, tokens["bob"], f"/api/reviews/{rid}").status_code == 404
        ok = {"reason": "fine"}
        no = _post(admin_gateway, tokens["auditor"], f"/api/reviews/{rid}/approve", ok)
        assert no.status_code == 403
        assert (
            _post(admin_gateway, tokens["admin"], f"/api/reviews/{rid}/approve", ok).status_code
            == 403
        )
        assert (
            _post(admin_gateway, tokens["bob"], f"/api/reviews/{rid}/approve", ok).status_code
            == 404
        )
        mine = _post(admin_gateway, tokens["alice"], f"/api/reviews/{rid}/approve", ok)
        assert mine.status_code == 403
        empty = _post(
            admin_gateway, tokens["reviewer"], f"/api/reviews/{rid}/approve", {"reason": " "}
        )
        assert empty.status_code == 422
        assert held.thread.is_alive()  # still waiting
        done = _post(admin_gateway, tokens["reviewer"], f"/api/reviews/{rid}/approve", ok)
        assert done.status_code == 200, done.text
        assert done.json()["status"] == "approved"
        assert done.json()["decisions"][0]["reviewer"] == "rev"
        held.done()
        assert held.error is None and held.result == 1
        again = _post(admin_gateway, tokens["reviewer"], f"/api/reviews/{rid}/deny", ok)
        assert again.status_code == 409
    finally:
        held.close()
    rows = _get(admin_gateway, tokens["alice"], "/api/reviews", status="decided").json()["items"]
    assert any(r["id"] == rid and r["status"] == "approved" for r in rows)


def test_held_statement_denied_through_the_api_errors(
    admin_gateway: AdminGateway, tokens: dict[str, str], table: str
) -> None:
    sql = f"DELETE FROM {table} WHERE id = 2"
    held = HeldStatement(admin_gateway, tokens["alice"], sql)
    try:
        rid = _pending(admin_gateway, tokens["reviewer"], sql)["id"]
        got = _post(
            admin_gateway, tokens["reviewer"], f"/api/reviews/{rid}/deny", {"reason": "no way"}
        )
        assert got.status_code == 200 and got.json()["status"] == "denied"
        held.done()
        assert isinstance(held.error, psycopg.Error) and "no way" in str(held.error)
        assert held.conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on
    finally:
        held.close()


def test_users_see_only_their_own_sessions(
    admin_gateway: AdminGateway, tokens: dict[str, str]
) -> None:
    with psycopg.connect(admin_gateway.dsn(tokens["alice"]), autocommit=True) as conn:
        conn.execute("SELECT 'alice was here'")

    def alice_session() -> dict[str, Any] | None:
        items = _get(admin_gateway, tokens["admin"], "/api/sessions", q="alice was here").json()
        return items["items"][0] if items["items"] else None

    session = wait_for("alice's session in the audit", alice_session)
    sid = session["id"]
    assert session["subject"] == "alice" and session["protocol"] == "postgres"
    assert _get(admin_gateway, tokens["alice"], f"/api/sessions/{sid}").status_code == 200
    assert _get(admin_gateway, tokens["auditor"], f"/api/sessions/{sid}").status_code == 200
    assert _get(admin_gateway, tokens["bob"], f"/api/sessions/{sid}").status_code == 404
    assert _get(admin_gateway, tokens["reviewer"], f"/api/sessions/{sid}").status_code == 404
    bobs = _get(admin_gateway, tokens["bob"], "/api/sessions").json()["items"]
    assert all(s["subject"] == "bob" for s in bobs)
    assert (
        _get(admin_gateway, tokens["bob"], "/api/sessions", subject="alice").json()["items"] == []
    )
    detail = _get(admin_gateway, tokens["alice"], f"/api/sessions/{sid}").json()
    assert [e["text"] for e in detail["timeline"]] == ["SELECT 'alice was here'"]
    assert detail["timeline"][0]["decision"] == "allow" and detail["timeline"][0]["rows"] == 1
    assert _get(admin_gateway, tokens["alice"], f"/api/sessions/{sid}/recording").status_code == 404


def test_only_admins_end_sessions_and_the_client_gets_fatal(
    admin_gateway: AdminGateway, tokens: dict[str, str]
) -> None:
    conn = psycopg.connect(admin_gateway.dsn(tokens["bob"]), autocommit=True)
    try:
        conn.execute("SELECT 'bob is live'")

        def live() -> dict[str, Any] | None:
            items = _get(
                admin_gateway, tokens["auditor"], "/api/sessions", live="true", subject="bob"
            ).json()["items"]
            return items[0] if items else None

        sid = wait_for("bob's live session", live)["id"]
        body = {"reason": "INC-7 containment"}
        for who in ("auditor", "reviewer", "bob"):
            got = _post(admin_gateway, tokens[who], f"/api/sessions/{sid}/end", body)
            assert got.status_code in (403, 404), who
        ended = _post(admin_gateway, tokens["admin"], f"/api/sessions/{sid}/end", body)
        assert ended.status_code == 202, ended.text
        assert (
            _post(admin_gateway, tokens["admin"], f"/api/sessions/{sid}/end", body).status_code
            == 409
        )

        def refused() -> str | None:
            try:
                conn.execute("SELECT 1")
            except psycopg.OperationalError as exc:
                return str(exc)
            return None

        message = wait_for("the session to end", refused, attempts=100, pause=0.2)
        assert "ended by administrator ada" in message and "INC-7 containment" in message
    finally:
        conn.close()

    def recorded() -> dict[str, Any] | None:
        got = _get(admin_gateway, tokens["bob"], f"/api/sessions/{sid}").json()["session"]
        return got if got["end_reason"] == "ended_by_admin" else None

    session = wait_for("the end in the audit", recorded)
    assert session["live"] is False


def test_openapi_document_lists_the_contract(admin_gateway: AdminGateway) -> None:
    with admin_gateway.client() as c:
        doc = c.get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in (
        "/api/me",
        "/api/reviews",
        "/api/reviews/{request_id}/approve",
        "/api/sessions",
        "/api/sessions/{session_id}",
        "/api/sessions/{session_id}/end",
        "/api/config",
        "/api/tokens",
        "/api/events",
        "/api/grants",
        "/api/requests",
    ):
        assert path in doc["paths"], path
