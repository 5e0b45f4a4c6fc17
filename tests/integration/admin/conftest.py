"""A real gateway serving the admin API (HTTPS, self-signed), in front of the real PostgreSQL.

One gateway for the package: resource `itdb` (group `it`), deletes held for review by group
`dba`, access requests to `jitdb` reviewed by `dba`; console roles admin=`secops`,
auditor=`audit`; OIDC sign-in through `oidc-provider-mock` on loopback.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from tests.conftest import free_port
from tests.identity_provider import mock_provider
from tests.integration.postgres.conftest import (
    RunningGateway,
    base_manifest,
    local_resource,
    start_gateway,
)

CONSOLE_CLIENT = "lockgate-console"
OIDC_USERS = {"carol": {"groups": ["secops"], "email": "carol@example.com"}}


@dataclass
class AdminGateway:
    gw: RunningGateway
    url: str
    provider: str
    database: str

    def token(self, subject: str, *groups: str) -> str:
        return self.gw.token(subject, groups)

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTPS client of the console (bearer auth when `token` is given)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, verify=False, headers=headers, timeout=30)

    def dsn(self, token: str, dbname: str = "itdb") -> str:
        return self.gw.dsn(token, dbname=dbname)


def _manifest(
    port: int, database: str, pg: tuple[str, int, str], provider: str, secret: Path
) -> dict[str, Any]:
    host, pg_port, user = pg
    manifest = base_manifest(
        port,
        [
            local_resource("itdb", database, host, pg_port, user),
            local_resource("jitdb", database, host, pg_port, user),
        ],
        [
            {"name": "it-group", "resources": ["itdb"], "groups": ["it"]},
            {"name": "jit", "resources": ["jitdb"], "groups": ["it"], "requires_grant": True},
        ],
    )
    manifest["identity"] = {
        "oidc": [{"issuer": provider, "audiences": [CONSOLE_CLIENT]}],
        "sessions": {"check_interval": "1s"},
    }
    manifest["guardrails"] = {
        "rules": [
            {"name": "deletes-need-review", "match": {"kinds": ["delete"]}, "action": "review"}
        ]
    }
    manifest["approvals"] = {
        "rules": [{"name": "dba-review", "reviewers": ["dba"], "expires": "5m"}],
        "poll_interval": 0.2,
    }
    manifest["admin"] = {
        "listen": f"127.0.0.1:{free_port()}",
        "roles": {"admin": ["secops"], "auditor": ["audit"]},
        "oidc": {"client_id": CONSOLE_CLIENT, "client_secret": f"file:{secret}"},
        "events_interval": 0.2,
    }
    return manifest


@pytest.fixture(scope="package")
def admin_gateway(
    tmp_path_factory: pytest.TempPathFactory, pg_server: tuple[str, int, str]
) -> Iterator[AdminGateway]:
    host, port, user = pg_server
    database = f"lockgate_admin_{secrets.token_hex(4)}"
    with psycopg.connect(host=host, port=port, user=user, dbname="postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{database}"')
    folder = tmp_path_factory.mktemp("admin")
    secret = folder / "console-secret"
    secret.write_text("mock-accepts-any")
    secret.chmod(0o600)
    try:
        with mock_provider(OIDC_USERS) as provider:
            manifest = _manifest(free_port(), database, pg_server, provider, secret)
            gw = start_gateway(folder / "gw", manifest)
            try:
                url = console_url(gw)
                yield AdminGateway(gw, url, provider, database)
            finally:
                gw.stop()
    finally:
        with psycopg.connect(
            host=host, port=port, user=user, dbname="postgres", autocommit=True
        ) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def console_url(gw: RunningGateway) -> str:
    marker = "lockgate: admin console on "
    for _ in range(300):
        for line in gw.log().splitlines():
            if line.startswith(marker):
                return line[len(marker) :].strip().rstrip("/")
        time.sleep(0.05)
    raise AssertionError(f"the admin console did not start:\n{gw.log()}")


def wait_for(what: str, probe: Any, attempts: int = 200, pause: float = 0.1) -> Any:
    """`probe()` once it returns something truthy (bounded), else fail naming `what`."""
    for _ in range(attempts):
        got = probe()
        if got:
            return got
        time.sleep(pause)
    raise AssertionError(f"timed out waiting for {what}")
