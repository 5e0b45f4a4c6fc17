"""The console end to end: OIDC sign-in, approving a held statement, finding its session.

A real gateway (`lockgate serve`) in front of the real PostgreSQL server, with the admin
listener on, signing people in through `oidc-provider-mock` on loopback. The statement is
sent by the real `psql`, which waits inside its session while a reviewer approves it in
the browser; the test then reads psql's own output.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.browser.conftest import assert_accessible, screenshot, wait_http
from tests.conftest import free_port
from tests.identity_provider import mock_provider
from tests.integration.postgres.conftest import (
    RunningGateway,
    base_manifest,
    it_database,  # noqa: F401  (a fixture: one fresh database for this module)
    local_resource,
    start_gateway,
)

pytestmark = [pytest.mark.browser, pytest.mark.pg]

REVIEWER = "rita@example.com"


@dataclass
class Console:
    gateway: RunningGateway
    url: str  # https://127.0.0.1:PORT of the admin listener
    provider: str


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    # A reviewer (sre) who is also an auditor (audit): the one who approves a statement can
    # then find its session among everyone's (a plain reviewer sees only their own).
    with mock_provider({REVIEWER: {"groups": ["sre", "audit"], "email": REVIEWER}}) as url:
        yield url


@pytest.fixture(scope="module")
def console(
    tmp_path_factory: pytest.TempPathFactory,
    pg_server: tuple[str, int, str],
    it_database: str,  # noqa: F811
    provider: str,
) -> Iterator[Console]:
    host, port, user = pg_server
    with psycopg.connect(host=host, port=port, user=user, dbname=it_database) as c:
        c.execute("CREATE TABLE payments (id int PRIMARY KEY, amount numeric, note text)")
        c.execute("INSERT INTO payments VALUES (1, 10.50, 'first'), (2, 99.00, 'second')")
    directory = tmp_path_factory.mktemp("console")
    secret = directory / "console-client-secret"
    secret.write_text("unused-by-the-mock\n")
    admin_port = free_port()
    manifest = base_manifest(
        free_port(),
        [
            local_resource("itdb", it_database, host, port, user),
            local_resource("jitdb", it_database, host, port, user),
        ],
        access=[
            {"name": "it-group", "resources": ["itdb"], "groups": ["it"]},
            {"name": "jit", "resources": ["jitdb"], "groups": ["sre"], "requires_grant": True},
        ],
    )
    manifest["identity"] = {"oidc": [{"issuer": provider, "audiences": ["lockgate"]}]}
    manifest["guardrails"] = {
        "rules": [{"name": "hold-payments", "match": {"writes": ["payments"]}, "action": "review"}]
    }
    manifest["approvals"] = {
        "poll_interval": 0.2,
        "rules": [
            {
                "name": "payments",
                "requests": ["statement"],
                "guardrails": ["hold-payments"],
                "reviewers": ["sre"],
            },
            {"name": "jit", "requests": ["grant"], "resources": ["jitdb"], "reviewers": ["dba"]},
        ],
    }
    manifest["admin"] = {
        "listen": f"127.0.0.1:{admin_port}",
        "oidc": {
            "client_id": "lockgate",
            "client_secret": f"file:{secret}",
            "display_name": "Loopback SSO",
        },
        "roles": {"admin": ["secops"], "auditor": ["audit"], "reviewer": ["sre"]},
        "events_interval": 0.2,
    }
    gw = start_gateway(directory, manifest, timeout=90)  # it also imports the admin web stack
    url = f"https://127.0.0.1:{admin_port}"
    try:
        wait_http(f"{url}/api/auth/config")
        yield Console(gw, url, provider)
    finally:
        gw.stop()


def oidc_sign_in(page: Any, console: Console, sub: str) -> None:
    """Sign in as a person does: the console's button, the provider's form, back again."""
    page.goto(f"{console.url}/reviews")
    page.get_by_role("link", name="Sign in with Loopback SSO").click()
    page.wait_for_url(f"{console.provider}/**")
    page.locator("input[name=sub]").fill(sub)
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(f"{console.url}/**")
    page.get_by_test_id("whoami").wait_for()


def ensure_signed_in(page: Any, console: Console) -> None:
    """Open the console; sign in as the reviewer unless the browser's cookie still holds."""
    page.goto(f"{console.url}/")
    page.locator("[data-testid=whoami], a:has-text('Sign in with Loopback SSO')").first.wait_for()
    if page.get_by_test_id("whoami").count() == 0:
        oidc_sign_in(page, console, REVIEWER)


