"""Refused connections through a real gateway: the native SQLSTATE, a message that says why
and what to do, a record in `lockgate audit refusals`, no secret in any of it, and a gateway
that keeps serving afterwards.

libpq does not expose the SQLSTATE of a FATAL startup error (psycopg's `e.sqlstate` is None
there), so each case reads the exact ErrorResponse with a hand-driven client (`Wire`) and
checks what a psycopg user sees as the message text.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from tests.conftest import free_port
from tests.integration.postgres.conftest import (
    LOCKGATE,
    RunningGateway,
    Wire,
    base_manifest,
    local_resource,
    start_gateway,
    wait_for_refusal,
)

pytestmark = pytest.mark.pg

MISSING_ROLE = "lockgate_no_such_role"


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, pg_server: tuple[str, int, str], it_database: str
) -> Iterator[RunningGateway]:
    host, port, user = pg_server
    closed = free_port()
    resources = [
        local_resource("itdb", it_database, host, port, user),
        local_resource("down", it_database, host, closed, user),
        local_resource("badcred", it_database, host, port, MISSING_ROLE),
    ]
    access = [{"name": "it-group", "resources": ["itdb", "down", "badcred"], "groups": ["it"]}]
    gateway = start_gateway(
        tmp_path_factory.mktemp("refusals"), base_manifest(free_port(), resources, access)
    )
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def good_token(gw: RunningGateway) -> str:
    return gw.token()


def _secrets(gw: RunningGateway, *extra: str) -> list[str]:
    """Strings no client-facing error may contain: upstream identity and location, tokens."""
    manifest: dict[str, Any] = yaml.safe_load(gw.manifest_path.read_text())
    out = [MISSING_ROLE, *extra]
    for r in manifest["resources"]:
        up = r["upstream"]
        out += [up["user"], up["database"], f":{up['port']}", f"port {up['port']}"]
    return [s for s in out if s]


def _check_fields(
    fields: dict[str, str] | None, code: str, words: list[str], secrets: list[str]
) -> None:
    assert fields is not None, "the connection was admitted"
    assert fields["C"] == code, fields
    assert fields["S"] == "FATAL", fields
    shown = " ".join(fields.get(k, "") for k in "MDH")
    for w in words:
        assert w.lower() in shown.lower(), (w, fields)
    assert fields.get("H"), f"no hint says what to do next: {fields}"
    for s in secrets:
        assert s not in shown, f"{s!r} leaked in {fields}"


def _check_recorded(
    gw: RunningGateway, wire: Wire, code: str, secrets: list[str]
) -> dict[str, Any]:
    row = wait_for_refusal(gw, wire.local_address)
    assert row["code"] == code, row
    assert row["protocol"] == "postgres"
    for s in secrets:
        assert s not in f"{row['reason']} {row['subject']}", (
            f"{s!r} leaked into the audit row {row}"
        )
    return row


def _psycopg_message(dsn: str) -> str:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(dsn, connect_timeout=10)
    return str(info.value)


def _still_serves(gw: RunningGateway, token: str) -> None:
    with psycopg.connect(gw.dsn(token), connect_timeout=10) as conn:
        assert conn.execute("select 'still here'").fetchone() == ("still here",)


def _refused(
    gw: RunningGateway, password: str, dbname: str = "itdb", tls: bool = True
) -> tuple[Wire, dict[str, str] | None]:
    wire = Wire(gw.port, tls=tls)
    try:
        fields = wire.login(password, user="alice", database=dbname)
        if fields is not None:
            assert wire.read() is None, "the gateway kept a refused connection open"
    finally:
        wire.close()
    return wire, fields


# ---------------------------------------------------------------------------------------


def test_garbage_token(gw: RunningGateway, good_token: str) -> None:
    token = "garbage-not-a-token"
    wire, fields = _refused(gw, token)
    secrets = _secrets(gw, token, good_token)
    _check_fields(fields, "28P01", ["token"], secrets)
    _check_recorded(gw, wire, "28P01", secrets)
    assert "token" in _psycopg_message(gw.dsn(token))
    _still_serves(gw, good_token)


def test_token_signed_by_another_gateway(
    gw: RunningGateway, good_token: str, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "lockgate.yaml").write_text(
        yaml.safe_dump(
            base_manifest(free_port(), [local_resource("itdb", "x", "127.0.0.1", 1, "u")])
        )
    )
    foreign = subprocess.run(
        [
            *LOCKGATE,
            "token",
            "issue",
            "--subject",
            "alice",
            "--group",
            "it",
            "-c",
            str(other / "lockgate.yaml"),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert foreign.count(".") == 2
    wire, fields = _refused(gw, foreign)
    secrets = _secrets(gw, foreign, good_token)
    _check_fields(fields, "28P01", ["signature"], secrets)
    _check_recorded(gw, wire, "28P01", secrets)
    assert "signature" in _psycopg_message(gw.dsn(foreign))
    _still_serves(gw, good_token)


def _sign_with_gateway_key(gw: RunningGateway, claims: dict[str, Any]) -> str:
    pem = (gw.dir / "state" / "token-signing-key.pem").read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    return jwt.encode(claims, key, algorithm="EdDSA")  # type: ignore[arg-type]


def test_expired_token(gw: RunningGateway, good_token: str) -> None:
    # Signed with this gateway's own key, expired two minutes ago (beyond any clock leeway).
    now = int(time.time())
    token = _sign_with_gateway_key(
        gw,
        {
            "iss": "lockgate",
            "aud": "lockgate",
            "sub": "alice",
            "iat": now - 300,
            "nbf": now - 300,
            "exp": now - 120,
            "jti": "expired-test",
            "groups": ["it"],
            "kind": "machine",
        },
    )
    wire, fields = _refused(gw, token)
    secrets = _secrets(gw, token, good_token)
    _check_fields(fields, "28P01", ["expired"], secrets)
    _check_recorded(gw, wire, "28P01", secrets)
    assert "expired" in _psycopg_message(gw.dsn(token))
    _still_serves(gw, good_token)


def test_token_issued_with_a_one_second_ttl_is_refused_once_it_expired(gw: RunningGateway) -> None:
    token = gw.token("alice", ("it",), "1s")
    time.sleep(2.5)
    _, fields = _refused(gw, token)
    _check_fields(fields, "28P01", ["expired"], _secrets(gw, token))


def test_revoked_token_is_refused_on_the_next_connection(
    gw: RunningGateway, good_token: str
) -> None:
    issued = json.loads(
        gw.cli("token", "issue", "--subject", "bob", "--group", "it", "--json").stdout
    )
    token, jti = issued["token"], issued["jti"]
    conn = psycopg.connect(gw.dsn(token, user="bob"), connect_timeout=10, autocommit=True)
    try:
        assert conn.execute("select 1").fetchone() == (1,)
        gw.cli("token", "revoke", jti, "--reason", "laptop lost")
        wire, fields = _refused(gw, token)
    finally:
        # The gateway also ends the live session within seconds (identity.sessions).
        conn.close()
    secrets = _secrets(gw, token, good_token)
    _check_fields(fields, "28P01", ["revoked"], secrets)
    _check_recorded(gw, wire, "28P01", secrets)
    assert "revoked" in _psycopg_message(gw.dsn(token, user="bob"))
    _still_serves(gw, good_token)


def test_unknown_resource(gw: RunningGateway, good_token: str) -> None:
    wire, fields = _refused(gw, good_token, dbname="nope")
    secrets = _secrets(gw, good_token)
    _check_fields(fields, "3D000", ["nope", "does not exist"], secrets)
    row = _check_recorded(gw, wire, "3D000", secrets)
    assert row["resource"] == "nope"
    assert "does not exist" in _psycopg_message(gw.dsn(good_token, dbname="nope"))
    _still_serves(gw, good_token)


def test_identity_without_an_access_rule(gw: RunningGateway, good_token: str) -> None:
    token = gw.token("mallory", ("outsiders",))
    wire, fields = _refused(gw, token)
    secrets = _secrets(gw, token, good_token)
    _check_fields(fields, "42501", ["mallory", "not allowed", "itdb", "access rule"], secrets)
    row = _check_recorded(gw, wire, "42501", secrets)
    assert row["subject"] == "mallory"
    assert "not allowed" in _psycopg_message(gw.dsn(token))
    _still_serves(gw, good_token)


def test_plaintext_client_on_a_tls_listener(gw: RunningGateway, good_token: str) -> None:
    wire = Wire(gw.port, tls=False)
    try:
        wire.startup(user="alice", database="itdb")
        msgs = wire.until_closed()
    finally:
        wire.close()
    assert [t for t, _ in msgs] == [b"E"], "refused before any password is asked for"
    from lockgate.protocols.postgres.messages import parse_error_fields

    fields = parse_error_fields(msgs[0][1])
    _check_fields(fields, "28000", ["requires TLS", "sslmode"], _secrets(gw, good_token))
    _check_recorded(gw, wire, "28000", _secrets(gw, good_token))
    assert "requires TLS" in _psycopg_message(gw.dsn(good_token, sslmode="disable"))
    _still_serves(gw, good_token)


def test_empty_password(gw: RunningGateway, good_token: str) -> None:
    wire, fields = _refused(gw, "")
    _check_fields(fields, "28P01", ["token"], _secrets(gw, good_token))
    _check_recorded(gw, wire, "28P01", _secrets(gw, good_token))
    # libpq itself refuses to send an empty password; either way no session opens.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(gw.dsn(""), connect_timeout=10)
    _still_serves(gw, good_token)


def _sessions(gw: RunningGateway) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        gw.cli("audit", "sessions", "--json", "--limit", "500").stdout
    )
    return rows


def _wait_session_error(gw: RunningGateway, resource: str, since: datetime) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    for _ in range(100):
        for s in _sessions(gw):
            started = datetime.fromisoformat(str(s["started_at"]))
            started = started if started.tzinfo else started.replace(tzinfo=UTC)
            if s["resource"] == resource and started >= since and not s["live"]:
                return s
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    raise AssertionError(f"no ended session recorded for {resource}")


def test_upstream_down(gw: RunningGateway, good_token: str) -> None:
    since = datetime.now(UTC).replace(microsecond=0)
    _, fields = _refused(gw, good_token, dbname="down")
    secrets = _secrets(gw, good_token)
    _check_fields(fields, "08006", ["down", "unreachable"], secrets)
    # Refused after admission (the session was recorded write-ahead): the audit shows it as a
    # session that ended in an error.
    session = _wait_session_error(gw, "down", since)
    assert session["end_reason"] == "error"
    assert "unreachable" in str(session["error"])
    assert "unreachable" in _psycopg_message(gw.dsn(good_token, dbname="down"))
    _still_serves(gw, good_token)


def test_upstream_rejects_the_stored_credential(gw: RunningGateway, good_token: str) -> None:
    since = datetime.now(UTC).replace(microsecond=0)
    _, fields = _refused(gw, good_token, dbname="badcred")
    secrets = _secrets(gw, good_token)
    _check_fields(fields, "08004", ["badcred", "rejected", "credential"], secrets)
    session = _wait_session_error(gw, "badcred", since)
    assert session["end_reason"] == "error"
    assert MISSING_ROLE not in json.dumps(session, default=str)
    message = _psycopg_message(gw.dsn(good_token, dbname="badcred"))
    assert "rejected" in message and MISSING_ROLE not in message
    _still_serves(gw, good_token)
