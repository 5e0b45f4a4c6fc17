"""The gateway's SSH user CA: short-lived OpenSSH certificates standing in for a token.

`lockgate ssh-cert` verifies a token and signs the caller's public key with the CA key kept
in the state folder (Ed25519, mode 0600). The certificate names the token's subject as its
only principal and `SUBJECT ID` as its key id, and expires with the token or sooner. It
carries no copy of the groups: when a client logs in with it, the gateway looks the identity
up again by that id, so a revocation takes effect at the next login (and ends live sessions)
rather than when the certificate expires.

- A gateway token: ID is the token's jti; groups and scopes come from its `issued_tokens` row.
- An identity provider's (OIDC) token has no row there: `record_outside_certificate` keeps
  one in `ssh_certificates` (issuer, subject, the token's jti, groups as verified when the
  certificate was issued) under a new ID, checked against the revocation list at login.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncssh
from asyncssh.public_key import SSHOpenSSHCertificate, decode_ssh_certificate
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from lockgate.config.model import Manifest
from lockgate.errors import AuthFailed, LockgateError
from lockgate.identity.revocation import find_revocation
from lockgate.identity.tables import ssh_certificates
from lockgate.identity.tokens import iso, lookup_token, utc
from lockgate.keyfiles import check_owner_only, create_private_file
from lockgate.model import Principal, PrincipalKind

CA_KEY_FILE = "ssh-user-ca"
# Certificates start a minute early so that a client clock slightly behind is no problem.
BACKDATE = timedelta(minutes=1)
# OpenSSH encodes "forever" as 2**64-1; clamp before making a datetime.
_FOREVER = 253402300799  # 9999-12-31
_NEW_CERT_HINT = "get a new certificate with `lockgate ssh-cert RESOURCE`"


def ca_key_path(manifest: Manifest) -> Path:
    return manifest.state_dir / CA_KEY_FILE


def _new_ca_key() -> tuple[None, bytes]:
    key = asyncssh.generate_private_key("ssh-ed25519", comment="lockgate-ssh-user-ca")
    return None, key.export_private_key("openssh")


def load_or_create_ca(manifest: Manifest) -> asyncssh.SSHKey:
    """The CA's private key, generated once (Ed25519, mode 0600) in the state folder."""
    path = ca_key_path(manifest)
    create_private_file(path, _new_ca_key)
    check_owner_only(path, "the SSH CA key")
    try:
        return asyncssh.read_private_key(str(path))
    except (OSError, asyncssh.KeyImportError):
        raise LockgateError(
            f"the SSH CA key {path} cannot be read",
            hint="restore it from backup, or move it away to create a new CA "
            "(certificates signed by the old one then stop working)",
        ) from None


def key_id(subject: str, jti: str) -> str:
    return f"{subject} {jti}"


def issue_user_certificate(
    ca: asyncssh.SSHKey,
    user_key: asyncssh.SSHKey,
    principal: Principal,
    ttl: timedelta,
    *,
    permit_pty: bool = True,
    now: datetime | None = None,
) -> asyncssh.SSHCertificate:
    """Sign `user_key` for `principal`, valid until the token expires or `ttl` passes."""
    if principal.token_id is None:
        raise AuthFailed("the token has no id (jti) to bind a certificate to")
    now = now or datetime.now(UTC)
    valid_before = now + ttl
    if principal.expires_at is not None:
        valid_before = min(valid_before, principal.expires_at)
    return ca.generate_user_certificate(
        user_key,
        key_id(principal.subject, principal.token_id),
        serial=secrets.randbits(63),
        principals=[principal.subject],
        valid_after=int((now - BACKDATE).timestamp()),
        valid_before=int(valid_before.timestamp()),
        # Only this gateway trusts its CA, and its `ssh.rules` decide (and record) forwarding:
        # without these, asyncssh would refuse a request before the rules or the audit see it.
        permit_x11_forwarding=True,
        permit_agent_forwarding=True,
        permit_port_forwarding=True,
        permit_pty=permit_pty,
        permit_user_rc=False,
        comment=f"lockgate {principal.subject}",
    )


def decode_user_certificate(key_data: bytes) -> SSHOpenSSHCertificate | None:
    """The OpenSSH certificate a client offered, or None for a plain key or X.509."""
    try:
        cert = decode_ssh_certificate(key_data)
    except (asyncssh.KeyImportError, ValueError):
        return None
    return cert if isinstance(cert, SSHOpenSSHCertificate) else None


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    """What a certificate claims, before the gateway trusts any of it."""

    subject: str
    jti: str
    principals: tuple[str, ...]
    valid_after: datetime
    valid_before: datetime


def certificate_facts(cert: SSHOpenSSHCertificate) -> CertificateFacts:
    """Read the key id, principals and validity of a certificate (no checks)."""
    # asyncssh keeps these decoded fields without public accessors.
    raw: object = cert._key_id
    kid = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    subject, _, jti = kid.rpartition(" ")
    return CertificateFacts(
        subject=subject,
        jti=jti,
        principals=tuple(cert.principals),
        valid_after=datetime.fromtimestamp(min(int(cert._valid_after), _FOREVER), UTC),
        valid_before=datetime.fromtimestamp(min(int(cert._valid_before), _FOREVER), UTC),
    )