@pytest.fixture
def reviewer_page(page: Any, console: Console) -> Any:
    """A tab signed in as the reviewer (the browser keeps the session cookie)."""
    ensure_signed_in(page, console)
    return page


def test_sign_in_through_the_oidc_provider(page: Any, console: Console) -> None:
    page.context.clear_cookies()
    page.goto(f"{console.url}/reviews")
    page.get_by_role("heading", name="Sign in to Lockgate").wait_for()
    assert_accessible(page, "the sign-in page")
    screenshot(page, "console-sign-in")

    oidc_sign_in(page, console, REVIEWER)

    assert page.get_by_test_id("whoami").inner_text() == REVIEWER
    assert "reviewer" in page.locator(".whoami").inner_text()
    # Back where the sign-in started, with the session cookie HttpOnly and the CSRF one not.
    assert page.url == f"{console.url}/reviews"
    cookies = {c["name"]: c for c in page.context.cookies(console.url)}
    assert cookies["lockgate_session"]["httpOnly"] and cookies["lockgate_session"]["secure"]
    assert not cookies["lockgate_csrf"]["httpOnly"]
    nav = page.get_by_role("navigation", name="Main")
    assert nav.get_by_role("link", name="Review queue").is_visible()
    assert nav.get_by_role("link", name="Configuration").is_visible()  # auditors read it
    page.get_by_role("heading", name="Review queue").wait_for()
    assert_accessible(page, "the review queue")
    screenshot(page, "console-signed-in")

    # When the session goes (here: the cookies), the next page the person opens asks them to
    # sign in again instead of showing errors.
    page.context.clear_cookies()
    nav.get_by_role("link", name="Sessions").click()
    page.get_by_role("heading", name="Sign in to Lockgate").wait_for()


def test_keyboard_reaches_the_content_and_focus_is_visible(
    reviewer_page: Any, console: Console
) -> None:
    page = reviewer_page
    page.goto(f"{console.url}/sessions")
    page.get_by_role("heading", name="Sessions").wait_for()
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent.trim()")
    assert focused == "Skip to content"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none"), "the focused control must show where focus is"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    # The first control of the page comes next: the statement-text search box.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "f-q"
    screenshot(page, "console-keyboard-focus")


@dataclass
class Approved:
    marker: str
    psql: subprocess.CompletedProcess[str]
    review_screenshot: Path


