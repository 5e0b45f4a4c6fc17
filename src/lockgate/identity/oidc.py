"""OpenID Connect tokens: people from a company IdP, CI jobs from GitHub Actions or GitLab.

Theory of operation
-------------------
`OIDCVerifier` trusts one issuer from the manifest (`identity.oidc`). For each token it

1. reads the header: the algorithm must be one the manifest allows for this issuer (never
   `none`, never HMAC: a gateway holding public keys cannot check a shared-secret MAC);
2. asks the issuer's `KeySet` for the keys that can have signed it (by `kid`, or every key
   of the right type when the token names none) and checks the signature with PyJWT, then
   issuer, audience, expiry and not-before (with the issuer's clock skew);
3. refuses revoked subjects and tokens (`revoked_identities`, read on every verification);
4. maps claims to a `Principal`: subject and groups from the configured claims, plus the
   groups of every claim rule whose patterns all match.

`KeySet` fetches the discovery document and the JWKS in a thread, keeps them, refetches
them when they are older than `jwks_max_age`, and on an unknown `kid` at most once per
`jwks_min_refresh` (a flood of invented `kid`s costs the provider one request per
interval). When the provider is unreachable the keys already held keep working.

Refusals are `AuthFailed` with a short message for the client and a `detail` for the audit.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import jwt
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from lockgate.config.model import ClaimRule, OIDCIssuer, parse_duration
from lockgate.errors import AuthFailed
from lockgate.identity.revocation import ensure_tables, find_revocation
from lockgate.identity.tokens import iso
from lockgate.identity.verifier import _check_shape, claim_time, shown, unverified_claims
from lockgate.model import Principal, PrincipalKind

log = logging.getLogger("lockgate.identity.oidc")

# Discovery documents and key sets are small; refuse to buffer anything much larger.
MAX_DOCUMENT_BYTES = 1024 * 1024
MIN_RSA_BITS = 2048
_LOOPBACK = ("127.0.0.1", "localhost", "::1")

# Which key types and curves can verify which algorithm.
_KEY_TYPES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", ("P-256",)),
    "ES384": ("EC", ("P-384",)),
    "ES512": ("EC", ("P-521",)),
    "EdDSA": ("OKP", ("Ed25519", "Ed448")),
}

Fetch = Callable[[str, float], Any]


class ProviderUnavailable(Exception):
    """The identity provider could not be reached or sent something unusable."""


def fetch_json(url: str, timeout: float) -> Any:
    """GET `url` and parse it as JSON (blocking: call it in a thread)."""
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": "lockgate"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(MAX_DOCUMENT_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise ProviderUnavailable(f"{url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ProviderUnavailable(f"{url} unreachable: {reason}") from None
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ProviderUnavailable(f"{url} sent more than {MAX_DOCUMENT_BYTES} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise ProviderUnavailable(f"{url} did not send JSON") from None


def _safe_url(url: object) -> bool:
    if not isinstance(url, str):
        return False
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    return parts.scheme == "http" and parts.hostname in _LOOPBACK


def _b64len(value: object) -> int:
    if not isinstance(value, str):
        return 0
    try:
        return len(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except ValueError:
        return 0


def _usable(jwk: object) -> bool:
    """A public signing key of a type `_KEY_TYPES` knows (no `oct` secrets, no weak RSA)."""
    if not isinstance(jwk, dict):
        return False
    if jwk.get("use", "sig") != "sig" or "d" in jwk:
        return False
    kty = jwk.get("kty")
    if kty == "RSA":
        return _b64len(jwk.get("n")) * 8 >= MIN_RSA_BITS
    return kty in ("EC", "OKP")


def _fits(jwk: dict[str, Any], alg: str) -> bool:
    kty, curves = _KEY_TYPES[alg]
    if jwk.get("kty") != kty:
        return False
    if curves is not None and jwk.get("crv") not in curves:
        return False
    declared = jwk.get("alg")
    return declared is None or declared == alg


class KeySet:
    """The signing keys of one issuer: fetched, cached, refreshed with a rate limit."""

    def __init__(
        self,
        settings: OIDCIssuer,
        fetch: Fetch = fetch_json,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = settings.issuer
        self._configured_jwks_uri = settings.jwks_uri
        self._jwks_uri = settings.jwks_uri
        self._timeout = settings.http_timeout
        self._min_refresh = float(parse_duration(settings.jwks_min_refresh))
        self._max_age = float(parse_duration(settings.jwks_max_age))
        self._fetch = fetch
        self._clock = clock
        self._keys: list[dict[str, Any]] = []
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last attempt, successful or not
        self._last_error = ""
        self._lock: asyncio.Lock | None = None
        self._parsed: dict[tuple[int, str], jwt.PyJWK] = {}

    @property
    def kids(self) -> list[str | None]:
        """The `kid`s held now (for tests and diagnostics)."""
        return [k.get("kid") for k in self._keys]

    def _due(self) -> bool:
        """May we ask the provider now? (at most once per `jwks_min_refresh`)"""
        return self._attempted_at is None or self._clock() - self._attempted_at >= self._min_refresh

    def _stale(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._max_age

    def _download(self) -> list[dict[str, Any]]:
        if self._jwks_uri is None:
            base = self.issuer.rstrip("/")
            doc = self._fetch(f"{base}/.well-known/openid-configuration", self._timeout)
            if not isinstance(doc, dict):
                raise ProviderUnavailable("the discovery document is not a JSON object")
            if doc.get("issuer") != self.issuer:
                raise ProviderUnavailable(
                    f"the discovery document names issuer {doc.get('issuer')!r}, not the"
                    " configured one"
                )
            uri = doc.get("jwks_uri")
            if not _safe_url(uri):
                raise ProviderUnavailable(f"the discovery document's jwks_uri {uri!r} is not https")
            self._jwks_uri = str(uri)
        jwks = self._fetch(self._jwks_uri, self._timeout)
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise ProviderUnavailable("the JWKS document has no 'keys' list")
        keys = [k for k in jwks["keys"] if _usable(k)]
        if not keys:
            raise ProviderUnavailable("the JWKS holds no usable public signing key")
        return keys

    async def refresh(self, *, force: bool = False) -> bool:
        """Refetch the keys if allowed now (or `force`); False when not done or it failed."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        asked_at = self._clock()
        async with self._lock:
            # Someone refreshed while we waited for the lock: their keys are as new as ours.
            if self._attempted_at is not None and self._attempted_at >= asked_at:
                return self._fetched_at is not None and self._fetched_at >= asked_at
            if not force and not self._due():
                return False
            self._attempted_at = self._clock()
            try:
                keys = await asyncio.to_thread(self._download)
            except ProviderUnavailable as exc:
                self._last_error = str(exc)
                if self._configured_jwks_uri is None:
                    self._jwks_uri = None  # rediscover next time: the JWKS may have moved
                log.warning("OIDC issuer %s: keys not refreshed: %s", self.issuer, exc)
                return False
            self._keys = keys
            self._parsed.clear()
            self._fetched_at = self._clock()
            self._last_error = ""
            log.info("OIDC issuer %s: %d signing keys loaded", self.issuer, len(keys))
            return True

    def _matching(self, kid: str | None, alg: str) -> list[jwt.PyJWK]:
        out: list[jwt.PyJWK] = []
        for i, jwk in enumerate(self._keys):
            if kid is not None and jwk.get("kid") != kid:
                continue
            if not _fits(jwk, alg):
                continue
            parsed = self._parsed.get((i, alg))
            if parsed is None:
                try:
                    parsed = jwt.PyJWK(jwk, algorithm=alg)
                except (jwt.PyJWTError, ValueError, TypeError):
                    continue
                self._parsed[(i, alg)] = parsed
            out.append(parsed)
        return out

    async def keys_for(self, kid: str | None, alg: str) -> list[jwt.PyJWK]:
        """Keys that may have signed a token with this header; raises `AuthFailed`."""
        if self._stale():
            await self.refresh()
        if self._fetched_at is None:
            raise AuthFailed(
                "the identity provider's signing keys are not available",
                hint="try again shortly; tell an administrator if this persists",
                detail=f"issuer {self.issuer}: {self._last_error or 'keys not fetched yet'}",
            )
        found = self._matching(kid, alg)
        if not found and kid is not None and await self.refresh():
            found = self._matching(kid, alg)
        if not found:
            what = f"signing key {shown(kid)}" if kid is not None else f"{alg} signing key"
            raise AuthFailed(
                f"token {what} is unknown to its issuer",
                hint="get a fresh token from your identity provider",
                detail=f"issuer {self.issuer}; keys held: {self.kids}",
            )
        return found