def rejection_reason(cert: SSHOpenSSHCertificate, ca_public: asyncssh.SSHKey) -> str:
    """Why the SSH layer refused a certificate (signer or validity window)."""
    if cert.signing_key.public_data != ca_public.public_data:
        return "the SSH certificate is not signed by this gateway's CA"
    facts = certificate_facts(cert)
    now = datetime.now(UTC)
    if now >= facts.valid_before:
        return f"the SSH certificate expired at {iso(facts.valid_before)}"
    if now < facts.valid_after:
        return f"the SSH certificate is not valid until {iso(facts.valid_after)}"
    return "the SSH certificate was not accepted"


def record_outside_certificate(
    engine: Engine, principal: Principal, valid_before: datetime
) -> Principal:
    """Keep what a certificate for an outside (OIDC) identity stands for.

    Returns the principal to certify: its `token_id` is the record's id, which goes into the
    certificate's key id; the record keeps the token's own jti for revocation checks.
    """
    cert_id = "cert-" + secrets.token_hex(12)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            ssh_certificates.insert().values(
                id=cert_id,
                issuer=principal.issuer,
                subject=principal.subject,
                token_jti=principal.token_id,
                groups=json.dumps(sorted(principal.groups)),
                scopes=json.dumps(sorted(principal.scopes))
                if principal.scopes is not None
                else None,
                kind=principal.kind.value,
                issued_at=now,
                expires_at=valid_before,
            )
        )
    return replace(principal, token_id=cert_id, expires_at=valid_before)


def _outside_principal(engine: Engine, facts: CertificateFacts) -> Principal | None:
    """The OIDC identity behind a certificate, re-checked; None if no record names it."""
    with engine.connect() as conn:
        row = conn.execute(
            select(ssh_certificates).where(ssh_certificates.c.id == facts.jti)
        ).first()
    if row is None:
        return None
    m = row._mapping
    if m["subject"] != facts.subject:
        return None
    issuer, jti = m["issuer"], m["token_jti"]
    revocation = find_revocation(engine, issuer, facts.subject, jti)
    if revocation is not None:
        what = "its token" if revocation.jti is not None else f"identity '{facts.subject}'"
        raise AuthFailed(
            f"{what} was revoked at {iso(revocation.revoked_at)}",
            hint="ask an admin to restore it",
        )
    expires = min(utc(m["expires_at"]), facts.valid_before)
    if expires <= datetime.now(UTC):
        raise AuthFailed(
            f"the token behind the SSH certificate expired at {iso(expires)}", hint=_NEW_CERT_HINT
        )
    scopes = json.loads(m["scopes"]) if m["scopes"] is not None else None
    return Principal(
        subject=facts.subject,
        groups=frozenset(json.loads(m["groups"])),
        kind=PrincipalKind(m["kind"]),
        issuer=issuer,
        token_id=jti,
        expires_at=expires,
        scopes=frozenset(scopes) if scopes is not None else None,
    )


def principal_for_certificate(
    engine: Engine, issuer: str, cert: SSHOpenSSHCertificate
) -> Principal:
    """Re-verify the identity behind a CA-signed, in-date certificate; raises AuthFailed.

    The token it was issued for must still be known and unrevoked, its subject must not be
    on the revocation list, and groups and scopes come from the token's issue record (or,
    for an outside identity, from the certificate's own record).
    """
    facts = certificate_facts(cert)
    if not facts.subject or not facts.jti or facts.principals != (facts.subject,):
        raise AuthFailed("the SSH certificate was not issued by Lockgate", hint=_NEW_CERT_HINT)
    try:
        record = lookup_token(engine, facts.jti)
        if record is None:
            outside = _outside_principal(engine, facts)
            if outside is not None:
                return outside
        revocation = find_revocation(engine, issuer, facts.subject, facts.jti)
    except SQLAlchemyError:
        raise AuthFailed(
            "the SSH certificate could not be checked against the revocation list",
            hint="the gateway's state store is unavailable; try again shortly",
        ) from None
    if record is None or record.subject != facts.subject:
        raise AuthFailed(
            "the token behind the SSH certificate is not known to this gateway",
            hint=_NEW_CERT_HINT,
        )
    if record.revoked_at is not None:
        raise AuthFailed(
            f"the token behind the SSH certificate was revoked at {iso(record.revoked_at)}",
            hint="ask an admin for a new token",
        )
    if revocation is not None:
        raise AuthFailed(
            f"identity '{facts.subject}' was revoked at {iso(revocation.revoked_at)}",
            hint="ask an admin to restore it",
        )
    if record.expired():
        raise AuthFailed(
            f"the token behind the SSH certificate expired at {iso(record.expires_at)}",
            hint=_NEW_CERT_HINT,
        )
    return Principal(
        subject=record.subject,
        groups=frozenset(record.groups),
        kind=record.kind,
        issuer=issuer,
        token_id=record.jti,
        expires_at=min(record.expires_at, facts.valid_before),
        scopes=frozenset(record.scopes) if record.scopes is not None else None,
    )
