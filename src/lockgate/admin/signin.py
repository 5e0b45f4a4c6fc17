"""Signing in to the console: OIDC authorization code + PKCE, or a token pasted once.

`GET /auth/login` stores a fresh `state`, `nonce` and PKCE verifier (by the state's hash)
and sends the browser to the provider; `GET /auth/callback` takes that row (once), trades
the code with the verifier (`identity.login`), checks the ID token's issuer, audience and
nonce, verifies it like any token the gateway accepts, and opens a session. Messages shown
on failure never include a token or code.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel
from sqlalchemy import delete

from lockgate.admin.auth import (
    SESSION_COOKIE,
    CallerDep,
    clear_session_cookies,
    close_session,
    open_session,
    set_session_cookies,
    verify_token,
)
from lockgate.admin.context import AdminContext, context
from lockgate.admin.roles import roles_for
from lockgate.admin.tables import admin_signins
from lockgate.config.admin import AdminSignIn
from lockgate.errors import LockgateError
from lockgate.identity.login import (
    AuthRequest,
    Client,
    Provider,
    authorization_url,
    code_from_callback,
    discover,
    exchange_code,
)
from lockgate.secrets.refs import resolve_secret

router = APIRouter()
CALLBACK = "/auth/callback"
# A sign-in not finished within this time must start again.
SIGNIN_TTL = timedelta(minutes=10)


class TokenSignIn(BaseModel):
    token: str


class Me(BaseModel):
    subject: str
    issuer: str
    groups: list[str]
    roles: list[str]


class AuthConfig(BaseModel):
    oidc: bool
    provider: str | None


def _sign_in(ctx: AdminContext) -> AdminSignIn | None:
    return ctx.manifest.admin.oidc if ctx.manifest.admin else None


def _issuer(ctx: AdminContext, sign_in: AdminSignIn) -> str:
    return sign_in.issuer or ctx.manifest.identity.oidc[0].issuer


def _client(ctx: AdminContext, sign_in: AdminSignIn) -> Client:
    secret = None
    if sign_in.client_secret is not None:
        secret = resolve_secret(sign_in.client_secret, ctx.manifest, ctx.secrets)
    return Client(sign_in.client_id, secret, tuple(sign_in.scopes))


def _safe_next(value: str | None) -> str:
    """Only a path on this console: never another site (an open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "/"  # browsers drop tabs and newlines: "/\t/evil.example" would become "//..."
    return value


def _page(status: int, title: str, message: str) -> HTMLResponse:
    from html import escape

    body = (
        f"<!doctype html><html lang=en><meta charset=utf-8><title>{escape(title)}</title>"
        f"<h1>{escape(title)}</h1><p>{escape(message)}</p>"
        '<p><a href="/auth/login">Sign in again</a> &middot; <a href="/">Console</a></p></html>'
    )
    return HTMLResponse(body, status_code=status)


@router.get("/api/auth/config", response_model=AuthConfig, tags=["auth"])
def auth_config(ctx: Annotated[AdminContext, Depends(context)]) -> AuthConfig:
    """How people sign in here (no authentication needed)."""
    sign_in = _sign_in(ctx)
    if sign_in is None:
        return AuthConfig(oidc=False, provider=None)
    return AuthConfig(oidc=True, provider=sign_in.display_name or _issuer(ctx, sign_in))


@router.get("/api/me", response_model=Me, tags=["auth"])
def me(caller: CallerDep) -> dict[str, Any]:
    """Who is signed in, with their groups and console roles."""
    return caller.me()


@router.post("/api/auth/token", response_model=Me, tags=["auth"])
async def token_sign_in(
    body: TokenSignIn, ctx: Annotated[AdminContext, Depends(context)]
) -> JSONResponse:
    """Open a browser session with a token (gateway or OIDC ID token): sets the cookies."""
    principal = await verify_token(ctx, body.token)
    sid, csrf, expires = await asyncio.to_thread(open_session, ctx, principal)
    me = {
        "subject": principal.subject,
        "issuer": principal.issuer,
        "groups": sorted(principal.groups),
        "roles": list(roles_for(ctx.manifest, principal.groups)),
    }
    response = JSONResponse(me)
    set_session_cookies(ctx, response, sid, csrf, expires)
    return response


@router.post("/api/auth/logout", status_code=204, tags=["auth"])
async def logout(
    request: Request, caller: CallerDep, ctx: Annotated[AdminContext, Depends(context)]
) -> Response:
    """End this browser session (a bearer token is not affected)."""
    sid = request.cookies.get(SESSION_COOKIE)
    if caller.via == "cookie" and sid:
        await asyncio.to_thread(close_session, ctx, sid)
    response = Response(status_code=204)
    clear_session_cookies(response)
    return response


# ---------------------------------------------------------------------- OIDC sign-in


async def _provider(ctx: AdminContext, sign_in: AdminSignIn) -> Provider:
    if ctx.oidc_provider is None:
        ctx.oidc_provider = await asyncio.to_thread(discover, _issuer(ctx, sign_in))
    return ctx.oidc_provider


def _store_signin(ctx: AdminContext, req: AuthRequest, next_path: str) -> None:
    now = datetime.now(UTC)
    with ctx.engine.begin() as conn:
        conn.execute(delete(admin_signins).where(admin_signins.c.created_at < now - SIGNIN_TTL))
        conn.execute(
            admin_signins.insert().values(
                state_hash=hashlib.sha256(req.state.encode()).hexdigest(),
                nonce=req.nonce,
                code_verifier=req.code_verifier,
                next=next_path,
                created_at=now,
            )
        )


def _take_signin(ctx: AdminContext, state: str) -> tuple[str, str, str] | None:
    """The sign-in started with `state` (nonce, verifier, next), removed so it runs once."""
    t = admin_signins.c
    key = hashlib.sha256(state.encode()).hexdigest()
    with ctx.engine.begin() as conn:
        row = conn.execute(admin_signins.select().where(t.state_hash == key)).first()
        if row is None:
            return None
        conn.execute(delete(admin_signins).where(t.state_hash == key))
    if row.created_at < datetime.now(UTC) - SIGNIN_TTL:
        return None
    return str(row.nonce), str(row.code_verifier), str(row.next)


@router.get("/auth/login", tags=["auth"], response_model=None)
async def login(
    ctx: Annotated[AdminContext, Depends(context)], next: str | None = None
) -> RedirectResponse | HTMLResponse:
    """Send the browser to the OIDC provider (authorization code + PKCE, state, nonce)."""
    sign_in = _sign_in(ctx)
    if sign_in is None:
        return _page(
            404,
            "No sign-in provider",
            "This gateway has no OIDC sign-in configured "
            "(admin.oidc); sign in with a token instead.",
        )
    try:
        provider = await _provider(ctx, sign_in)
        client = _client(ctx, sign_in)
    except LockgateError as exc:
        return _page(502, "Sign-in unavailable", exc.message)
    req = AuthRequest.new(ctx.base_url + CALLBACK)
    await asyncio.to_thread(_store_signin, ctx, req, _safe_next(next))
    return RedirectResponse(authorization_url(provider, client, req), status_code=302)


@router.get(CALLBACK, tags=["auth"], response_model=None)
async def callback(
    request: Request, ctx: Annotated[AdminContext, Depends(context)]
) -> RedirectResponse | HTMLResponse:
    """Finish an OIDC sign-in: check state, trade the code, verify the ID token, set cookies."""
    sign_in = _sign_in(ctx)
    if sign_in is None:
        raise HTTPException(404, detail="no OIDC sign-in is configured")
    state = request.query_params.get("state", "")
    started = await asyncio.to_thread(_take_signin, ctx, state) if state else None
    if started is None:
        return _page(400, "Sign-in failed", "This sign-in is unknown or too old; start again.")
    nonce, verifier, next_path = started
    req = AuthRequest(state, nonce, verifier, ctx.base_url + CALLBACK)
    try:
        code = code_from_callback(f"{request.url.path}?{request.url.query}", req)
        provider = await _provider(ctx, sign_in)
        client = _client(ctx, sign_in)
        tokens = await asyncio.to_thread(exchange_code, provider, client, code, req)
    except LockgateError as exc:
        return _page(400, "Sign-in failed", exc.message)
    try:
        principal = await verify_token(ctx, tokens.id_token)
    except HTTPException as exc:
        return _page(401, "Sign-in refused", str(exc.detail))
    sid, csrf, expires = await asyncio.to_thread(open_session, ctx, principal)
    response = RedirectResponse(next_path, status_code=303)
    set_session_cookies(ctx, response, sid, csrf, expires)
    return response