def _claim_texts(value: object) -> list[str]:
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, str | int | float):
        return [str(value)]
    if isinstance(value, list):
        return [t for v in value if not isinstance(v, list | dict) for t in _claim_texts(v)]
    return []


def rule_matches(rule: ClaimRule, claims: dict[str, Any]) -> bool:
    """Do all of the rule's claim patterns match `claims`?"""
    for name, patterns in rule.match.items():
        texts = _claim_texts(claims.get(name))
        wanted = [patterns] if isinstance(patterns, str) else patterns
        if not any(fnmatch.fnmatchcase(t, p) for t in texts for p in wanted):
            return False
    return True


class OIDCVerifier:
    """Verifies tokens of one trusted OIDC issuer (`identity.oidc[]` in the manifest)."""

    def __init__(
        self,
        settings: OIDCIssuer,
        engine: Engine,
        *,
        keys: KeySet | None = None,
        fetch: Fetch = fetch_json,
    ) -> None:
        self.settings = settings
        self.issuer: str = settings.issuer
        self.keys = keys or KeySet(settings, fetch)
        self._engine = engine
        self._leeway = parse_duration(settings.clock_skew)
        self._kind = PrincipalKind(settings.kind)
        ensure_tables(engine)

    async def verify(self, token: str) -> Principal:
        """Return the principal a valid, unrevoked token of this issuer names; else `AuthFailed`."""
        token = _check_shape(token)
        claims = await self._decode(token)
        principal = self._principal(claims)
        await self._check_revocation(principal)
        return principal

    def _header(self, token: str) -> tuple[str, str | None]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthFailed("password is not a valid JWT", hint=self._hint) from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self.settings.algorithms:
            raise AuthFailed(
                f"token algorithm {shown(alg)} is not accepted for this issuer",
                hint=f"this gateway accepts {', '.join(self.settings.algorithms)}",
                detail=f"issuer {self.issuer}",
            )
        if kid is not None and not isinstance(kid, str):
            raise AuthFailed("token header 'kid' is malformed", hint=self._hint)
        return alg, kid

    @property
    def _hint(self) -> str:
        return "get a fresh token from your identity provider"

    async def _decode(self, token: str) -> dict[str, Any]:
        alg, kid = self._header(token)
        candidates = await self.keys.keys_for(kid, alg)
        for key in candidates:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key,
                    algorithms=[alg],
                    audience=self.settings.audiences,
                    issuer=self.issuer,
                    leeway=self._leeway,
                    options={"require": ["iss", "aud", "exp"]},
                )
                return claims
            except jwt.InvalidSignatureError:
                continue  # another key of the set may have signed it (no `kid`)
            except jwt.PyJWTError as exc:
                raise self._refusal(token, exc) from None
        raise AuthFailed(
            "token signature is invalid",
            hint="the token was altered or not signed by its issuer; " + self._hint,
            detail=f"issuer {self.issuer}, kid {kid!r}, {len(candidates)} key(s) tried",
        )

    def _refusal(self, token: str, exc: jwt.PyJWTError) -> AuthFailed:
        # The signature has been checked by now: the claims named below are the issuer's.
        claims = unverified_claims(token)
        if isinstance(exc, jwt.ExpiredSignatureError):
            return AuthFailed(f"token expired at {claim_time(claims, 'exp')}", hint=self._hint)
        if isinstance(exc, jwt.ImmatureSignatureError):
            at = claim_time(claims, "nbf" if "nbf" in claims else "iat")
            return AuthFailed(
                f"token is not valid until {at}",
                hint="check this machine's clock, or wait until then",
            )
        if isinstance(exc, jwt.InvalidAudienceError):
            return AuthFailed(
                "token is not meant for this gateway (wrong audience)",
                hint=f"request a token for audience {shown(self.settings.audiences[0])}",
                detail=f"token audience {shown(claims.get('aud'), 200)}",
            )
        if isinstance(exc, jwt.InvalidIssuerError):
            return AuthFailed(
                f"token issuer {shown(claims.get('iss'))} is not trusted by this gateway",
                hint=self._hint,
            )
        if isinstance(exc, jwt.MissingRequiredClaimError):
            return AuthFailed(f"token has no '{exc.claim}' claim", hint=self._hint)
        return AuthFailed(
            "token claims are malformed",
            hint=self._hint,
            detail=f"{type(exc).__name__}: {exc}",
        )

    def _principal(self, claims: dict[str, Any]) -> Principal:
        s = self.settings
        raw_subject = claims.get(s.subject_claim)
        if not isinstance(raw_subject, str) or not raw_subject:
            raise AuthFailed(
                f"token has no usable '{s.subject_claim}' claim (the subject)",
                hint=self._hint,
                detail=f"issuer {self.issuer}",
            )
        groups: set[str] = set()
        if s.groups_claim is not None:
            value = claims.get(s.groups_claim)
            if isinstance(value, str) and value:
                groups.add(value)
            elif isinstance(value, list):
                groups.update(v for v in value if isinstance(v, str) and v)
        matched = [r for r in s.claim_rules if rule_matches(r, claims)]
        if s.require_rule_match and not matched:
            names = sorted({n for r in s.claim_rules for n in r.match})
            seen = ", ".join(f"{n}={shown(claims.get(n), 120)}" for n in names)
            raise AuthFailed(
                "no claim rule of this gateway admits the token",
                hint="ask an administrator to add a claim rule for this job or identity",
                detail=f"issuer {self.issuer}; subject {raw_subject!r}; claims {seen}",
            )
        for rule in matched:
            groups.update(rule.groups)
        jti = claims.get("jti")
        exp = claims.get("exp")
        expires_at = datetime.fromtimestamp(exp, UTC) if isinstance(exp, int | float) else None
        return Principal(
            subject=s.subject_prefix + raw_subject,
            groups=frozenset(groups),
            kind=self._kind,
            issuer=self.issuer,
            token_id=jti if isinstance(jti, str) and jti else None,
            expires_at=expires_at,
        )

    async def _check_revocation(self, principal: Principal) -> None:
        try:
            found = await asyncio.to_thread(
                find_revocation,
                self._engine,
                self.issuer,
                principal.subject,
                principal.token_id,
            )
        except SQLAlchemyError:
            # Fail closed: an unreadable revocation list admits nobody.
            raise AuthFailed(
                "token could not be checked against the revocation list",
                hint="the gateway's state store is unavailable; try again shortly",
            ) from None
        if found is None:
            return
        what = "token" if found.jti is not None else f"identity '{principal.subject}'"
        reason = f" (reason: {shown(found.reason, 200)})" if found.reason else ""
        raise AuthFailed(
            f"{what} was revoked at {iso(found.revoked_at)}{reason}",
            hint="ask an administrator to restore access",
        )
