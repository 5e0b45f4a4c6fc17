"""Who is calling the admin API: a bearer token, or a browser session cookie with CSRF.

API clients send `Authorization: Bearer TOKEN` (a gateway token or an OIDC ID token),
verified on every request by the gateway's own verifier, revocations included. Browsers
hold an opaque session id in the HttpOnly cookie `lockgate_session`; the server keeps only
its SHA-256 with the principal it was opened for, and checks that principal's revocation on
every request. State-changing requests authenticated by cookie must echo the
`lockgate_csrf` cookie in `X-CSRF-Token` (double submit, bound to the session), else 403.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import Depends, HTTPException, Request, Response
from sqlalchemy import delete, select

from lockgate.admin.context import AdminContext, context
from lockgate.admin.roles import ADMIN, AUDITOR, REVIEWER, reads_everything, roles_for
from lockgate.admin.tables import admin_sessions
from lockgate.config.model import parse_duration
from lockgate.errors import AuthFailed
from lockgate.identity.revocation import revoked_principals
from lockgate.model import Principal, PrincipalKind

SESSION_COOKIE = "lockgate_session"
CSRF_COOKIE = "lockgate_csrf"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Caller:
    """A verified principal, its console roles, and how it authenticated."""

    principal: Principal
    roles: tuple[str, ...]
    via: Literal["bearer", "cookie"]

    @property
    def subject(self) -> str:
        return self.principal.subject

    @property
    def reads_everything(self) -> bool:
        return reads_everything(self.roles)

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.roles

    def owns(self, subject: str, issuer: str | None = None) -> bool:
        """Whether a record of `subject` (at `issuer`, when known) is the caller's own."""
        if subject != self.principal.subject:
            return False
        return issuer is None or issuer == self.principal.issuer

    def me(self) -> dict[str, Any]:
        return {
            "subject": self.principal.subject,
            "issuer": self.principal.issuer,
            "groups": sorted(self.principal.groups),
            "roles": list(self.roles),
        }


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# ---------------------------------------------------------------------- session store


def open_session(ctx: AdminContext, principal: Principal) -> tuple[str, str, datetime]:
    """Store a browser session for `principal`: (session id, CSRF token, expiry)."""
    admin = ctx.manifest.admin
    ttl = parse_duration(admin.session_ttl if admin else "8h")
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=ttl)
    # A gateway token's session ends with the token; an OIDC sign-in lasts `session_ttl`
    # (ID tokens are short-lived by design; revocation still ends it at once).
    if principal.issuer == ctx.authority.issuer and principal.expires_at is not None:
        expires = min(expires, principal.expires_at)
    sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    with ctx.engine.begin() as conn:
        conn.execute(delete(admin_sessions).where(admin_sessions.c.expires_at <= now))
        conn.execute(
            admin_sessions.insert().values(
                id_hash=_hash(sid),
                subject=principal.subject,
                issuer=principal.issuer,
                groups=sorted(principal.groups),
                kind=principal.kind.value,
                token_id=principal.token_id,
                csrf=csrf,
                created_at=now,
                expires_at=expires,
            )
        )
    return sid, csrf, expires


def _load_session(ctx: AdminContext, sid: str) -> tuple[Principal, str] | None:
    t = admin_sessions.c
    with ctx.engine.connect() as conn:
        row = conn.execute(
            select(admin_sessions).where(t.id_hash == _hash(sid), t.expires_at > datetime.now(UTC))
        ).first()
    if row is None:
        return None
    principal = Principal(
        subject=row.subject,
        groups=frozenset(row.groups),
        kind=PrincipalKind(row.kind),
        issuer=row.issuer,
        token_id=row.token_id,
    )
    revoked = revoked_principals(ctx.engine, [principal], ctx.authority.issuer)
    if revoked:
        return None
    return principal, str(row.csrf)


def close_session(ctx: AdminContext, sid: str) -> None:
    with ctx.engine.begin() as conn:
        conn.execute(delete(admin_sessions).where(admin_sessions.c.id_hash == _hash(sid)))


def set_session_cookies(
    ctx: AdminContext, response: Response, sid: str, csrf: str, expires: datetime
) -> None:
    """The HttpOnly session cookie and the script-readable CSRF cookie."""
    admin = ctx.manifest.admin
    secure = ctx.base_url.startswith("https://") or bool(admin and admin.tls.enabled)
    max_age = max(1, int((expires - datetime.now(UTC)).total_seconds()))
    response.set_cookie(
        SESSION_COOKIE, sid, max_age=max_age, httponly=True, secure=secure, samesite="lax"
    )
    response.set_cookie(
        CSRF_COOKIE, csrf, max_age=max_age, httponly=False, secure=secure, samesite="lax"
    )


def clear_session_cookies(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE)
    response.delete_cookie(CSRF_COOKIE)


# ---------------------------------------------------------------------- dependencies


def unauthorized(message: str) -> HTTPException:
    return HTTPException(401, detail=message, headers={"WWW-Authenticate": "Bearer"})


async def verify_token(ctx: AdminContext, token: str) -> Principal:
    """The principal a token proves, or 401 with the verifier's (token-free) reason."""
    try:
        return await ctx.verifier.verify(token)
    except AuthFailed as exc:
        raise unauthorized(exc.message) from None


async def current_caller(
    request: Request, ctx: Annotated[AdminContext, Depends(context)]
) -> Caller:
    """The authenticated caller (a FastAPI dependency): 401 if none, 403 without CSRF."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("expected 'Authorization: Bearer TOKEN'")
        principal = await verify_token(ctx, token.strip())
        return Caller(principal, roles_for(ctx.manifest, principal.groups), "bearer")
    sid = request.cookies.get(SESSION_COOKIE)
    if not sid:
        raise unauthorized("not signed in")
    found = await asyncio.to_thread(_load_session, ctx, sid)
    if found is None:
        raise unauthorized("the session has ended; sign in again")
    principal, csrf = found
    if request.method not in _SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        cookie = request.cookies.get(CSRF_COOKIE, "")
        # Double submit (header = cookie), and bound to this session (= the stored value).
        matches = secrets.compare_digest(sent.encode(), cookie.encode()) and secrets.compare_digest(
            sent.encode(), csrf.encode()
        )
        if not sent or not matches:
            raise HTTPException(
                403, detail=f"missing or wrong {CSRF_HEADER} header (copy the {CSRF_COOKIE} cookie)"
            )
    return Caller(principal, roles_for(ctx.manifest, principal.groups), "cookie")


CallerDep = Annotated[Caller, Depends(current_caller)]


def require(caller: Caller, *roles: str) -> None:
    """403 unless the caller holds one of `roles`."""
    if not set(roles) & set(caller.roles):
        raise HTTPException(
            403, detail=f"'{caller.subject}' needs the {' or '.join(roles)} role for this"
        )


__all__ = [
    "ADMIN",
    "AUDITOR",
    "REVIEWER",
    "Caller",
    "CallerDep",
    "current_caller",
    "require",
]
