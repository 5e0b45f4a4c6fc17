"""`lockgate ssh-cert` for an identity provider's (OIDC) token: given, or kept by `lockgate
login`; the certificate logs in without a prompt and a revocation ends its live session."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest
from tests.conftest import free_port
from tests.identity_provider import TestIssuer
from tests.integration.ssh.conftest import (
    LOCKGATE,
    SshGateway,
    Target,
    ended_session,
    refusals,
    ssh_manifest,
    start_ssh_gateway,
    wait_for,
)
from tests.integration.ssh.test_ssh_certificates import cert_ssh

from lockgate.identity.credentials import StoredLogin, remember

pytestmark = pytest.mark.ssh

AUDIENCE = "lockgate-ssh"


@pytest.fixture(scope="module")
def idp() -> Iterator[TestIssuer]:
    issuer = TestIssuer()
    issuer.add_key("RS256")
    yield issuer
    issuer.close()


@pytest.fixture(scope="module")
def oidc_gw(
    tmp_path_factory: pytest.TempPathFactory, sshd: Target, idp: TestIssuer
) -> Iterator[SshGateway]:
    manifest = ssh_manifest(free_port(), sshd)
    manifest["identity"] = {
        "oidc": [{"issuer": idp.url, "audiences": [AUDIENCE], "jwks_min_refresh": "1s"}],
        "sessions": {"check_interval": "1s"},
    }
    gw = start_ssh_gateway(tmp_path_factory.mktemp("ssh-oidc"), manifest, sshd)
    yield gw
    gw.stop()


def _ssh_cert(
    gw: SshGateway, out: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LOCKGATE, "ssh-cert", "target", "-o", str(out), *args, "-c", str(gw.manifest_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or {k: v for k, v in os.environ.items() if k != "LOCKGATE_TOKEN"},
    )


def test_an_oidc_token_gets_a_certificate_that_logs_in(
    oidc_gw: SshGateway, idp: TestIssuer, tmp_path: Path
) -> None:
    token = idp.token(sub="olga", aud=AUDIENCE, groups=["ops"])
    key = tmp_path / "key"
    made = _ssh_cert(oidc_gw, key, "--token", token, "--ttl", "10m")
    assert made.returncode == 0, made.stderr
    assert token not in made.stdout + made.stderr
    cert = asyncssh.read_certificate(f"{key}-cert.pub")
    assert cert.principals == ["olga"]
    r = cert_ssh(oidc_gw, key, tmp_path / "key-cert.pub", "echo", "oidc-cert")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"oidc-cert\n"
    session = ended_session(oidc_gw, "olga")
    assert session["issuer"] == idp.url
    assert session["groups"] == ["ops"]


def test_the_login_kept_by_lockgate_login_is_used_without_a_token(
    oidc_gw: SshGateway, idp: TestIssuer, tmp_path: Path
) -> None:
    claims = idp.claims(sub="lena", aud=AUDIENCE, groups=["ops"], ttl=600)
    id_token = idp.sign(claims, idp.published[0])
    config = tmp_path / "config"
    remember(
        StoredLogin(
            issuer=idp.url,
            client_id="lockgate-cli",
            token_endpoint=f"{idp.url}/token",
            id_token=id_token,
            refresh_token=None,
            expires_at=claims["exp"],
        ),
        config / "lockgate" / "credentials.json",
    )
    env = {k: v for k, v in os.environ.items() if k != "LOCKGATE_TOKEN"}
    env["XDG_CONFIG_HOME"] = str(config)
    key = tmp_path / "key"
    made = _ssh_cert(oidc_gw, key, env=env)
    assert made.returncode == 0, made.stderr
    r = cert_ssh(oidc_gw, key, tmp_path / "key-cert.pub", "true")
    assert r.returncode == 0, r.stderr
    assert ended_session(oidc_gw, "lena")["issuer"] == idp.url
    # Without a token and without a login, the error says what to do.
    env["XDG_CONFIG_HOME"] = str(tmp_path / "empty")
    none = _ssh_cert(oidc_gw, tmp_path / "k2", env=env)
    assert none.returncode == 1
    assert "lockgate login" in none.stderr


def test_revoking_the_oidc_subject_ends_the_certificate_session(
    oidc_gw: SshGateway, idp: TestIssuer, tmp_path: Path
) -> None:
    token = idp.token(sub="oscar", aud=AUDIENCE, groups=["ops"])
    key = tmp_path / "key"
    assert _ssh_cert(oidc_gw, key, "--token", token).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    proc = subprocess.Popen(
        ["ssh", "-F", "/dev/null", "-o", f"UserKnownHostsFile={oidc_gw.known_hosts}",
         "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
         "-i", str(key), "-o", f"CertificateFile={key}-cert.pub", "-p", str(oidc_gw.port),
         "target@127.0.0.1", "echo up; sleep 60"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"up\n"
        oidc_gw.cli("token", "revoke", "--subject", "oscar", "--issuer", idp.url)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert b"lockgate: session ended: " in err
    assert ended_session(oidc_gw, "oscar")["end_reason"] == "revoked"
    again = cert_ssh(oidc_gw, key, tmp_path / "key-cert.pub", "true")
    assert again.returncode == 255
    assert b"identity 'oscar' was revoked at" in again.stderr
    found = wait_for(
        lambda: [x for x in refusals(oidc_gw) if x["subject"] == "oscar"], "the refusal"
    )
    assert found[0]["code"] == "auth_failed"
