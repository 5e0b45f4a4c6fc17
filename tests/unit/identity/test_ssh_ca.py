"""The SSH user CA: certificate contents, and re-verifying the identity behind one."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import asyncssh
import pytest
from asyncssh.public_key import SSHOpenSSHCertificate
from sqlalchemy.engine import Engine

from lockgate.config.model import Manifest
from lockgate.errors import AuthFailed
from lockgate.identity.revocation import ensure_tables, revoke_identity
from lockgate.identity.ssh_ca import (
    certificate_facts,
    decode_user_certificate,
    issue_user_certificate,
    load_or_create_ca,
    principal_for_certificate,
    record_outside_certificate,
    rejection_reason,
)
from lockgate.identity.tables import ssh_certificates
from lockgate.identity.tokens import GatewayTokenAuthority
from lockgate.identity.verifier import GatewayTokenVerifier
from lockgate.model import Principal, PrincipalKind


@pytest.fixture(autouse=True)
def _tables(engine: Engine) -> None:
    ensure_tables(engine)
    ssh_certificates.create(engine, checkfirst=True)


async def _certify(
    authority: GatewayTokenAuthority, manifest: Manifest, ttl: timedelta, token_ttl: int = 3600
) -> tuple[Principal, SSHOpenSSHCertificate]:
    issued = authority.issue("ci", ["deploy"], ttl_seconds=token_ttl, scopes=["web"])
    principal = await GatewayTokenVerifier(authority).verify(issued.token)
    user = asyncssh.generate_private_key("ssh-ed25519")
    cert = issue_user_certificate(load_or_create_ca(manifest), user, principal, ttl)
    decoded = decode_user_certificate(cert.public_data)
    assert decoded is not None
    return principal, decoded


def test_ca_key_is_created_once_private(manifest: Manifest) -> None:
    first = load_or_create_ca(manifest)
    path = manifest.state_dir / "ssh-user-ca"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_or_create_ca(manifest).public_data == first.public_data
    os.chmod(path, 0o644)
    with pytest.raises(Exception, match="accessible by other users"):
        load_or_create_ca(manifest)


async def test_certificate_names_subject_and_token(
    authority: GatewayTokenAuthority, manifest: Manifest
) -> None:
    principal, cert = await _certify(authority, manifest, timedelta(minutes=15))
    facts = certificate_facts(cert)
    assert facts.principals == ("ci",)
    assert (facts.subject, facts.jti) == ("ci", principal.token_id)
    assert facts.valid_before <= datetime.now(UTC) + timedelta(minutes=15)
    assert facts.valid_before > datetime.now(UTC) + timedelta(minutes=14)
    # Forwarding is left to the gateway's ssh.rules (which record it), not to the certificate.
    assert set(cert.options) == {"permit-pty", *_FORWARDING}


async def test_certificate_ends_with_the_token(
    authority: GatewayTokenAuthority, manifest: Manifest
) -> None:
    principal, cert = await _certify(authority, manifest, timedelta(hours=8), token_ttl=600)
    assert principal.expires_at is not None
    assert certificate_facts(cert).valid_before == principal.expires_at.replace(microsecond=0)


async def test_identity_is_read_back_from_the_token_record(
    authority: GatewayTokenAuthority, manifest: Manifest, engine: Engine
) -> None:
    principal, cert = await _certify(authority, manifest, timedelta(minutes=5))
    again = principal_for_certificate(engine, authority.issuer, cert)
    assert again.subject == "ci"
    assert again.groups == frozenset({"deploy"})
    assert again.scopes == frozenset({"web"})
    assert again.token_id == principal.token_id


async def test_revoked_token_or_subject_is_refused(
    authority: GatewayTokenAuthority, manifest: Manifest, engine: Engine
) -> None:
    principal, cert = await _certify(authority, manifest, timedelta(minutes=5))
    revoke_identity(engine, "*", subject="ci", reason="left")
    with pytest.raises(AuthFailed, match="identity 'ci' was revoked"):
        principal_for_certificate(engine, authority.issuer, cert)
    _, other = await _certify(authority, manifest, timedelta(minutes=5))
    assert principal.token_id is not None
    authority.revoke(certificate_facts(other).jti, "leaked")
    with pytest.raises(AuthFailed, match="token behind the SSH certificate was revoked"):
        principal_for_certificate(engine, authority.issuer, other)


def test_foreign_or_expired_certificates_say_why(manifest: Manifest) -> None:
    ca = load_or_create_ca(manifest)
    other = asyncssh.generate_private_key("ssh-ed25519")
    user = asyncssh.generate_private_key("ssh-ed25519")
    who = Principal(subject="ci", token_id="0123")
    forged = decode_user_certificate(
        issue_user_certificate(other, user, who, timedelta(minutes=5)).public_data
    )
    assert forged is not None
    assert "not signed by this gateway's CA" in rejection_reason(forged, ca)
    old = decode_user_certificate(
        issue_user_certificate(
            ca, user, who, timedelta(minutes=5), now=datetime.now(UTC) - timedelta(hours=1)
        ).public_data
    )
    assert old is not None
    assert "expired at" in rejection_reason(old, ca)


def test_unknown_token_and_plain_keys(manifest: Manifest, engine: Engine) -> None:
    ca = load_or_create_ca(manifest)
    user = asyncssh.generate_private_key("ssh-ed25519")
    assert decode_user_certificate(user.public_data) is None
    cert = issue_user_certificate(ca, user, Principal(subject="ci", token_id="nope"), timedelta(1))
    decoded = decode_user_certificate(cert.public_data)
    assert decoded is not None
    with pytest.raises(AuthFailed, match="not known to this gateway"):
        principal_for_certificate(engine, "lockgate", decoded)


_FORWARDING = ("permit-port-forwarding", "permit-agent-forwarding", "permit-X11-forwarding")


def test_no_pty_leaves_permit_pty_out(manifest: Manifest) -> None:
    user = asyncssh.generate_private_key("ssh-ed25519")
    who = Principal(subject="ci", token_id="0123")
    cert = issue_user_certificate(
        load_or_create_ca(manifest), user, who, timedelta(minutes=5), permit_pty=False
    )
    decoded = decode_user_certificate(cert.public_data)
    assert decoded is not None
    assert set(decoded.options) == set(_FORWARDING)


def test_an_oidc_identity_is_re_checked_from_the_certificate_record(
    manifest: Manifest, engine: Engine
) -> None:
    issuer = "https://idp.example"
    who = Principal(
        "olga", frozenset({"ops"}), PrincipalKind.HUMAN, issuer=issuer, token_id="idp-jti"
    )
    until = datetime.now(UTC) + timedelta(minutes=10)
    certified = record_outside_certificate(engine, who, until)
    assert certified.token_id is not None and certified.token_id.startswith("cert-")
    user = asyncssh.generate_private_key("ssh-ed25519")
    cert = issue_user_certificate(load_or_create_ca(manifest), user, certified, timedelta(hours=1))
    decoded = decode_user_certificate(cert.public_data)
    assert decoded is not None
    back = principal_for_certificate(engine, "lockgate", decoded)
    # The token's own issuer and jti come back, so revocation and live checks see them.
    assert (back.subject, back.issuer, back.token_id) == ("olga", issuer, "idp-jti")
    assert (back.groups, back.kind) == (frozenset({"ops"}), PrincipalKind.HUMAN)
    assert back.expires_at is not None and back.expires_at <= until
    revoke_identity(engine, issuer, jti="idp-jti")
    with pytest.raises(AuthFailed, match="its token was revoked"):
        principal_for_certificate(engine, "lockgate", decoded)
