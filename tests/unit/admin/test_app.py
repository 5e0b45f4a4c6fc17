"""The admin app in-process (httpx over ASGI): static files, auth edges, OpenAPI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from lockgate.admin.app import create_app
from lockgate.admin.context import AdminContext
from lockgate.admin.sessions import _cursor, _parse_cursor


@pytest.fixture
def console(tmp_path: Path) -> Path:
    folder = tmp_path / "static"
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_text("<!doctype html><title>console</title>")
    (folder / "assets" / "app.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("outside")
    return folder


def _client(ctx: AdminContext, folder: Path) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(ctx, folder))
    return httpx.AsyncClient(transport=transport, base_url="https://testserver")


@pytest.fixture
async def client(ctx: AdminContext, console: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(ctx, console) as c:
        yield c


async def test_static_files_and_client_routes(client: httpx.AsyncClient) -> None:
    page = await client.get("/sessions/abc")
    assert page.status_code == 200 and "console" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert page.headers["x-frame-options"] == "DENY"
    js = await client.get("/assets/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "immutable" in js.headers["cache-control"]
    assert (await client.get("/assets/missing.js")).status_code == 404
    assert (await client.get("/")).text == page.text


async def test_no_escape_from_the_static_folder(client: httpx.AsyncClient) -> None:
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/assets/../../secret.txt"):
        got = await client.get(path)
        assert "outside" not in got.text, path


async def test_unknown_api_paths_are_json_404(client: httpx.AsyncClient) -> None:
    got = await client.get("/api/nothing-here")
    assert got.status_code == 404 and "detail" in got.json()
    assert got.headers["cache-control"] == "no-store"


async def test_without_a_build_a_page_says_so(ctx: AdminContext, tmp_path: Path) -> None:
    async with _client(ctx, tmp_path / "empty") as c:
        got = await c.get("/reviews")
    assert got.status_code == 200 and "not built" in got.text


async def test_auth_edges(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/me")).status_code == 401
    assert (await client.get("/api/me", headers={"Authorization": "Bearer "})).status_code == 401
    assert (await client.get("/api/auth/config")).json() == {"oidc": False, "provider": None}
    assert (await client.get("/auth/login", follow_redirects=False)).status_code == 404
    bad = await client.post("/api/auth/token", json={})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("token")


async def test_openapi_document(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/api/openapi.json")).json()
    assert doc["info"]["title"] == "Lockgate admin API"
    review = doc["components"]["schemas"]["Review"]["properties"]
    for name in ("id", "kind", "status", "requester", "can_decide", "waited_seconds"):
        assert name in review


def test_cursor_round_trip() -> None:
    from datetime import UTC, datetime

    at = datetime(2026, 11, 23, 12, 0, 1, 5, tzinfo=UTC)
    assert _parse_cursor(_cursor({"started_at": at, "id": "abc|def"})) == (at, "abc|def")
    from fastapi import HTTPException

    with pytest.raises(HTTPException):
        _parse_cursor("!!!")


@pytest.mark.parametrize(
    ("given", "safe"),
    [
        ("/sessions?live=true", "/sessions?live=true"),
        ("/sessions?q=select x", "/sessions?q=select x"),
        (None, "/"),
        ("", "/"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("/\t/evil.example", "/"),
        ("/\n/evil.example", "/"),
    ],
)
def test_sign_in_returns_only_to_this_console(given: str | None, safe: str) -> None:
    from lockgate.admin.signin import _safe_next

    assert _safe_next(given) == safe
