"""The gateway's own login to upstream servers: SCRAM-SHA-256 and md5 with credentials from
`env:` and `store:` references, TLS verification, and refusals that leak nothing.

Runs against a throwaway cluster (see `throwaway_cluster.py`) that forces SCRAM for one role,
md5 for another, and serves TLS with a certificate from a CA made for the test.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from tests.conftest import free_port
from tests.integration.postgres.conftest import (
    LOCKGATE,
    RunningGateway,
    Wire,
    base_manifest,
    start_gateway,
)
from tests.integration.postgres.throwaway_cluster import (
    DATABASE,
    MD5_ROLE,
    SCRAM_ROLE,
    Cluster,
    throwaway_cluster,
)

__all__ = ["throwaway_cluster"]  # the module-scoped fixture, used by name below

pytestmark = pytest.mark.pg

ENV_NAME = "LOCKGATE_TEST_UPSTREAM_SCRAM_PW"
WRONG_PASSWORD = "UPW-wrong-0123456789"


def _resource(
    name: str,
    port: int,
    user: str,
    password: str | None,
    tls: dict[str, Any],
    database: str = DATABASE,
) -> dict[str, Any]:
    upstream: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "database": database,
        "user": user,
        "tls": tls,
        "connect_timeout": 10,
    }
    if password is not None:
        upstream["password"] = password
    return {"name": name, "upstream": upstream}


@pytest.fixture(scope="module")
def gw(
    throwaway_cluster: Cluster,
    tmp_path_factory: pytest.TempPathFactory,
    pg_server: tuple[str, int, str],
) -> Iterator[RunningGateway]:
    c = throwaway_cluster
    verify = {"mode": "verify-full", "ca": str(c.ca)}
    resources = [
        _resource("scram", c.port, SCRAM_ROLE, f"env:{ENV_NAME}", verify),
        _resource("md5", c.port, MD5_ROLE, "store:md5-pw", {"mode": "require"}),
        _resource(
            "md5-verify-ca",
            c.port,
            MD5_ROLE,
            "store:md5-pw",
            {"mode": "verify-ca", "ca": str(c.ca)},
        ),
        _resource("wrongpw", c.port, SCRAM_ROLE, "store:wrong-pw", verify),
        _resource(
            "wrongca",
            c.port,
            SCRAM_ROLE,
            f"env:{ENV_NAME}",
            {"mode": "verify-full", "ca": str(c.other_ca)},
        ),
        _resource(
            "wrongname",
            c.port,
            SCRAM_ROLE,
            f"env:{ENV_NAME}",
            {"mode": "verify-full", "ca": str(c.ca), "server_name": "db.elsewhere.example"},
        ),
        # The main test server has TLS off.
        _resource(
            "notls", pg_server[1], pg_server[2], None, {"mode": "require"}, database="postgres"
        ),
    ]
    directory = tmp_path_factory.mktemp("upstream-gw")
    manifest = base_manifest(free_port(), resources, tls=False)
    # Secrets are stored before the gateway starts (the CLI needs the manifest, not the gateway).
    (directory / "lockgate.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    for name, value in (("md5-pw", c.md5_password), ("wrong-pw", WRONG_PASSWORD)):
        subprocess.run(
            [*LOCKGATE, "secret", "set", name, "-c", str(directory / "lockgate.yaml")],
            input=value + "\n",
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            cwd=directory,
        )
    old = os.environ.get(ENV_NAME)
    os.environ[ENV_NAME] = c.scram_password
    try:
        gateway = start_gateway(directory, manifest)
    finally:
        if old is None:
            del os.environ[ENV_NAME]
        else:
            os.environ[ENV_NAME] = old
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def token(gw: RunningGateway) -> str:
    return gw.token()


def _session_facts(gw: RunningGateway, token: str, resource: str) -> tuple[Any, ...]:
    with psycopg.connect(
        gw.dsn(token, dbname=resource, sslmode="disable"), connect_timeout=15
    ) as conn:
        row = conn.execute(
            "select current_user, current_database(), s.ssl "
            "from pg_stat_ssl s where s.pid = pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return tuple(row)


def _stored_verifier(cluster: Cluster, role: str) -> str:
    with cluster.connect() as c:
        row = c.execute("select rolpassword from pg_authid where rolname = %s", (role,)).fetchone()
    assert row is not None
    return str(row[0])


def _refusal(gw: RunningGateway, token: str, resource: str) -> dict[str, str]:
    wire = Wire(gw.port)
    try:
        fields = wire.login(token, user="alice", database=resource)
    finally:
        wire.close()
    assert fields is not None, f"resource {resource} admitted the connection"
    return fields


def _shown(fields: dict[str, str]) -> str:
    return " ".join(fields.get(k, "") for k in "MDH")


def test_scram_with_an_env_reference_over_verify_full_tls(
    gw: RunningGateway, token: str, throwaway_cluster: Cluster
) -> None:
    assert _stored_verifier(throwaway_cluster, SCRAM_ROLE).startswith("SCRAM-SHA-256$")
    assert _session_facts(gw, token, "scram") == (SCRAM_ROLE, DATABASE, True)


def test_md5_with_a_store_reference(
    gw: RunningGateway, token: str, throwaway_cluster: Cluster
) -> None:
    assert _stored_verifier(throwaway_cluster, MD5_ROLE).startswith("md5")
    assert _session_facts(gw, token, "md5") == (MD5_ROLE, DATABASE, True)
    assert _session_facts(gw, token, "md5-verify-ca") == (MD5_ROLE, DATABASE, True)


def test_wrong_stored_password_is_08004_without_secrets(
    gw: RunningGateway, token: str, throwaway_cluster: Cluster
) -> None:
    fields = _refusal(gw, token, "wrongpw")
    assert fields["C"] == "08004", fields
    assert "credential" in fields["M"]
    shown = _shown(fields)
    for secret in (
        WRONG_PASSWORD,
        throwaway_cluster.scram_password,
        SCRAM_ROLE,
        str(throwaway_cluster.port),
    ):
        assert secret not in shown, f"{secret!r} leaked: {fields}"
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(gw.dsn(token, dbname="wrongpw", sslmode="disable"), connect_timeout=15)
    assert WRONG_PASSWORD not in str(info.value) and SCRAM_ROLE not in str(info.value)
    # The cluster saw a password failure for the role, i.e. the gateway really tried it.
    log = (throwaway_cluster.dir / "server.log").read_text(errors="replace")
    assert f'password authentication failed for user "{SCRAM_ROLE}"' in log


@pytest.mark.parametrize("resource", ["wrongca", "wrongname"])
def test_verify_full_refuses_a_server_it_cannot_verify(
    gw: RunningGateway, token: str, resource: str, throwaway_cluster: Cluster
) -> None:
    fields = _refusal(gw, token, resource)
    assert fields["C"] == "08006", fields
    assert resource in fields["M"]
    assert throwaway_cluster.scram_password not in _shown(fields)


def test_require_refuses_a_server_without_tls(gw: RunningGateway, token: str) -> None:
    fields = _refusal(gw, token, "notls")
    assert fields["C"] == "08006", fields
    assert "TLS" in fields["M"]
    # The gateway still serves the TLS resources.
    assert _session_facts(gw, token, "scram")[2] is True


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_upstream_passwords_never_reach_the_log_or_the_audit_store(
    gw: RunningGateway, token: str, throwaway_cluster: Cluster
) -> None:
    # Make sure every path ran at least once in this module, whatever was selected.
    _session_facts(gw, token, "scram")
    _session_facts(gw, token, "md5")
    _refusal(gw, token, "wrongpw")
    files = [gw.log_path, *_files_under(gw.dir / "state")]
    assert any(p.suffix == ".db" for p in files), files
    for secret in (
        throwaway_cluster.scram_password,
        throwaway_cluster.md5_password,
        WRONG_PASSWORD,
    ):
        for path in files:
            data = path.read_bytes()
            assert secret.encode() not in data, f"an upstream password is in {path}"
