"""OIDC tokens as the PostgreSQL password through a real gateway (`lockgate serve`).

Issuers on loopback: the tests' own (`TestIssuer`: discovery + JWKS over HTTP, any key type,
rotation, forgeries) acting as a company IdP and as GitHub Actions, and the real
`oidc-provider-mock` for ID tokens from an authorization-code flow. Live sessions are ended
by revocation, token expiry and the maximum session length.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from tests.conftest import free_port
from tests.identity_provider import TestIssuer, mock_id_token, mock_provider
from tests.integration.postgres.conftest import (
    RunningGateway,
    Wire,
    base_manifest,
    local_resource,
    start_gateway,
    wait_for_refusal,
)

pytestmark = pytest.mark.pg

AUDIENCE = "lockgate-it"
GITHUB_AUDIENCE = "https://github.com/acme"


@pytest.fixture(scope="module")
def idp() -> Iterator[TestIssuer]:
    issuer = TestIssuer()
    issuer.add_key("RS256", kid="corp-1")
    yield issuer
    issuer.close()


@pytest.fixture(scope="module")
def github() -> Iterator[TestIssuer]:
    issuer = TestIssuer()
    issuer.add_key("ES256", kid="gh-1")
    yield issuer
    issuer.close()


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    with mock_provider({"alice@example.com": {"groups": ["it"]}}) as url:
        yield url


def _oidc_manifest(
    port: int,
    resources: list[dict[str, Any]],
    idp: TestIssuer,
    github: TestIssuer,
    provider: str | None,
    sessions: dict[str, str],
) -> dict[str, Any]:
    manifest = base_manifest(
        port,
        resources,
        [
            {"name": "it-group", "resources": ["itdb"], "groups": ["it"]},
            {"name": "ci-deployers", "resources": ["itdb"], "groups": ["deployers"]},
        ],
    )
    issuers: list[dict[str, Any]] = [
        {
            "issuer": idp.url,
            "audiences": [AUDIENCE],
            "clock_skew": "0s",
            "jwks_min_refresh": "1s",
        },
        {
            "issuer": github.url,
            "audiences": [GITHUB_AUDIENCE],
            "kind": "machine",
            "algorithms": ["ES256"],
            "subject_prefix": "gh:",
            "require_rule_match": True,
            "claim_rules": [
                {
                    "name": "api-main",
                    "match": {"repository": "acme/api", "ref": "refs/heads/main"},
                    "groups": ["deployers"],
                }
            ],
        },
    ]
    if provider is not None:
        issuers.append({"issuer": provider, "audiences": ["lockgate"]})
    manifest["identity"] = {"oidc": issuers, "sessions": sessions}
    return manifest


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory,
    pg_server: tuple[str, int, str],
    it_database: str,
    idp: TestIssuer,
    github: TestIssuer,
    provider: str,
) -> Iterator[RunningGateway]:
    host, port, user = pg_server
    manifest = _oidc_manifest(
        free_port(),
        [local_resource("itdb", it_database, host, port, user)],
        idp,
        github,
        provider,
        {"on_token_expiry": "end", "check_interval": "1s"},
    )
    gateway = start_gateway(tmp_path_factory.mktemp("oidc"), manifest)
    yield gateway
    gateway.stop()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _ended_session(gw: RunningGateway, subject: str) -> dict[str, Any]:
    """The newest session of `subject` once its end is recorded (the audit is ingested async)."""
    rows: list[dict[str, Any]] = []
    for _ in range(150):
        rows = gw.sessions(subject)
        if rows and rows[0].get("end_reason"):
            return rows[0]
        time.sleep(0.2)
    raise AssertionError(f"no ended session of {subject}: {rows[:2]!r}")


def _until_ended(conn: psycopg.Connection[Any], *, limit: float = 30.0) -> str:
    """Run `SELECT 1` until the gateway ends the session; the error text the client saw."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            conn.execute("SELECT 1").fetchone()
        except psycopg.OperationalError as exc:
            return str(exc)
        time.sleep(0.2)
    raise AssertionError(f"the session was not ended within {limit} s")


def test_psycopg_connects_with_an_oidc_token(gw: RunningGateway, idp: TestIssuer) -> None:
    token = idp.token(sub="olivia", aud=AUDIENCE, groups=["it"])
    with psycopg.connect(gw.dsn(token, user="olivia")) as conn:
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
    [row] = gw.recorded_sessions("olivia")[:1]
    assert row["issuer"] == idp.url
    assert row["principal_kind"] == "human"


def test_a_ci_job_token_as_pgpassword_with_psql(gw: RunningGateway, github: TestIssuer) -> None:
    def psql(**claims: Any) -> subprocess.CompletedProcess[str]:
        token = github.token(aud=GITHUB_AUDIENCE, **claims)
        env = {**os.environ, "PGPASSWORD": token, "PGSSLMODE": "require"}
        return subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(gw.port),
                "-U",
                "ci",
                "-d",
                "itdb",
                "-XAtc",
                "SELECT 'deployed'",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    ok = psql(sub="repo:acme/api:ref:refs/heads/main", repository="acme/api", ref="refs/heads/main")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "deployed"
    assert (
        gw.recorded_sessions("gh:repo:acme/api:ref:refs/heads/main")[0]["principal_kind"]
        == "machine"
    )

    fork = psql(
        sub="repo:evil/api:ref:refs/heads/main", repository="evil/api", ref="refs/heads/main"
    )
    assert fork.returncode != 0
    assert "no claim rule of this gateway admits the token" in fork.stderr


