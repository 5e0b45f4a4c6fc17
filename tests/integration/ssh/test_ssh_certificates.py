"""`lockgate ssh-cert` certificates with the real ssh client in BatchMode (no prompt at all)."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncssh
import pytest
from tests.integration.ssh.conftest import SshGateway, ended_session, refusals, wait_for

from lockgate.identity.ssh_ca import CA_KEY_FILE, issue_user_certificate
from lockgate.model import Principal

pytestmark = pytest.mark.ssh


def cert_ssh(
    gw: SshGateway, key: Path, cert: Path, *args: str
) -> subprocess.CompletedProcess[bytes]:
    """ssh with only this key and certificate, never a prompt."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    return subprocess.run(
        [
            "ssh",
            "-F", "/dev/null",
            "-o", f"UserKnownHostsFile={gw.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-o", "PreferredAuthentications=publickey",
            "-o", "LogLevel=INFO",
            "-o", "ConnectTimeout=10",
            "-i", str(key),
            "-o", f"CertificateFile={cert}",
            "-p", str(gw.port),
            "target@127.0.0.1",
            *args,
        ],
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )  # fmt: skip


def ssh_cert(
    gw: SshGateway, token: str, out: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return gw.cli("ssh-cert", "target", "--token", token, "-o", str(out), *extra, check=False)


def test_certificate_logs_in_without_a_prompt(gateway: SshGateway, tmp_path: Path) -> None:
    token = gateway.token("cert-user")
    key = tmp_path / "key"
    made = ssh_cert(gateway, token, key, "--ttl", "10m")
    assert made.returncode == 0, made.stderr
    assert token not in made.stdout + made.stderr
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    cert = asyncssh.read_certificate(str(tmp_path / "key-cert.pub"))
    assert cert.principals == ["cert-user"]
    ca = gateway.dir / "state" / CA_KEY_FILE
    assert oct(ca.stat().st_mode & 0o777) == "0o600"

    r = cert_ssh(gateway, key, tmp_path / "key-cert.pub", "echo", "via-cert")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"via-cert\n"
    session = ended_session(gateway, "cert-user")
    assert session["commands"][0]["text"] == "echo via-cert"


def test_certificate_for_an_existing_public_key(gateway: SshGateway, tmp_path: Path) -> None:
    key = tmp_path / "mine"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    token = gateway.token("cert-own-key")
    made = gateway.cli(
        "ssh-cert", "target", "--token", token, "--public-key", f"{key}.pub", check=False
    )
    assert made.returncode == 0, made.stderr
    r = cert_ssh(gateway, key, tmp_path / "mine-cert.pub", "true")
    assert r.returncode == 0, r.stderr
    # -o never overwrites a key it did not write; its own earlier pair it replaces.
    theirs = tmp_path / "theirs"
    theirs.write_text("a private key of the user's own\n")
    clobber = ssh_cert(gateway, token, theirs)
    assert clobber.returncode == 1
    assert "--public-key" in clobber.stderr
    assert theirs.read_text() == "a private key of the user's own\n"
    again = tmp_path / "renewed"
    assert ssh_cert(gateway, token, again).returncode == 0
    first = again.read_bytes()
    assert ssh_cert(gateway, token, again).returncode == 0
    assert again.read_bytes() != first


def test_expired_certificate_is_refused(gateway: SshGateway, tmp_path: Path) -> None:
    ca = asyncssh.read_private_key(str(gateway.dir / "state" / CA_KEY_FILE))
    user = asyncssh.generate_private_key("ssh-ed25519")
    user.write_private_key(str(tmp_path / "key"))
    token = gateway.token("cert-expired")
    principal = Principal(subject="cert-expired", token_id="x" * 16)
    cert = issue_user_certificate(
        ca, user, principal, timedelta(minutes=5), now=datetime.now(UTC) - timedelta(hours=1)
    )
    cert.write_certificate(str(tmp_path / "key-cert.pub"))
    r = cert_ssh(gateway, tmp_path / "key", tmp_path / "key-cert.pub", "true")
    assert r.returncode == 255
    assert b"Permission denied" in r.stderr
    assert b"lockgate: the SSH certificate expired at" in r.stderr
    found = wait_for(
        lambda: [x for x in refusals(gateway) if x["subject"] == "cert-expired"], "the refusal"
    )
    assert found[0]["code"] == "auth_failed"
    assert token not in found[0]["reason"]


def test_certificate_of_another_ca_is_refused(gateway: SshGateway, tmp_path: Path) -> None:
    for name in ("other-ca", "key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)],
            check=True,
        )
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(tmp_path / "other-ca"), "-I", "cert-forged 0123",
         "-n", "cert-forged", "-V", "-5m:+1h", str(tmp_path / "key.pub")],
        check=True,
    )  # fmt: skip
    r = cert_ssh(gateway, tmp_path / "key", tmp_path / "key-cert.pub", "true")
    assert r.returncode == 255
    assert b"Permission denied" in r.stderr
    assert b"not signed by this gateway's CA" in r.stderr
    found = wait_for(
        lambda: [x for x in refusals(gateway) if "'cert-forged'" in x["reason"]], "the refusal"
    )
    assert "not signed by this gateway's CA" in found[0]["reason"]
    assert found[0]["subject"] is None  # whoever made the certificate chose that name


def test_revoked_subject_cannot_use_its_certificate(gateway: SshGateway, tmp_path: Path) -> None:
    token = gateway.token("cert-revoked")
    key = tmp_path / "key"
    assert ssh_cert(gateway, token, key).returncode == 0
    cert = tmp_path / "key-cert.pub"
    assert cert_ssh(gateway, key, cert, "true").returncode == 0
    gateway.cli("token", "revoke", "--subject", "cert-revoked", "--reason", "left")
    r = cert_ssh(gateway, key, cert, "true")
    assert r.returncode == 255
    assert b"was revoked" in r.stderr
    found = wait_for(
        lambda: [x for x in refusals(gateway) if x["subject"] == "cert-revoked"], "the refusal"
    )
    assert found[0]["code"] == "auth_failed"


def test_no_certificate_for_a_revoked_or_unauthorized_token(
    gateway: SshGateway, tmp_path: Path
) -> None:
    stranger = gateway.token("cert-stranger", groups=("nobody",))
    r = ssh_cert(gateway, stranger, tmp_path / "k1")
    assert r.returncode == 1
    assert "may not reach" in r.stderr or "not allowed" in r.stderr
    assert not (tmp_path / "k1-cert.pub").exists()
    r = ssh_cert(gateway, "not-a-token", tmp_path / "k2")
    assert r.returncode == 1
    assert "not-a-token" not in r.stderr
