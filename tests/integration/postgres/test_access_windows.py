"""Time windows through the real gateway: access rules (`when`) and execution windows.

Windows are built around the real clock: "tomorrow" is always closed today, and a window
of the current minute closes during the test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
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
)

from lockgate.config.windows import DAYS

pytestmark = pytest.mark.pg

TOMORROW = {"days": [DAYS[(datetime.now(UTC).weekday() + 1) % 7]], "timezone": "UTC"}


def _manifest(port: int, database: str, pg: tuple[str, int, str]) -> dict[str, Any]:
    night_shift = {
        "name": "night-shift",
        "resources": ["itdb"],
        "groups": ["night"],
        "when": TOMORROW,
    }
    manifest = jit_manifest(port, database, pg, access_first=(night_shift,))
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
                "window": TOMORROW,
            },
            {
                "name": "jit",
                "requests": ["grant"],
                "resources": ["jitdb"],
                "reviewers": ["sre"],
                "window": TOMORROW,
            },
        ],
    }
    return manifest


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, pg_server: tuple[str, int, str], it_database: str
) -> Iterator[RunningGateway]:
    run_direct(pg_server, it_database, "CREATE TABLE payments (id int, note text)")
    gateway = start_gateway(
        tmp_path_factory.mktemp("windows"), _manifest(free_port(), it_database, pg_server)
    )
    yield gateway
    gateway.stop()


def _login(gw: RunningGateway, token: str, database: str = "itdb") -> dict[str, str] | None:
    wire = Wire(gw.port, tls=True)
    try:
        return wire.login(token, user="x", database=database)
    finally:
        wire.close()


def test_outside_its_window_an_access_rule_refuses_and_names_the_window(
    gw: RunningGateway,
) -> None:
    err = _login(gw, gw.token("nina", ("night",)))
    assert err is not None and err["C"] == "42501"
    assert "only inside its time window" in err["M"] and "night-shift" in err["M"]
    assert TOMORROW["days"][0] in err["H"] and "(UTC)" in err["H"]
    assert _login(gw, gw.token("ivan", ("it",))) is None


def test_a_held_statement_outside_the_execution_window_is_refused_at_once(
    gw: RunningGateway, pg_server: tuple[str, int, str], it_database: str
) -> None:
    alice = gw.token("alice", ("it",))
    with psycopg.connect(gw.dsn(alice), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("INSERT INTO payments VALUES (1, 'outside')")
        assert caught.value.sqlstate == "42501"
        assert "execution window" in str(caught.value) and "payments" in str(caught.value)
        assert conn.execute("SELECT 1").fetchone() == (1,)
    held = json.loads(gw.cli("reviews", "list", "--all", "--json").stdout)
    assert not any("outside" in (r["statement"] or "") for r in held)
    host, port, user = pg_server
    with psycopg.connect(host=host, port=port, user=user, dbname=it_database) as direct:
        assert direct.execute("SELECT count(*) FROM payments").fetchone() == (0,)


def test_an_approved_grant_is_usable_only_inside_its_window(gw: RunningGateway) -> None:
    alice = gw.token("alice", ("it",))
    rid = gw.cli(
        "request", "jitdb", "--for", "1h", "--reason", "INC-7", "--token", alice
    ).stdout.strip()
    gw.cli("reviews", "approve", rid, "--reason", "go", "--as", "root", "--group", "sre")
    err = _login(gw, alice, "jitdb")
    assert err is not None and err["C"] == "42501"
    assert "execution window of approval rule 'jit'" in err["M"]
    assert "connect again inside the window" in err["H"]


def _minute_window(now: datetime) -> dict[str, Any]:
    """A window open from the minute of `now` to the next minute."""
    end = now + timedelta(minutes=1)
    return {"hours": f"{now:%H:%M}-{end:%H:%M}", "timezone": "UTC"}


def test_a_live_session_ends_when_its_window_closes(
    gateway_factory: Callable[..., RunningGateway],
    pg_server: tuple[str, int, str],
    it_database: str,
) -> None:
    # The window is the current minute, however little of it is left (no waiting for a
    # fresh minute): when it closed before the session was up, the next minute is tried.
    for attempt in range(3):
        opened = datetime.now(UTC).replace(second=0, microsecond=0)
        manifest = _manifest(free_port(), it_database, pg_server)
        brief = {"name": "brief", "resources": ["itdb"], "groups": ["brief"]}
        manifest["access"].insert(0, {**brief, "when": _minute_window(opened)})
        gw2 = gateway_factory(manifest, f"minute-{attempt}")
        token = gw2.token("bea", ("brief",))
        conn: psycopg.Connection[Any] | None = None
        try:
            conn = psycopg.connect(gw2.dsn(token), autocommit=True)
            assert conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.Error:
            if conn is not None:
                conn.close()
            if datetime.now(UTC) < opened + timedelta(minutes=1):
                raise  # refused inside its window: a real failure
            gw2.stop()
            continue
        break
    else:
        raise AssertionError("no session started inside its minute in three tries")
    with conn:
        ended: psycopg.Error | None = None
        for _ in range(400):  # bounded: the window closes within a minute
            try:
                conn.execute("SELECT 1")
            except psycopg.Error as exc:
                ended = exc
                break
            time.sleep(0.25)
    assert ended is not None
    assert "time window of access rule 'brief' closed" in str(ended)
    err = _login(gw2, token)
    assert err is not None and err["C"] == "42501"