def test_a_real_id_token_from_oidc_provider_mock(gw: RunningGateway, provider: str) -> None:
    token = mock_id_token(provider, "alice@example.com")
    with psycopg.connect(gw.dsn(token)) as conn:
        assert conn.execute("SELECT current_database() IS NOT NULL").fetchone() == (True,)
    assert gw.recorded_sessions("alice@example.com")[0]["issuer"] == provider


def _forgeries(idp: TestIssuer) -> dict[str, tuple[str, str]]:
    """name -> (token, the message the client must see)."""
    claims = idp.claims(sub="mallory", aud=AUDIENCE, groups=["it"])
    good = idp.sign(claims, "corp-1")
    header, _, signature = good.split(".")
    body = _b64(json.dumps({**claims, "sub": "admin"}).encode())
    none_header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    expired = {**claims, "exp": claims["iat"] - 120}
    return {
        "alg none": (f"{none_header}.{body}.", "token algorithm 'none' is not accepted"),
        "tampered": (f"{header}.{body}.{signature}", "token signature is invalid"),
        "expired": (idp.sign(expired, "corp-1"), "token expired at"),
        "audience": (idp.sign({**claims, "aud": "other"}, "corp-1"), "wrong audience"),
    }


@pytest.mark.parametrize("case", ["alg none", "tampered", "expired", "audience"])
def test_forged_and_invalid_tokens_are_refused_on_the_wire(
    gw: RunningGateway, idp: TestIssuer, case: str
) -> None:
    token, expected = _forgeries(idp)[case]
    wire = Wire(gw.port, tls=True)
    try:
        err = wire.login(token, user="mallory", database="itdb")
    finally:
        wire.close()
    assert err is not None
    assert err["C"] == "28P01"
    assert expected in err["M"]
    refusal = wait_for_refusal(gw, wire.local_address)
    assert expected in refusal["reason"]
    if case == "audience":
        assert "token audience 'other'" in refusal["reason"]  # the audit gets the detail
        assert "token audience" not in err["M"]
    for part in token.split("."):
        if len(part) > 8:
            assert part not in gw.log() and part not in json.dumps(refusal)


def test_rotation_keeps_old_and_new_keys_valid(gw: RunningGateway, idp: TestIssuer) -> None:
    old = idp.token(kid="corp-1", sub="rotor", aud=AUDIENCE, groups=["it"])
    new_kid = idp.add_key("EdDSA")
    time.sleep(1.1)  # the gateway refetches on an unknown kid at most once per second
    new = idp.token(kid=new_kid, sub="rotor", aud=AUDIENCE, groups=["it"])
    for token in (new, old):
        with psycopg.connect(gw.dsn(token, user="rotor")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_revoking_an_identity_ends_its_live_session(gw: RunningGateway, idp: TestIssuer) -> None:
    token = idp.token(sub="revoked-rita", aud=AUDIENCE, groups=["it"])
    conn = psycopg.connect(gw.dsn(token, user="rita"), autocommit=True)
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        out = gw.cli(
            "token",
            "revoke",
            "--subject",
            "revoked-rita",
            "--issuer",
            idp.url,
            "--reason",
            "left the company",
        )
        assert "Revoked identity 'revoked-rita'" in out.stdout
        message = _until_ended(conn)
    finally:
        conn.close()
    assert "session ended" in message and "identity 'revoked-rita' was revoked" in message
    row = _ended_session(gw, "revoked-rita")
    assert row["end_reason"] == "revoked"

    # Replay of the same token after revocation: refused at the door.
    with pytest.raises(psycopg.OperationalError, match="was revoked"):
        psycopg.connect(gw.dsn(token, user="rita"))


def test_an_expiring_token_ends_its_session(gw: RunningGateway, idp: TestIssuer) -> None:
    token = idp.token(sub="short-sam", aud=AUDIENCE, groups=["it"], ttl=3)
    conn = psycopg.connect(gw.dsn(token, user="sam"), autocommit=True)
    try:
        message = _until_ended(conn)
    finally:
        conn.close()
    assert "session ended: the session's token expired at" in message
    assert _ended_session(gw, "short-sam")["end_reason"] == "token_expired"


def test_allow_outlives_the_token_until_max_session(
    tmp_path_factory: pytest.TempPathFactory,
    pg_server: tuple[str, int, str],
    it_database: str,
    idp: TestIssuer,
    github: TestIssuer,
) -> None:
    host, port, user = pg_server
    manifest = _oidc_manifest(
        free_port(),
        [local_resource("itdb", it_database, host, port, user)],
        idp,
        github,
        None,
        {"on_token_expiry": "allow", "max_session": "6s", "check_interval": "1s"},
    )
    gw = start_gateway(tmp_path_factory.mktemp("oidc-allow"), manifest)
    try:
        token = idp.token(sub="long-lee", aud=AUDIENCE, groups=["it"], ttl=2)
        conn = psycopg.connect(gw.dsn(token, user="lee"), autocommit=True)
        try:
            exp = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["exp"]
            while time.time() < exp + 1.5:  # past the token's expiry and a check or two
                time.sleep(0.2)
            assert conn.execute("SELECT 'still here'").fetchone() == ("still here",)
            message = _until_ended(conn)
        finally:
            conn.close()
        assert "maximum length of 6s" in message
        assert _ended_session(gw, "long-lee")["end_reason"] == "max_session"
    finally:
        gw.stop()
