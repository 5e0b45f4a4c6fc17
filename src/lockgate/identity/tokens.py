"""Gateway-issued tokens: an Ed25519-signed JWT per service account, agent or person.

The signing key lives in the state directory (`token-signing-key.pem`, mode 0600) and is
created on first use. Every issued token gets a row in `issued_tokens` (without the token),
which is what makes listing and revocation possible.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from lockgate.config.model import Manifest, parse_duration
from lockgate.errors import LockgateError
from lockgate.identity.tables import issued_tokens
from lockgate.keyfiles import check_owner_only, create_private_file, new_ed25519
from lockgate.model import PrincipalKind
from lockgate.wakeups import REVOKED, notify

SIGNING_KEY_FILE = "token-signing-key.pem"
ALGORITHM = "EdDSA"


class TokenRequestInvalid(LockgateError, ValueError):
    """An issue request asks for something the manifest does not allow (e.g. a too-long TTL)."""


class SigningKeyError(LockgateError):
    """The token signing key is missing, unreadable, malformed or too widely readable."""


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly issued token. `token` is the secret; show it once, store it nowhere."""

    token: str
    jti: str
    subject: str
    groups: tuple[str, ...]
    expires_at: datetime
    scopes: tuple[str, ...] | None = None
    kind: PrincipalKind = PrincipalKind.MACHINE


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What the store knows about an issued token (never the token itself)."""

    jti: str
    subject: str
    groups: tuple[str, ...]
    scopes: tuple[str, ...] | None
    kind: PrincipalKind
    issued_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_reason: str | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at <= (now or datetime.now(UTC))

    def as_json(self, when: Callable[[datetime], str]) -> dict[str, Any]:
        """What the CLI and the console show of it; `when` formats its times."""
        return {
            "jti": self.jti,
            "subject": self.subject,
            "groups": list(self.groups),
            "scopes": list(self.scopes) if self.scopes is not None else None,
            "kind": self.kind.value,
            "issued_at": when(self.issued_at),
            "expires_at": when(self.expires_at),
            "revoked": self.revoked,
            "revoked_at": when(self.revoked_at) if self.revoked_at else None,
            "revoked_reason": self.revoked_reason,
        }


def utc(value: datetime) -> datetime:
    """Attach UTC to a naive datetime read back from the store."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime) -> str:
    """Format a timestamp as `2026-11-23T10:00:00Z`."""
    return utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_duration(seconds: int) -> str:
    """The shortest exact `7d` / `90m` / `45s` form of a number of seconds."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def record_from_row(row: Any) -> TokenRecord:
    """Build a `TokenRecord` from an `issued_tokens` row."""
    m = row._mapping
    scopes = json.loads(m["scopes"]) if m["scopes"] is not None else None
    return TokenRecord(
        jti=m["jti"],
        subject=m["subject"],
        groups=tuple(json.loads(m["groups"])),
        scopes=tuple(scopes) if scopes is not None else None,
        kind=PrincipalKind(m["kind"]),
        issued_at=utc(m["issued_at"]),
        expires_at=utc(m["expires_at"]),
        revoked_at=utc(m["revoked_at"]) if m["revoked_at"] is not None else None,
        revoked_reason=m["revoked_reason"],
    )


def lookup_token(engine: Engine, jti: str) -> TokenRecord | None:
    """The store's record of token `jti`, or None if this store never issued it."""
    with engine.connect() as conn:
        row = conn.execute(select(issued_tokens).where(issued_tokens.c.jti == jti)).first()
    return record_from_row(row) if row is not None else None


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    check_owner_only(path, "token signing key", SigningKeyError)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningKeyError(
            f"token signing key {path} cannot be read ({type(exc).__name__})",
            hint="restore it from backup; deleting it makes every issued token invalid",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(
            f"token signing key {path} is not an Ed25519 key",
            hint="move it away; Lockgate creates a fresh Ed25519 key on next use",
        )
    return key


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the Ed25519 signing key at `path`, creating it (mode 0600) if it does not exist."""
    created = create_private_file(path, new_ed25519)
    return created if created is not None else _load_private_key(path)


def _clean_names(values: Iterable[str], what: str) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        name = v.strip()
        if not name:
            raise TokenRequestInvalid(f"{what} names must not be empty")
        if name not in out:
            out.append(name)
    return tuple(out)


class GatewayTokenAuthority:
    """Issues, lists and revokes gateway tokens for one manifest and state store."""

    def __init__(self, manifest: Manifest, engine: Engine) -> None:
        self.manifest = manifest
        self.engine = engine
        settings = manifest.identity.gateway_tokens
        self.issuer = settings.issuer
        self.audience = settings.audience
        self.default_ttl = parse_duration(settings.default_ttl)
        self.max_ttl = parse_duration(settings.max_ttl)
        self.key_path = manifest.state_dir / SIGNING_KEY_FILE
        self._private_key: Ed25519PrivateKey | None = None
        # Tables normally come from `open_engine`; this keeps a bare engine usable too.
        issued_tokens.create(engine, checkfirst=True)

    def _key(self) -> Ed25519PrivateKey:
        if self._private_key is None:
            self._private_key = load_or_create_signing_key(self.key_path)
        return self._private_key

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The key that verifies this authority's tokens."""
        return self._key().public_key()

    def issue(
        self,
        subject: str,
        groups: Iterable[str] = (),
        ttl_seconds: int | None = None,
        scopes: Iterable[str] | None = None,
        kind: PrincipalKind = PrincipalKind.MACHINE,
    ) -> IssuedToken:
        """Sign a token for `subject` and record it (without the token) in the store."""
        subject = subject.strip()
        if not subject:
            raise TokenRequestInvalid(
                "a token needs a subject", hint="pass --subject NAME (e.g. ci-deploy)"
            )
        group_names = _clean_names(groups, "group")
        scope_names = _clean_names(scopes, "scope") if scopes is not None else None
        if scope_names == ():
            raise TokenRequestInvalid(
                "a token limited to no resources could never be used",
                hint="name at least one resource to scope it to, or leave scopes out",
            )
        ttl = self.default_ttl if ttl_seconds is None else ttl_seconds
        if ttl <= 0:
            raise TokenRequestInvalid(f"token lifetime must be positive, got {ttl} s")
        if ttl > self.max_ttl:
            max_text = self.manifest.identity.gateway_tokens.max_ttl
            raise TokenRequestInvalid(
                f"token lifetime {format_duration(ttl)} exceeds the maximum of {max_text}",
                hint="ask for a shorter --ttl, or raise identity.gateway_tokens.max_ttl",
            )

        issued_at = datetime.now(UTC).replace(microsecond=0)
        expires_at = issued_at + timedelta(seconds=ttl)
        # Never starting with '-': `lockgate token revoke JTI` would read it as an option.
        jti = "t" + secrets.token_urlsafe(18)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "iat": int(issued_at.timestamp()),
            "nbf": int(issued_at.timestamp()),
            "exp": int(expires_at.timestamp()),
            "jti": jti,
            "groups": list(group_names),
            "kind": kind.value,
        }
        if scope_names is not None:
            claims["scope"] = list(scope_names)
        token = jwt.encode(claims, self._key(), algorithm=ALGORITHM)

        with self.engine.begin() as conn:
            conn.execute(
                issued_tokens.insert().values(
                    jti=jti,
                    subject=subject,
                    groups=json.dumps(list(group_names)),
                    scopes=json.dumps(list(scope_names)) if scope_names is not None else None,
                    kind=kind.value,
                    issued_at=issued_at,
                    expires_at=expires_at,
                )
            )
        return IssuedToken(token, jti, subject, group_names, expires_at, scope_names, kind)

    def revoke(self, jti: str, reason: str = "") -> bool:
        """Mark token `jti` revoked; False if this store never issued it.

        Revoking twice keeps the first time and reason.
        """
        with self.engine.begin() as conn:
            result = conn.execute(
                update(issued_tokens)
                .where(issued_tokens.c.jti == jti, issued_tokens.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC), revoked_reason=reason or None)
            )
            if result.rowcount:
                notify(conn, REVOKED)  # other gateway hosts end its sessions at once
                return True
            found = conn.execute(
                select(issued_tokens.c.jti).where(issued_tokens.c.jti == jti)
            ).first()
        return found is not None

    def lookup(self, jti: str) -> TokenRecord | None:
        """The store's record of token `jti`, or None."""
        return lookup_token(self.engine, jti)

    def list_tokens(self, include_expired: bool = False) -> list[TokenRecord]:
        """Issued tokens, oldest first; expired ones only if asked."""
        query = select(issued_tokens).order_by(issued_tokens.c.issued_at, issued_tokens.c.jti)
        if not include_expired:
            query = query.where(issued_tokens.c.expires_at > datetime.now(UTC))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [record_from_row(r) for r in rows]