@pytest.fixture(scope="module")
def approved(browser: Any, console: Console) -> Approved:
    """psql sends a held UPDATE; the reviewer approves it in the console while psql waits."""
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed (scripts/setup installs postgresql-client)")
    marker = f"console-e2e-{secrets.token_hex(4)}"
    token = console.gateway.token("alice", ("it",))
    statement = f"UPDATE payments SET note = '{marker}' WHERE id = 2 RETURNING id, note"
    page = browser.new_page()
    try:
        ensure_signed_in(page, console)
        page.goto(f"{console.url}/reviews")
        page.get_by_text("Live: new requests appear here").wait_for()
        client = subprocess.Popen(
            [
                psql,
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                console.gateway.dsn(token),
                "-c",
                statement,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # The request arrives on the open page through server-sent events: no reload.
            card = page.locator("article.review", has_text=marker)
            card.wait_for(timeout=30_000)
            assert client.poll() is None, "psql must still be waiting for the review"
            assert "alice" in card.inner_text() and "hold-payments" in card.inner_text()
            # The statement is shown exactly, highlighted as SQL.
            assert card.locator("pre.sql").inner_text().strip() == statement
            assert card.locator("pre.sql .hljs-keyword").count() >= 3
            waited = card.get_by_test_id("waiting").inner_text()
            page.wait_for_function(
                "([el, before]) => el.innerText !== before",
                arg=[card.get_by_test_id("waiting").element_handle(), waited],
            )  # the waiting time ticks
            assert_accessible(page, "the review queue with a held statement")
            shot = screenshot(page, "console-review-pending")
            card.get_by_label("Reason for your decision").fill("checked with alice: ticket OPS-7")
            card.get_by_role("button", name="Approve").click()
            out, err = client.communicate(timeout=60)
        finally:
            if client.poll() is None:
                client.kill()
                client.communicate()
        page.locator("table.data tr", has_text=marker).get_by_text("approved").wait_for()
        screenshot(page, "console-review-approved")
    finally:
        page.close()
    return Approved(
        marker, subprocess.CompletedProcess(client.args, client.returncode, out, err), shot
    )


def test_approve_a_held_statement_while_psql_waits(
    approved: Approved,
    console: Console,
    pg_server: tuple[str, int, str],
    it_database: str,  # noqa: F811
) -> None:
    assert approved.psql.returncode == 0, approved.psql.stderr
    # psql printed the statement's own result once the reviewer approved it.
    assert approved.psql.stdout.strip() == f"2|{approved.marker}"
    host, port, user = pg_server
    with psycopg.connect(host=host, port=port, user=user, dbname=it_database) as c:
        assert c.execute("SELECT note FROM payments WHERE id = 2").fetchone() == (approved.marker,)
    assert approved.review_screenshot.exists()


def test_find_the_session_by_its_statement_text(
    reviewer_page: Any, approved: Approved, console: Console
) -> None:
    page = reviewer_page
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Sessions").click()
    page.get_by_role("heading", name="Sessions").wait_for()
    page.get_by_label("Statement text").fill(approved.marker)
    page.get_by_role("button", name="Search").click()
    page.wait_for_url(re.compile(r".*/sessions\?q=console-e2e-"))
    rows = page.locator("table.sessions tbody tr")
    rows.first.wait_for()
    assert rows.count() == 1, "the search matches exactly the session that ran the statement"
    assert "alice" in rows.first.inner_text() and "itdb" in rows.first.inner_text()
    assert_accessible(page, "the sessions list")
    screenshot(page, "console-sessions-search")

    rows.first.get_by_role("link").click()
    page.get_by_role("heading", name="alice on itdb").wait_for()
    entry = page.get_by_test_id("timeline-entry").filter(has_text=approved.marker)
    entry.wait_for()
    text = entry.inner_text()
    assert "review" in text or "allow" in text  # held, then approved
    assert "hold-payments" in text
    assert entry.locator("dt:text-is('Rows') + dd").inner_text() == "1"
    assert "approved by rita@example.com" in text  # the review's outcome, in the record
    assert_accessible(page, "the session timeline")
    screenshot(page, "console-session-timeline")


def test_request_access_from_my_requests(reviewer_page: Any, console: Console) -> None:
    page = reviewer_page
    page.get_by_role("navigation", name="Main").get_by_role("link", name="My requests").click()
    page.get_by_role("heading", name="My requests").wait_for()
    page.get_by_label("Resource").fill("jitdb")
    page.get_by_label("For how long").select_option("30m")
    page.get_by_label("Reason").fill("incident INC-42: look at the stuck payments")
    page.get_by_role("button", name="Send request").click()
    page.get_by_role("status").filter(has_text="Request sent").wait_for()
    row = page.locator("table.data tr", has_text="INC-42")
    row.wait_for()
    assert "jitdb" in row.inner_text() and "pending" in row.inner_text()
    assert "30m" in row.inner_text()
    assert_accessible(page, "my requests")
    screenshot(page, "console-my-requests")

    # In the queue it waits for the dba group: this reviewer sees it but may not decide it.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Review queue").click()
    card = page.locator("article.review", has_text="INC-42")
    card.wait_for()
    assert "Access request" in card.inner_text() and "dba" in card.inner_text()
    assert card.get_by_role("button", name="Approve").count() == 0


def test_configuration_shows_whether_each_token_is_valid_or_revoked(
    reviewer_page: Any, console: Console
) -> None:
    gw = console.gateway
    gw.token("tess-valid", ("it",))
    gw.token("tess-revoked", ("it",))
    issued = {t["subject"]: t["jti"] for t in json.loads(gw.cli("token", "list", "--json").stdout)}
    gw.cli("token", "revoke", issued["tess-revoked"], "--reason", "left the team")
    page = reviewer_page
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Configuration").click()
    tokens = page.get_by_role("table", name="Gateway tokens")
    valid = tokens.locator("tr", has_text=issued["tess-valid"])
    revoked = tokens.locator("tr", has_text=issued["tess-revoked"])
    valid.wait_for()
    assert valid.locator(".badge").inner_text() == "valid"
    assert revoked.locator(".badge").inner_text().startswith("revoked ")
