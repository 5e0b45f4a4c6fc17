"""Token verification: turn the secret a client sends into a verified `Principal`.

Every protocol calls `IdentityVerifier.verify(token)`. It reads the token's unverified `iss`
only to pick the verifier that trusts that issuer; that verifier then checks everything
(signature first). Every refusal is an `AuthFailed` whose message and hint are safe to send
to the client: they never include the token or key material.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from lockgate.config.model import Manifest
from lockgate.errors import AuthFailed
from lockgate.identity.tokens import (
    ALGORITHM,
    GatewayTokenAuthority,
    TokenRecord,
    iso,
    lookup_token,
)
from lockgate.model import Principal, PrincipalKind

# Gateway tokens are issued and checked by gateways sharing a store (clocks in sync via
# NTP): a second covers drift between hosts without stretching a short `--ttl`.
LEEWAY_SECONDS = 1
# Far above any real JWT; refuse before parsing anything larger.
MAX_TOKEN_LENGTH = 16 * 1024

_NEW_TOKEN_HINT = "issue a new one with `lockgate token issue`"
_NOT_A_JWT = "password is not a Lockgate token (expected a JWT)"
_NOT_A_JWT_HINT = (
    "send a token from `lockgate token issue` (or your identity provider) as the password"
)
_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")


@runtime_checkable
class TokenVerifier(Protocol):
    """Verifies tokens from one issuer."""

    issuer: str

    async def verify(self, token: str) -> Principal:
        """Return the verified principal or raise `AuthFailed`."""
        ...


def shown(value: object, limit: int = 80) -> str:
    """Quote a client-supplied value for an error message: printable ASCII, bounded length."""
    text = value if isinstance(value, str) else repr(value)
    if not _PRINTABLE.match(text):
        text = text.encode("ascii", "backslashreplace").decode("ascii")
        text = "".join(c if " " <= c <= "~" else "?" for c in text)
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"'{text}'"


def _check_shape(token: str) -> str:
    token = token.strip()
    if not token:
        raise AuthFailed("no token was sent", hint=_NOT_A_JWT_HINT)
    if len(token) > MAX_TOKEN_LENGTH:
        raise AuthFailed(
            f"token is too long ({len(token)} characters; at most {MAX_TOKEN_LENGTH})",
            hint=_NOT_A_JWT_HINT,
        )
    if token.count(".") != 2:
        raise AuthFailed(_NOT_A_JWT, hint=_NOT_A_JWT_HINT)
    return token


def unverified_claims(token: str) -> dict[str, Any]:
    """The claims of a well-formed JWT, NOT verified: only for routing to a verifier."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise AuthFailed(_NOT_A_JWT, hint=_NOT_A_JWT_HINT) from None
    if not isinstance(claims, dict):
        raise AuthFailed(_NOT_A_JWT, hint=_NOT_A_JWT_HINT)
    return claims


def claim_time(claims: dict[str, Any], name: str) -> str:
    """A time claim (`exp`, `nbf`, `iat`) for an error message, whatever the token holds."""
    value = claims.get(name)
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return iso(datetime.fromtimestamp(value, UTC))
        except (OverflowError, OSError, ValueError):
            pass
    return "an invalid time"


def _string_list(claims: dict[str, Any], name: str) -> list[str] | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AuthFailed(
            f"token claim '{name}' must be a list of names",
            hint=_NEW_TOKEN_HINT,
        )
    return value


