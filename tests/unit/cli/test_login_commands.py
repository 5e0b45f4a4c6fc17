"""`lockgate login / env / logout` as a person runs them: the CLI in a subprocess, the test
acting as the browser at oidc-provider-mock's login form."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.identity_provider import TestIssuer, authorization_code, mock_provider
from tests.login_provider import LOCKGATE, LoginEndpoints, browser_login

SUB = "alice@example.com"


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    with mock_provider({SUB: {"groups": ["it"]}}) as url:
        yield url


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """The environment of a person whose config folder is empty."""
    return {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "LOCKGATE_CONFIG": str(tmp_path / "nowhere.yaml"),
        "LG_CLIENT_SECRET": "mock-accepts-any",
        "BROWSER": "false",
    }


def _manifest(tmp_path: Path, issuer: str, **entry: Any) -> Path:
    manifest = {
        "version": 1,
        "listeners": [{"name": "pg", "address": "127.0.0.1:16432"}],
        "identity": {
            "oidc": [
                {
                    "issuer": issuer,
                    "audiences": ["lockgate"],
                    "client_id": "lockgate",
                    "client_secret": "env:LG_CLIENT_SECRET",
                    **entry,
                }
            ]
        },
        "resources": [
            {"name": "itdb", "upstream": {"database": "itdb", "user": "postgres"}},
        ],
    }
    path = tmp_path / "lockgate.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOCKGATE, *args], capture_output=True, text=True, env=env, timeout=60)


def _stored(env: dict[str, str]) -> Path:
    return Path(env["XDG_CONFIG_HOME"]) / "lockgate" / "credentials.json"


def test_login_with_the_manifest_then_env(
    tmp_path: Path, home: dict[str, str], provider: str
) -> None:
    manifest = _manifest(tmp_path, provider)
    done = browser_login(home, provider, SUB, "-c", str(manifest))
    assert done.returncode == 0, done.stderr
    assert f"Logged in to {provider} as {SUB}" in done.stdout
    path = _stored(home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    stored = yaml.safe_load(path.read_text())["logins"][0]
    for secret in (stored["id_token"], stored["refresh_token"], "mock-accepts-any"):
        assert secret not in done.stdout and secret not in done.stderr
    assert stored["client_secret_ref"] == "env:LG_CLIENT_SECRET"

    env = run(home, "env", "itdb", "-c", str(manifest))
    assert env.returncode == 0, env.stderr
    assert env.stdout.startswith("export ")
    variables = dict(word.split("=", 1) for word in shlex.split(env.stdout)[1:])
    assert variables == {
        "PGHOST": "127.0.0.1",
        "PGPORT": "16432",
        "PGDATABASE": "itdb",
        "PGUSER": SUB,
        "PGPASSWORD": stored["id_token"],
        "PGSSLMODE": "require",
    }
    other = run(home, "env", "itdb", "--gateway", "gw.example.com:7000", "--user", "al")
    assert "PGHOST=gw.example.com PGPORT=7000 PGDATABASE=itdb PGUSER=al " in other.stdout


def test_login_with_flags_only(home: dict[str, str], provider: str) -> None:
    done = browser_login(
        home,
        provider,
        "bob@example.com",
        "--issuer",
        provider,
        "--client-id",
        "lockgate",
        "--client-secret",
        "env:LG_CLIENT_SECRET",
    )
    assert done.returncode == 0, done.stderr
    assert "as bob@example.com" in done.stdout


def test_a_relative_secret_file_is_stored_as_an_absolute_reference(
    home: dict[str, str], provider: str, tmp_path: Path
) -> None:
    (tmp_path / "client.secret").write_text("mock-accepts-any\n")
    manifest = _manifest(tmp_path, provider, client_secret="file:client.secret")
    done = browser_login({**home, "LG_CLIENT_SECRET": ""}, provider, SUB, "-c", str(manifest))
    assert done.returncode == 0, done.stderr
    stored = yaml.safe_load(_stored(home).read_text())["logins"][0]
    assert stored["client_secret_ref"] == f"file:{(tmp_path / 'client.secret').resolve()}"
    assert "mock-accepts-any" not in _stored(home).read_text()


def test_login_warns_when_the_gateway_would_refuse_the_audience(
    home: dict[str, str], provider: str, tmp_path: Path
) -> None:
    manifest = _manifest(tmp_path, provider, audiences=["something-else"])
    done = browser_login(home, provider, SUB, "-c", str(manifest))
    assert done.returncode == 0, done.stderr
    assert "do not include 'lockgate'" in done.stderr


def test_logout_removes_the_tokens(home: dict[str, str], provider: str, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, provider)
    assert browser_login(home, provider, SUB, "-c", str(manifest)).returncode == 0
    out = run(home, "logout")
    assert out.returncode == 0 and f"Logged out of {provider}" in out.stdout
    assert not _stored(home).exists()
    env = run(home, "env", "itdb", "-c", str(manifest))
    assert env.returncode == 1
    assert "you are not logged in" in env.stderr and "lockgate login" in env.stderr
    assert "Not logged in" in run(home, "logout").stdout


def test_a_forged_callback_is_refused(home: dict[str, str], provider: str, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, provider)
    proc = subprocess.Popen(
        [*LOCKGATE, "login", "--no-browser", "-c", str(manifest)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=home,
    )
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if line.startswith("http"):
                break
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(line.strip()).query))
        forged = authorization_code(provider, {**query, "state": "attacker"}, "mallory@example.com")
        urllib.request.urlopen(forged, timeout=10).read()
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    assert "did not carry this login's state" in err
    assert not _stored(home).exists()


def test_login_gives_up_after_its_timeout(
    home: dict[str, str], provider: str, tmp_path: Path
) -> None:
    out = run(
        home, "login", "--no-browser", "--timeout", "0.5", "-c", str(_manifest(tmp_path, provider))
    )
    assert out.returncode == 1
    assert "no login came back from the browser" in out.stderr


def test_login_needs_an_issuer(home: dict[str, str]) -> None:
    out = run(home, "login", "--no-browser")
    assert out.returncode == 1
    assert "--issuer URL --client-id ID" in out.stderr


def test_env_needs_a_gateway_and_a_known_resource(
    home: dict[str, str], provider: str, tmp_path: Path
) -> None:
    out = run(home, "env", "itdb")
    assert out.returncode == 1 and "--gateway HOST:PORT" in out.stderr
    out = run(home, "env", "nosuch", "-c", str(_manifest(tmp_path, provider)))
    assert out.returncode == 1 and "no PostgreSQL resource 'nosuch'" in out.stderr


def test_device_login_where_the_provider_offers_it(home: dict[str, str], tmp_path: Path) -> None:
    idp = TestIssuer()
    idp.add_key("RS256")
    endpoints = LoginEndpoints(idp, client_id="lockgate-cli")
    try:
        out = run(
            home,
            "login",
            "--device",
            "--no-browser",
            "--issuer",
            idp.url,
            "--client-id",
            "lockgate-cli",
        )
        assert out.returncode == 0, out.stderr
        assert (
            f"open {endpoints.url}/activate on any device and enter the code WDJB-MJHT"
            in out.stderr
        )
        assert "as dora@example.com" in out.stdout
        assert stat.S_IMODE(_stored(home).stat().st_mode) == 0o600
    finally:
        endpoints.close()
        idp.close()


def test_device_login_where_the_provider_does_not(
    home: dict[str, str], provider: str, tmp_path: Path
) -> None:
    out = run(home, "login", "--device", "-c", str(_manifest(tmp_path, provider)))
    assert out.returncode == 1
    assert "does not offer the device flow" in out.stderr
