"""`lockgate login` then `lockgate psql`/`env` through a real gateway and real psql.

The gateway trusts oidc-provider-mock (a person logs in at its form, played by the test)
and a `TestIssuer` with token endpoints of the tests' own (a stored login whose ID token
has expired is refreshed by `lockgate psql` before it connects).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from tests.conftest import free_port
from tests.identity_provider import TestIssuer, mock_provider
from tests.integration.postgres.conftest import (
    RunningGateway,
    base_manifest,
    local_resource,
    start_gateway,
)
from tests.login_provider import LOCKGATE, LoginEndpoints, browser_login

from lockgate.identity import credentials as store
from lockgate.identity.login import id_token_claims

pytestmark = pytest.mark.pg

SUB = "alice@example.com"


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    with mock_provider({SUB: {"groups": ["it"]}}) as url:
        yield url


@pytest.fixture(scope="module")
def corp() -> Iterator[tuple[TestIssuer, LoginEndpoints]]:
    issuer = TestIssuer()
    issuer.add_key("RS256", kid="corp-1")
    endpoints = LoginEndpoints(issuer, client_id="lockgate-cli", sub="dora")
    yield issuer, endpoints
    endpoints.close()
    issuer.close()


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory,
    pg_server: tuple[str, int, str],
    it_database: str,
    provider: str,
    corp: tuple[TestIssuer, LoginEndpoints],
) -> Iterator[RunningGateway]:
    host, port, user = pg_server
    manifest = base_manifest(free_port(), [local_resource("itdb", it_database, host, port, user)])
    manifest["identity"] = {
        "oidc": [
            {
                "issuer": provider,
                "audiences": ["lockgate"],
                "client_id": "lockgate",
                "client_secret": "env:LG_CLIENT_SECRET",
            },
            {"issuer": corp[0].url, "audiences": ["lockgate-cli"], "client_id": "lockgate-cli"},
        ]
    }
    gateway = start_gateway(tmp_path_factory.mktemp("login"), manifest)
    yield gateway
    gateway.stop()


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return {
        **env,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "LG_CLIENT_SECRET": "mock-accepts-any",
    }


def _psql(gw: RunningGateway, env: dict[str, str], sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LOCKGATE, "psql", "itdb", "-c", str(gw.manifest_path), "--", "-XAtc", sql],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_login_then_psql_through_the_gateway(
    gw: RunningGateway, provider: str, home: dict[str, str]
) -> None:
    done = browser_login(home, provider, SUB, "-c", str(gw.manifest_path), "--issuer", provider)
    assert done.returncode == 0, done.stderr
    out = _psql(gw, home, "SELECT 'hello from ' || current_database()")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("hello from lockgate_it_")
    rows = gw.recorded_sessions(SUB)
    assert rows and rows[0]["issuer"] == provider and rows[0]["resource"] == "itdb"
    token = store.load(Path(home["XDG_CONFIG_HOME"]) / "lockgate" / "credentials.json")
    assert token.pick(provider).id_token not in gw.log()


def test_env_output_connects_with_psycopg(
    gw: RunningGateway, provider: str, home: dict[str, str]
) -> None:
    done = browser_login(home, provider, SUB, "-c", str(gw.manifest_path), "--issuer", provider)
    assert done.returncode == 0, done.stderr
    env = subprocess.run(
        [*LOCKGATE, "env", "itdb", "-c", str(gw.manifest_path)],
        capture_output=True,
        text=True,
        env=home,
        timeout=60,
    )
    assert env.returncode == 0, env.stderr
    variables = dict(word.split("=", 1) for word in shlex.split(env.stdout)[1:])
    assert variables["PGPORT"] == str(gw.port) and variables["PGSSLMODE"] == "require"
    with psycopg.connect(
        host=variables["PGHOST"],
        port=variables["PGPORT"],
        dbname=variables["PGDATABASE"],
        user=variables["PGUSER"],
        password=variables["PGPASSWORD"],
        sslmode=variables["PGSSLMODE"],
    ) as conn:
        assert conn.execute("SELECT 7 * 6").fetchone() == (42,)


def test_an_expired_login_is_refreshed_before_psql_connects(
    gw: RunningGateway, corp: tuple[TestIssuer, LoginEndpoints], home: dict[str, str]
) -> None:
    issuer, endpoints = corp
    expired = endpoints.id_token(ttl=-300)  # past the gateway's 60 s clock skew
    refresh_token = endpoints.new_refresh_token()
    path = Path(home["XDG_CONFIG_HOME"]) / "lockgate" / "credentials.json"
    store.remember(
        store.StoredLogin(
            issuer=issuer.url,
            client_id="lockgate-cli",
            token_endpoint=f"{endpoints.url}/token",
            id_token=expired,
            refresh_token=refresh_token,
            expires_at=int(id_token_claims(expired)["exp"]),
        ),
        path,
    )
    # The expired token itself is refused by the gateway...
    with pytest.raises(psycopg.OperationalError, match="token expired"):
        psycopg.connect(gw.dsn(expired, user="dora")).close()
    # ...and `lockgate psql` renews it first, without the person noticing.
    out = _psql(gw, home, "SELECT 'renewed'")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "renewed"
    last = endpoints.requests[-1]
    assert last["grant_type"] == "refresh_token" and last["refresh_token"] == refresh_token
    fresh = store.load(path).pick(issuer.url)
    assert fresh.id_token != expired and fresh.refresh_token != refresh_token
    assert gw.recorded_sessions("dora")[0]["issuer"] == issuer.url