class GatewayTokenVerifier:
    """Verifies tokens signed by this gateway's key and checks revocation on every call.

    Build it from a `GatewayTokenAuthority`, or from `(public_key, manifest, engine)` where
    the process must not hold the signing key.
    """

    def __init__(
        self,
        source: GatewayTokenAuthority | Ed25519PublicKey,
        manifest: Manifest | None = None,
        engine: Engine | None = None,
    ) -> None:
        if isinstance(source, GatewayTokenAuthority):
            public_key = source.public_key
            manifest = manifest or source.manifest
            engine = engine or source.engine
        elif isinstance(source, Ed25519PublicKey):
            public_key = source
            if manifest is None or engine is None:
                raise TypeError(
                    "GatewayTokenVerifier(public_key, manifest, engine) needs all three"
                )
        else:
            raise TypeError("expected a GatewayTokenAuthority or an Ed25519PublicKey")
        settings = manifest.identity.gateway_tokens
        self.issuer: str = settings.issuer
        self.audience: str = settings.audience
        self._public_key = public_key
        self._engine = engine

    async def verify(self, token: str) -> Principal:
        """Return the principal a valid, unrevoked gateway token names; else `AuthFailed`."""
        token = _check_shape(token)
        claims = self._decode(token)
        record = await self._lookup(claims["jti"])
        return self._principal(claims, record)

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthFailed(_NOT_A_JWT, hint=_NOT_A_JWT_HINT) from None
        alg = header.get("alg")
        if alg != ALGORITHM:
            raise AuthFailed(
                f"token algorithm {shown(alg)} is not accepted (Lockgate tokens use EdDSA)",
                hint=_NEW_TOKEN_HINT,
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._public_key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["iss", "aud", "sub", "jti", "exp", "iat", "nbf"]},
            )
        # The signature is checked before any claim, so claims named below come from our key.
        except jwt.InvalidSignatureError:
            raise AuthFailed(
                "token signature is invalid",
                hint="the token was altered or signed by another gateway; " + _NEW_TOKEN_HINT,
            ) from None
        except jwt.ExpiredSignatureError:
            at = claim_time(unverified_claims(token), "exp")
            raise AuthFailed(f"token expired at {at}", hint=_NEW_TOKEN_HINT) from None
        except jwt.ImmatureSignatureError:
            early = unverified_claims(token)
            at = claim_time(early, "nbf" if "nbf" in early else "iat")
            raise AuthFailed(
                f"token is not valid until {at}",
                hint="check this machine's clock, or wait until then",
            ) from None
        except jwt.InvalidAudienceError:
            raise AuthFailed(
                f"token is not meant for this gateway (expected audience {shown(self.audience)})",
                hint=_NEW_TOKEN_HINT + " against this gateway's manifest",
            ) from None
        except jwt.InvalidIssuerError:
            iss = unverified_claims(token).get("iss")
            raise AuthFailed(
                f"token issuer {shown(iss)} is not trusted by this gateway",
                hint=_NEW_TOKEN_HINT,
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthFailed(f"token has no '{exc.claim}' claim", hint=_NEW_TOKEN_HINT) from None
        except (
            jwt.exceptions.InvalidSubjectError,
            jwt.exceptions.InvalidJTIError,
            jwt.InvalidIssuedAtError,
        ):
            raise AuthFailed("token claims are malformed", hint=_NEW_TOKEN_HINT) from None
        except jwt.PyJWTError:
            raise AuthFailed(_NOT_A_JWT, hint=_NOT_A_JWT_HINT) from None
        if not claims.get("sub") or not claims.get("jti"):
            raise AuthFailed("token has an empty 'sub' or 'jti' claim", hint=_NEW_TOKEN_HINT)
        return claims

    async def _lookup(self, jti: str) -> TokenRecord:
        try:
            record = await asyncio.to_thread(lookup_token, self._engine, jti)
        except SQLAlchemyError:
            # Fail closed: an unreadable revocation list admits nobody.
            raise AuthFailed(
                "token could not be checked against the revocation list",
                hint="the gateway's state store is unavailable; try again shortly",
            ) from None
        if record is None:
            raise AuthFailed(
                "token is not known to this gateway",
                hint="it was issued against another state store; " + _NEW_TOKEN_HINT,
            )
        if record.revoked_at is not None:
            reason = (
                f" (reason: {shown(record.revoked_reason, 200)})" if record.revoked_reason else ""
            )
            raise AuthFailed(
                f"token was revoked at {iso(record.revoked_at)}{reason}",
                hint="ask an admin for a new token",
            )
        return record

    def _principal(self, claims: dict[str, Any], record: TokenRecord) -> Principal:
        if record.subject != claims["sub"]:
            raise AuthFailed("token does not match its issue record", hint=_NEW_TOKEN_HINT)
        groups = _string_list(claims, "groups") or []
        scopes = _string_list(claims, "scope")
        try:
            kind = PrincipalKind(claims.get("kind", PrincipalKind.MACHINE.value))
        except ValueError:
            raise AuthFailed(
                f"token kind {shown(claims.get('kind'))} is unknown", hint=_NEW_TOKEN_HINT
            ) from None
        return Principal(
            subject=claims["sub"],
            groups=frozenset(groups),
            kind=kind,
            issuer=self.issuer,
            token_id=claims["jti"],
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
            scopes=frozenset(scopes) if scopes is not None else None,
        )


class IdentityVerifier:
    """Routes a token to the verifier that trusts its issuer."""

    def __init__(self, verifiers: Sequence[TokenVerifier]) -> None:
        self._by_issuer: dict[str, TokenVerifier] = {}
        for v in verifiers:
            if v.issuer in self._by_issuer:
                raise ValueError(f"two verifiers claim issuer {v.issuer!r}")
            self._by_issuer[v.issuer] = v

    @property
    def issuers(self) -> tuple[str, ...]:
        return tuple(self._by_issuer)

    async def verify(self, token: str) -> Principal:
        """Verify `token` with the verifier for its issuer; `AuthFailed` if none or invalid."""
        token = _check_shape(token)
        iss = unverified_claims(token).get("iss")
        if not isinstance(iss, str) or not iss:
            raise AuthFailed("token names no issuer ('iss' claim)", hint=_NEW_TOKEN_HINT)
        verifier = self._by_issuer.get(iss)
        if verifier is None:
            raise AuthFailed(
                f"token issuer {shown(iss)} is not trusted by this gateway",
                hint="use a token from `lockgate token issue` or a configured identity provider",
            )
        return await verifier.verify(token)
