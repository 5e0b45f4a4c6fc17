"""The admin app: FastAPI with the API routers, security headers and the console's files."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lockgate import __version__
from lockgate.admin import configview, events, reviews, sessions, signin
from lockgate.admin.context import AdminContext
from lockgate.admin.static import STATIC_DIR, static_router
from lockgate.admin.tables import ensure_tables

# The console loads only its own scripts and styles; nothing may frame it.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        # 'wasm-unsafe-eval': the SSH replay player (asciinema-player) runs its terminal
        # emulator as WebAssembly compiled from its own bundle; no eval() of scripts.
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; img-src 'self' data:; "
        "style-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


class SecurityHeaders:
    """Adds the security headers to every response (plain ASGI: streams pass untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _SECURITY_HEADERS.items():
                    if name == "Content-Security-Policy" and path == "/api/docs":
                        continue  # Swagger UI loads its scripts from a CDN
                    headers.setdefault(name, value)
                if path.startswith("/api/"):
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(ctx: AdminContext, static_dir: Path = STATIC_DIR) -> FastAPI:
    """The admin API (OpenAPI at /api/openapi.json) and console for one gateway."""
    ensure_tables(ctx.engine)
    app = FastAPI(
        title="Lockgate admin API",
        version=__version__,
        description="Reviews, sessions, audit and configuration of a Lockgate gateway. "
        "Authenticate with `Authorization: Bearer TOKEN` or a console session cookie "
        "(state-changing requests then need `X-CSRF-Token`).",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    app.state.ctx = ctx

    app.add_middleware(SecurityHeaders)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid')}" if where else "invalid request"
        return JSONResponse(
            {"detail": message, "errors": jsonable_encoder(exc.errors())}, status_code=422
        )

    for module in (signin, reviews, sessions, configview, events):
        app.include_router(module.router)
    app.include_router(static_router(static_dir))
    return app
